"""What one planning run knows and has found so far: desired and observed state indexed by name, the actions
planned, the problems met. The planning modules (networks, vms, things) read and add to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from epfiot.model import Desired, Observed, Ownership, UsbSelector, VmSpec, libvirt_name
from epfiot.plan.actions import Action, Kind, Options, Phase, UsbResolution, Verb

if TYPE_CHECKING:
    from epfiot.plan.host_rules import HostRules


class Context:
    def __init__(
        self,
        desired: Desired,
        observed: Observed,
        options: Options,
        usb: UsbResolution,
        seed_digests: dict[str, str],
        unread_manifests: frozenset[str] = frozenset(),
        rules: HostRules | None = None,
    ) -> None:
        self.desired = desired
        self.observed = observed
        self.options = options
        self.usb = usb
        self.seed_digests = seed_digests
        self.unread_manifests = unread_manifests  # recorded declaring files that exist but were not given
        self.rules = rules  # the host's rules (None: checks stay within this apply)
        self.scopes = desired.scopes()
        self.vms = {v.libvirt_name: v for v in observed.vms}
        self.desired_vms = {v.libvirt_name: v for v in desired.vms}
        self.networks = {n.libvirt_name: n for n in observed.networks}
        self.volumes = {v.name for v in observed.volumes}
        self.backings = {v.name: v.backing for v in observed.volumes if v.backing}
        self.things = {t.name: t for t in observed.things}
        self.problems: list[str] = list(usb.problems)
        self.pruned: set[str] = set()  # VMs this plan destroys: their reservations are released
        self.actions: list[Action] = []
        # why a claim whose device is plugged in got none (epfiot.plan.host_usb): shown instead of "not plugged in"
        self.usb_notes: dict[tuple[str, str, UsbSelector], str] = {}

    def in_scope(self, ownership: Ownership | None) -> bool:
        return ownership is not None and (ownership.owner, ownership.stack) in self.scopes

    def kept_unread(self, kind: Kind, owner: str, stack: str, name: str, manifest: str, phase: Phase) -> bool:
        """Keeps (True) a resource no longer declared whose declaring file still exists but was not given to
        this apply: `-f dir/a.yaml` does not remove what dir/sub/b.yaml declares."""
        if manifest not in self.unread_manifests:
            return False
        reason = f"declared in {manifest}, which this apply was not given: kept"
        self.actions.append(Action(kind, owner, stack, name, Verb.NOOP, reason, phase))
        return True

    def claimed_elsewhere(self, kind: str, name: str, ownership: Ownership | None, spec_stack: str, where: object) -> bool:
        """Records why a declared object cannot take over the libvirt object of its name, if it cannot (True):
        one not managed, managed as another object, or of another stack. `where` is the declaration's source."""
        if ownership is None:
            self.problems.append(
                f"{where}: {kind} {name!r} exists in libvirt but is not managed by epfiot; "
                "refusing to touch it (rename yours, or remove that one by hand)"
            )
            return True
        if not describes(name, ownership):
            self.problems.append(
                f"{where}: {kind} {name!r} carries epfiot metadata that does not match its name (copied from "
                "another object?); refusing to touch it (remove it by hand)"
            )
            return True
        if ownership.stack != spec_stack:
            self.problems.append(
                f"{where}: {kind} {name!r} belongs to stack {ownership.stack!r} of the same owner; "
                "remove it from that stack first"
            )
            return True
        return False


def describes(libvirt_object: str, ownership: Ownership | None) -> bool:
    """Is this epfiot's metadata of this very object? A domain copied by hand (virt-clone) carries the
    metadata of its original: it is not managed, or pruning it would delete its original's disk."""
    return ownership is not None and libvirt_name(ownership.owner, ownership.name) == libvirt_object


def network_of(spec: VmSpec) -> str | None:
    """The libvirt name of the network a VM is declared on."""
    return libvirt_name(spec.owner, spec.network) if spec.network else None
