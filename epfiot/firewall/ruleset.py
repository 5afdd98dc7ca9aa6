"""The table `inet epfiot` as a pure function of which bridge belongs to which tenant, and its reading back.

The table holds a set of every managed bridge (`managed`), one set per tenant (`tenant_0`, `tenant_1` ...,
in the order of the owners' names, each set's comment its owner), and one base chain `forward` on the
forward hook, at priority filter - 10 (before libvirt's own filter rules), policy accept, with one rule per
tenant: a packet from one of its bridges to a managed bridge that is not its own is counted and dropped.
A drop in any table is final, so libvirt's rules cannot let it through, while what this table accepts is
still subject to libvirt's rules: between one tenant's own networks, and between any VM and the host or
the outside, nothing changes.

Interfaces are matched by name (`iifname`/`oifname`), so a rule may name a bridge that does not exist yet:
the table can be written before a network starts. A stale entry (a network removed behind epfiot's back) is
harmless: a bridge's name is a digest of its network's libvirt name, which holds the owner.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from epfiot.model import ObservedNetwork

FAMILY = "inet"
TABLE = "epfiot"
CHAIN = "forward"
PRIORITY = -10  # "filter - 10": before libvirt's filter rules (priority 0)
MANAGED_SET = "managed"

_BRIDGE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # what Linux and an nft string allow without escaping
_OWNER = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Isolation:
    """Which bridges belong to which tenant: (owner, its bridges), both sorted."""

    tenants: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def of(cls, bridges: Mapping[str, str]) -> Isolation:
        """From bridge -> owner. ValueError for a name that cannot go into the table as it is."""
        by_owner: dict[str, list[str]] = {}
        for bridge, owner in bridges.items():
            if not _BRIDGE.fullmatch(bridge):
                raise ValueError(f"bridge name {bridge!r} cannot be named in an nftables rule")
            if not _OWNER.fullmatch(owner):
                raise ValueError(f"owner {owner!r} cannot be named in an nftables comment")
            by_owner.setdefault(owner, []).append(bridge)
        return cls(tuple((owner, tuple(sorted(b))) for owner, b in sorted(by_owner.items())))

    @property
    def bridges(self) -> dict[str, str]:
        """bridge -> owner."""
        return {bridge: owner for owner, bridges in self.tenants for bridge in bridges}

    @property
    def owners(self) -> tuple[str, ...]:
        return tuple(owner for owner, _ in self.tenants)

    def covers(self, other: Isolation) -> bool:
        """True when every bridge of `other` is here, with the same owner."""
        return other.bridges.items() <= self.bridges.items()

    def describe(self) -> str:
        """"2 tenants, 3 bridges": counts only, no names."""
        tenants, bridges = len(self.tenants), len(self.bridges)
        return f"{tenants} tenant{'s' if tenants != 1 else ''}, {bridges} bridge{'s' if bridges != 1 else ''}"


def managed_bridges(networks: Iterable[ObservedNetwork], *, leaving: Iterable[str] = ()) -> dict[str, str]:
    """bridge -> owner of the managed networks that have a bridge, but those named in `leaving`."""
    left = set(leaving)
    return {
        n.bridge: n.ownership.owner
        for n in networks
        if n.ownership is not None and n.bridge and n.libvirt_name not in left
    }


def render(isolation: Isolation) -> str:
    """The `nft -f` script that replaces the table by the one for `isolation`, in one transaction: the
    first line creates the table if it is missing, so that deleting it cannot fail."""
    lines = [
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        '\tcomment "tenants\' networks kept apart; written whole by epfiot, do not edit"',
        *_set(MANAGED_SET, "every managed network's bridge", sorted(isolation.bridges)),
    ]
    for index, (owner, bridges) in enumerate(isolation.tenants):
        lines += _set(f"tenant_{index}", owner, bridges)
    lines += [
        f"\tchain {CHAIN} {{",
        f"\t\ttype filter hook forward priority filter - {-PRIORITY}; policy accept;",
    ]
    for index, (owner, _) in enumerate(isolation.tenants):
        own = f"@tenant_{index}"
        lines.append(f'\t\tiifname {own} oifname @{MANAGED_SET} oifname != {own} counter drop comment "{owner}"')
    lines += ["\t}", "}", ""]
    return "\n".join(lines)


def _set(name: str, comment: str, elements: Iterable[str]) -> list[str]:
    quoted = ", ".join(f'"{e}"' for e in elements)
    body = [f"\t\telements = {{ {quoted} }}"] if quoted else []
    return [f"\tset {name} {{", "\t\ttype ifname", f'\t\tcomment "{comment}"', *body, "\t}"]


def removal() -> str:
    """The `nft -f` script that removes the table (whether or not it exists)."""
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"


# --- reading back ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    """The table as found: absent, present as epfiot writes it (`isolation`), or present but not so."""

    present: bool
    isolation: Isolation | None = None

    @property
    def intact(self) -> bool:
        return self.isolation is not None


ABSENT = Installed(False)


def parse_listing(text: str) -> Installed:
    """What `nft -j list table inet epfiot` says. The table counts as epfiot's only when it holds exactly
    what `render` writes for the tenants its sets name (counters aside); anything else is to be rewritten."""
    try:
        objects = [o for o in json.loads(text).get("nftables", []) if isinstance(o, dict)]
    except (ValueError, AttributeError):
        return Installed(True)
    sets: dict[str, tuple[str, tuple[str, ...]]] = {}
    for obj in objects:
        found = obj.get("set")
        if isinstance(found, dict):
            elements = found.get("elem", [])
            elements = [elements] if isinstance(elements, str) else elements
            if not all(isinstance(e, str) for e in elements):
                return Installed(True)
            sets[str(found.get("name"))] = (str(found.get("comment", "")), tuple(elements))
    try:
        isolation = Isolation.of(
            {b: comment for name, (comment, bridges) in sets.items() if name.startswith("tenant_") for b in bridges}
        )
    except ValueError:
        return Installed(True)
    if _sorted(_shape(objects)) != _sorted(_expected_shape(isolation)):
        return Installed(True)
    return Installed(True, isolation)


def _sorted(shape: list[tuple[str, Any]]) -> list[str]:
    return sorted(json.dumps(item, sort_keys=True) for item in shape)


def _shape(objects: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The listing without what the kernel adds (handles, counters' values, metainfo)."""
    shape = []
    for obj in objects:
        for kind, body in obj.items():
            if kind == "metainfo" or not isinstance(body, dict):
                continue
            body = {k: v for k, v in body.items() if k != "handle"}
            if kind == "table":  # newer nft lists the table's comment too
                body = {k: v for k, v in body.items() if k in ("family", "name")}
            if kind == "set" and isinstance(body.get("elem"), list):
                body["elem"] = sorted(map(str, body["elem"]))
            elif kind == "set" and isinstance(body.get("elem"), str):
                body["elem"] = [body["elem"]]
            if kind == "rule":
                body["expr"] = [{"counter": None} if "counter" in e else e for e in body.get("expr", [])]
            shape.append((kind, body))
    return shape


