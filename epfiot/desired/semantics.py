"""Schema-checked documents -> the frozen desired state (epfiot.model.Desired), after the rules of meaning.

Each entry the schema accepts becomes a spec (epfiot.desired.entries, with the rules of that entry alone);
then the rules across all documents and files: names defined twice (the message names both places), a stack
claimed by two owners, overlapping networks, VMs and things that refer to undeclared networks and VMs, and
fixed addresses: inside their network, not its network, broadcast or host address, outside its dynamic DHCP
range (epfiot.addressing), and each used once.

A schema error spoils what holds it: an entry (vms[1]), or a whole list (vms: given as a mapping), or the
document (no owner). Spoiled parts are not converted, so that one mistake is not reported again as its
consequences; but every entry whose name is valid still counts for duplicates and references, so that a
mistake in an entry neither hides nor fakes problems elsewhere.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from epfiot.addressing import dhcp_range
from epfiot.desired.entries import Entries, SecretAccess, reserved_addresses
from epfiot.desired.messages import CheckedDocument
from epfiot.desired.nodes import ExpansionBudget, PathKey, Where
from epfiot.errors import ManifestError, ManifestProblem
from epfiot.model import Desired, NetworkSpec, Source, StackSpec, ThingSpec, VmSpec

KINDS = ("networks", "vms", "things")
_SINGULAR = {"networks": "network", "vms": "VM", "things": "thing"}
_REFERENCE = {"vms": "network", "things": "vm"}


@dataclass(frozen=True)
class _Declared:
    """An entry with a valid name, and the name it refers to (network: of a VM, vm: of a thing) when valid."""

    owner: str
    name: str
    where: Where
    refers_to: str | None = None


def build_desired(
    documents: list[CheckedDocument], access: SecretAccess, budget: ExpansionBudget, problems: list[ManifestProblem]
) -> Desired:
    """The desired state of all `documents`, or ManifestError with every problem: those in `problems` already
    (reading, YAML, schema) and those found here. `budget`: the load's, for YAML in user_data."""
    entries = Entries(access, budget, problems)
    stacks: list[StackSpec] = []
    vms: list[tuple[VmSpec, Where]] = []
    networks: list[tuple[NetworkSpec, Where]] = []
    things: list[tuple[ThingSpec, Where]] = []
    declared: dict[str, list[_Declared]] = {kind: [] for kind in KINDS}
    for checked in documents:
        doc, errors = checked.doc, checked.errors
        spoiled = {_spoiled_part(path) for path in errors}
        if () in spoiled:
            continue
        owner, stack = doc.data["owner"], doc.data["stack"]
        stacks.append(StackSpec(owner, stack, Source(doc.file, doc.line(("stack",))), doc.line(("owner",))))
        for kind in KINDS:
            if (kind,) in spoiled:
                continue
            for index, item in enumerate(doc.data.get(kind) or ()):
                where = Where(doc, (kind, index))
                if isinstance(item, dict) and isinstance(item.get("name"), str) and (kind, index, "name") not in errors:
                    ref_key = _REFERENCE.get(kind)
                    ref = item.get(ref_key) if ref_key else None
                    valid_ref = isinstance(ref, str) and (kind, index, ref_key) not in errors
                    declared[kind].append(_Declared(owner, item["name"], where, ref if valid_ref else None))
                if (kind, index) in spoiled:
                    continue
                if kind == "networks" and (network := entries.network(item, owner, stack, where)) is not None:
                    networks.append((network, where))
                elif kind == "vms" and (vm := entries.vm(item, owner, stack, where)) is not None:
                    vms.append((vm, where))
                elif kind == "things" and (thing := entries.thing(item, owner, stack, where)) is not None:
                    things.append((thing, where))
    rules = _Rules(problems)
    unique_stacks = rules.stacks(stacks)
    rules.duplicates(declared)
    rules.networks(networks)
    rules.references(declared)
    rules.addresses(vms, networks)
    if problems:
        raise ManifestError(list(dict.fromkeys(problems)))
    return Desired(
        stacks=tuple(unique_stacks),
        vms=tuple(spec for spec, _ in vms),
        networks=tuple(spec for spec, _ in networks),
        things=tuple(spec for spec, _ in things),
    )


def _spoiled_part(path: PathKey) -> PathKey:
    """What a schema error at `path` spoils: an entry ("vms", 1), a whole list ("vms",), or the document ()."""
    return path[:2] if path and path[0] in KINDS else ()


