"""The (owner, stack) scopes watch keeps planning after their stack's file is gone, so that they get pruned."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from epfiot.model import Desired, Observed, StackSpec

SCOPES_FILE = "watch-scopes.json"


def is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class ScopeMemory:
    """The (owner, stack) scopes seen in the manifests under the watched paths, kept in the state directory.

    A stack whose file is gone is still planned, as an empty stack, so that its resources get pruned; a
    scope is forgotten once nothing managed is left in it. Only scopes declared in files under the current
    watched paths are retained: the entries of other watch processes (or of other directories watched
    earlier) are kept in the file untouched and never pruned by this one.
    """

    def __init__(self, path: Path, roots: Iterable[Path]) -> None:
        self.path = path
        self.roots = tuple(roots)
        self.mine: dict[tuple[str, str], str] = {}
        self.others: list[dict[str, str]] = []
        self.dirty = False

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            entries = data.get("scopes", []) if isinstance(data, dict) else []
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            entries = []  # unreadable: start afresh (it is rewritten at the next change)
        for entry in entries:
            if not (isinstance(entry, dict) and {"owner", "stack", "file"} <= entry.keys()):
                continue
            if any(is_under(Path(entry["file"]), root) for root in self.roots):
                self.mine[(entry["owner"], entry["stack"])] = entry["file"]
            else:
                self.others.append({k: str(entry[k]) for k in ("owner", "stack", "file")})

    def remember(self, desired: Desired) -> None:
        for stack in desired.stacks:
            file = stack.source.file
            if not os.path.isabs(file):
                file = str(Path(file).resolve())
            if self.mine.get((stack.owner, stack.name)) != file:
                self.mine[(stack.owner, stack.name)] = file
                self.dirty = True

    def retained(self, desired: Desired) -> tuple[StackSpec, ...]:
        """Scopes remembered but no longer declared: planned as empty stacks (their content is pruned)."""
        declared = desired.scopes()
        return tuple(StackSpec(owner=o, name=s) for (o, s) in sorted(self.mine) if (o, s) not in declared)

    def forget(self, scopes: Iterable[tuple[str, str]]) -> None:
        for scope in scopes:
            if self.mine.pop(scope, None) is not None:
                self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        entries = [*self.others, *({"owner": o, "stack": s, "file": f} for (o, s), f in sorted(self.mine.items()))]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "scopes": entries}, indent=1) + "\n")
        os.replace(tmp, self.path)
        self.dirty = False


def scope_is_empty(observed: Observed, owner: str, stack: str) -> bool:
    """Nothing managed by epfiot is left in (owner, stack)."""
    ownerships = [v.ownership for v in observed.vms] + [n.ownership for n in observed.networks]
    if any(o is not None and o.owner == owner and o.stack == stack for o in ownerships):
        return False
    return not any(t.owner == owner and t.stack == stack for t in observed.things)


def with_scopes(desired: Desired, extra: tuple[StackSpec, ...]) -> Desired:
    return replace(desired, stacks=desired.stacks + extra) if extra else desired
