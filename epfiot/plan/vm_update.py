"""What comparing a declared VM with its domain gathers, concern by concern (sizing, network, storage, USB,
power): the changes, the steps before and on the running VM, and what the definition and the VM need."""

from __future__ import annotations

from epfiot.model import ObservedVm, VmSpec
from epfiot.plan import steps as s
from epfiot.plan.actions import Change


class VmUpdate:
    """One declared VM (`spec`) against its domain (`vm`)."""

    __slots__ = ("changes", "live", "needs_restart", "notes", "pre", "redefine", "running", "spec", "vm")

    def __init__(self, spec: VmSpec, vm: ObservedVm, pre: list[s.Step], notes: list[str]) -> None:
        self.spec = spec
        self.vm = vm
        self.running = vm.active
        self.changes: list[Change] = []
        self.pre = pre  # volumes and reservations, before the definition
        self.live: list[s.Step] = []  # on the running VM only: the definition is re-rendered whole, after them
        self.notes = notes
        self.redefine = False  # the definition must be re-rendered
        self.needs_restart = False  # only a restart makes the running VM match its definition

    def config(self, field: str, before: object, after: object, *, restart: bool) -> None:
        """A setting changed in the definition only (no live step); a running VM sees it after a restart
        when `restart`."""
        self.redefine = True
        if self.running and restart:
            self.restart_pending(field, before, after)
        else:
            self.changes.append(Change(field, before, after, "definition"))

    def restart_pending(self, field: str, before: object, after: object) -> None:
        """The definition has it (or will): only a restart of the running VM is missing."""
        self.needs_restart = True
        self.changes.append(Change(field, before, after, "restart required"))