@dataclass
class _Rules:
    """The rules across entries, documents and files."""

    problems: list[ManifestProblem]

    def fail(self, where: tuple[str, int, str], message: str) -> None:
        self.problems.append(ManifestProblem(*where, message))

    def stacks(self, stacks: list[StackSpec]) -> list[StackSpec]:
        first: dict[str, StackSpec] = {}
        unique: list[StackSpec] = []
        for spec in stacks:
            other = first.get(spec.name)
            if other is None:
                first[spec.name] = spec
                unique.append(spec)
            elif other.owner != spec.owner:
                self.problems.append(ManifestProblem(
                    spec.source.file, spec.source.line, "stack",
                    f"stack {spec.name!r} belongs to owner {other.owner!r} ({other.source}), not {spec.owner!r}: "
                    "a stack has one owner; give this one another name",
                ))  # fmt: skip
        return unique

    def duplicates(self, declared: dict[str, list[_Declared]]) -> None:
        for kind, entries in declared.items():
            first: dict[tuple[str, str], _Declared] = {}
            for entry in entries:
                # VM and network names are per owner; endpoint names are unique on the whole host.
                key = ("", entry.name) if kind == "things" else (entry.owner, entry.name)
                other = first.setdefault(key, entry)
                if other is entry:
                    continue
                if kind == "things":
                    message = (
                        f"endpoint name {entry.name!r} is already used by a thing of owner {other.owner!r} "
                        f"({other.where.source}): endpoint names are unique on the host"
                    )
                else:
                    message = (
                        f"{_SINGULAR[kind]} {entry.name!r} of owner {entry.owner!r} is defined twice: "
                        f"here and at {other.where.source}"
                    )
                self.fail(entry.where.at("name"), message)

    def networks(self, networks: list[tuple[NetworkSpec, Where]]) -> None:
        ordered = sorted(networks, key=lambda pair: ipaddress.IPv4Network(pair[0].cidr).network_address)
        widest: tuple[NetworkSpec, ipaddress.IPv4Network] | None = None
        for spec, where in ordered:
            net = ipaddress.IPv4Network(spec.cidr)
            if widest is not None and net.overlaps(widest[1]):
                other = widest[0]
                self.fail(
                    where.at("cidr"),
                    f"{spec.cidr} overlaps network {other.owner}/{other.name} ({other.cidr}, {other.source})",
                )
            if widest is None or net.broadcast_address > widest[1].broadcast_address:
                widest = (spec, net)

    def references(self, declared: dict[str, list[_Declared]]) -> None:
        """A VM's network and a thing's VM are declared by the same owner in the loaded manifests."""
        for kind, target_kind, field_name in (("vms", "networks", "network"), ("things", "vms", "vm")):
            known = {(d.owner, d.name) for d in declared[target_kind]}
            for entry in declared[kind]:
                if entry.refers_to is None or (entry.owner, entry.refers_to) in known:
                    continue
                names = sorted(n for o, n in known if o == entry.owner)
                what = _SINGULAR[target_kind]
                hint = f"{what}s of {entry.owner}: {', '.join(names)}" if names else f"{entry.owner} declares no {what}"
                self.fail(
                    entry.where.at(field_name),
                    f"no {what} {entry.refers_to!r} of owner {entry.owner!r} in these manifests ({hint})",
                )

    def addresses(self, vms: list[tuple[VmSpec, Where]], networks: list[tuple[NetworkSpec, Where]]) -> None:
        """Fixed addresses: inside their network, not one of its reserved addresses, outside its dynamic DHCP
        range, and each used once."""
        layouts = {(spec.owner, spec.name): _Layout.of(spec) for spec, _ in networks}
        taken: dict[str, VmSpec] = {}
        for spec, where in vms:
            if spec.address is None or spec.network is None:
                continue
            layout = layouts.get((spec.owner, spec.network))
            if layout is None:
                continue  # an unknown or invalid network: reported already
            problem = layout.problem(ipaddress.IPv4Address(spec.address), spec.network)
            if problem is None and spec.address in taken:
                other = taken[spec.address]
                problem = f"{spec.address} is already the address of VM {other.owner}/{other.name} ({other.source})"
            if problem:
                self.fail(where.at("address"), problem)
            else:
                taken[spec.address] = spec


@dataclass(frozen=True)
class _Layout:
    """A network's addresses: the reserved ones, and the dynamic range [start, end] that DHCP hands out."""

    net: ipaddress.IPv4Network
    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address

    @classmethod
    def of(cls, spec: NetworkSpec) -> _Layout:
        start, end = dhcp_range(spec)
        return cls(ipaddress.IPv4Network(spec.cidr), ipaddress.IPv4Address(start), ipaddress.IPv4Address(end))

    def problem(self, address: ipaddress.IPv4Address, name: str) -> str | None:
        net = self.net
        if address not in net:
            return f"{address} is outside network {name} ({net})"
        if address == net.network_address + 1:
            return f"{address} is the host's own address on {name}"
        reserved = reserved_addresses(net).get(address)
        if reserved:
            return f"{address} is {reserved} of {net}"
        if self.start <= address <= self.end:
            return (
                f"{address} is inside the dynamic DHCP range {self.start} - {self.end} of {name}: pick a fixed "
                "address outside it (DHCP could already have leased it to another VM)"
            )
        return None
