"""What a plan is made of: actions (one per resource, no-ops included), their changes and phases, and the
options and USB resolution a plan is made with."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import NamedTuple

from epfiot.model import HostUsbDevice, UsbSelector
from epfiot.plan import steps as s


class Kind(StrEnum):
    """The resources epfiot manages, in the order a plan lists the actions of one phase."""

    NETWORK = "network"
    VM = "vm"
    THING = "thing"
    FIREWALL = "firewall"  # the host's table that keeps tenants' networks apart (epfiot.firewall)


KIND_ORDER = {kind: index for index, kind in enumerate(Kind)}


class Verb(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DESTROY = "destroy"
    WAIT = "wait"  # cannot converge yet (a device unplugged, a network still in use): nothing is done
    NOOP = "noop"


class Phase(IntEnum):
    """Execution order. Actions of one phase are independent and may run concurrently."""

    UNREGISTER_THINGS = 0
    DESTROY_VMS = 1  # first: frees devices, addresses and networks for what follows
    FIREWALL = 2  # before the networks it names exist: no bridge of a tenant is ever open to another
    NETWORKS = 3
    VMS = 4
    REMOVE_NETWORKS = 5
    TIDY_FIREWALL = 6  # a table that only drops removed networks' bridges: rewritten once they are gone
    THINGS = 7  # last: a thing's server is its VM's address


@dataclass(frozen=True)
class Change:
    field: str
    before: object
    after: object
    how: str = ""  # "live", "restart required", "at next boot" ...


class Action(NamedTuple):
    """What the plan does with one resource, and why. A named tuple rather than a frozen dataclass: a plan
    over a large host makes one per resource, and a tuple is made several times faster."""

    kind: Kind
    owner: str
    stack: str
    name: str
    verb: Verb
    reason: str
    phase: Phase
    changes: tuple[Change, ...] = ()
    steps: tuple[s.Step, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.kind}/{self.owner}/{self.name}"  # the firewall, the host's own, has no owner

    @property
    def changes_something(self) -> bool:
        return self.verb in (Verb.CREATE, Verb.UPDATE, Verb.DESTROY)

    @property
    def deleted_volumes(self) -> tuple[str, ...]:
        """The volumes (disks, seeds) this action deletes: what a destroy loses for good."""
        return tuple(step.volume for step in self.steps if isinstance(step, s.DeleteVolume))


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    problems: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()  # a targeted plan (--target): only these resources and what they need

    @classmethod
    def ordered(cls, actions: list[Action], problems: list[str]) -> Plan:
        """The actions by phase, then kind, owner and name: a stable order to print and to execute."""
        actions = sorted(actions, key=lambda a: (a.phase, KIND_ORDER[a.kind], a.owner, a.name))
        return cls(tuple(actions), tuple(problems))

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.changes_something)

    @property
    def has_changes(self) -> bool:
        """True when the host differs from the manifests (pending waits count: they are drift too)."""
        return any(a.verb is not Verb.NOOP for a in self.actions)

    def count(self, verb: Verb) -> int:
        return sum(1 for a in self.actions if a.verb is verb)

    def phases(self) -> list[list[Action]]:
        by_phase: dict[Phase, list[Action]] = {}
        for action in self.changes:
            by_phase.setdefault(action.phase, []).append(action)
        return [by_phase[p] for p in sorted(by_phase)]


@dataclass(frozen=True)
class Options:
    force: bool = False  # power off at once instead of a graceful shutdown
    keep_disks: bool = False  # pruning a VM keeps its overlay and seed volumes
    prune: bool = True  # destroy managed resources of the given stacks that the manifests no longer declare
    targets: frozenset[str] = frozenset()  # "vm/alice/example1" ...: plan only these (epfiot.plan.targets)


@dataclass(frozen=True)
class UsbResolution:
    """What the host's devices give each claim: a device, or None (not plugged in)."""

    assignments: dict[tuple[str, str, UsbSelector], HostUsbDevice | None] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