def _expected_shape(isolation: Isolation) -> list[tuple[str, Any]]:
    where = {"family": FAMILY, "table": TABLE}

    def a_set(name: str, comment: str, elements: Iterable[str]) -> tuple[str, Any]:
        body: dict[str, Any] = {"family": FAMILY, "name": name, "table": TABLE, "type": "ifname", "comment": comment}
        if elements := sorted(elements):
            body["elem"] = elements
        return ("set", body)

    def meta(key: str, op: str, right: str) -> dict[str, Any]:
        return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}}

    shape: list[tuple[str, Any]] = [("table", {"family": FAMILY, "name": TABLE})]
    shape.append(a_set(MANAGED_SET, "every managed network's bridge", isolation.bridges))
    shape += [a_set(f"tenant_{i}", owner, bridges) for i, (owner, bridges) in enumerate(isolation.tenants)]
    chain = {"name": CHAIN, "type": "filter", "hook": "forward", "prio": PRIORITY, "policy": "accept"}
    shape.append(("chain", {**where, **chain}))
    for index, (owner, _) in enumerate(isolation.tenants):
        own = f"@tenant_{index}"
        expr = [
            meta("iifname", "==", own),
            meta("oifname", "==", f"@{MANAGED_SET}"),
            meta("oifname", "!=", own),
            {"counter": None},
            {"drop": None},
        ]
        shape.append(("rule", {**where, "chain": CHAIN, "comment": owner, "expr": expr}))
    return shape
