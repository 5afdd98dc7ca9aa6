"""The planner: a pure function from (desired, observed) to ordered actions, each with its reason.

It imports neither libvirt nor aiocoap and makes no call: everything it knows arrives in its arguments.
Every desired resource gets an action, no-ops included, so a plan explains why nothing changes as well as
what will. Problems (a name held by an unmanaged domain, two claims on one device, a missing base image)
make the whole plan unappliable: apply then changes nothing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from pathlib import PurePosixPath

from epfiot import steps as s
from epfiot.model import (
    Desired,
    HostUsbDevice,
    NetworkSpec,
    Observed,
    ObservedNetwork,
    ObservedThing,
    ObservedVm,
    Ownership,
    PowerState,
    ThingSpec,
    UsbSelector,
    VmSpec,
    is_epfiot_volume,
    libvirt_name,
    overlay_volume_name,
    seed_volume_name,
)

DEFAULT_SHUTDOWN_TIMEOUT = 60.0  # for a VM whose definition does not record its own


class Kind(StrEnum):
    NETWORK = "network"
    VM = "vm"
    THING = "thing"


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
    NETWORKS = 2
    VMS = 3
    REMOVE_NETWORKS = 4
    THINGS = 5  # last: a thing's server is its VM's address


@dataclass(frozen=True)
class Change:
    field: str
    before: object
    after: object
    how: str = ""  # "live", "restart required", "at next boot" ...


@dataclass(frozen=True)
class Action:
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
        return f"{self.kind}/{self.owner}/{self.name}"

    @property
    def changes_something(self) -> bool:
        return self.verb in (Verb.CREATE, Verb.UPDATE, Verb.DESTROY)


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    problems: tuple[str, ...] = ()

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
class _VmWork:
    """What planning a declared VM gathers before deciding between creating and updating it."""

    spec: VmSpec
    usb: tuple[tuple[HostUsbDevice, bool], ...]  # resolved devices, with their selectors' `required`
    missing_required: list[UsbSelector]
    notes: list[str]
    seed_digest: str
    pre: list[s.Step]  # volumes and reservations, before the definition
    common: dict[str, object]  # the Action fields every outcome shares


@dataclass(frozen=True)
class Options:
    force: bool = False  # power off at once instead of a graceful shutdown
    keep_disks: bool = False  # pruning a VM keeps its overlay and seed volumes
    prune: bool = True  # destroy managed resources of the given stacks that the manifests no longer declare


@dataclass(frozen=True)
class UsbResolution:
    """What the host's devices give each claim: a device, or None (not plugged in)."""

    assignments: dict[tuple[str, str, UsbSelector], HostUsbDevice | None] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def make_plan(
    desired: Desired,
    observed: Observed,
    options: Options = Options(),
    *,
    usb: UsbResolution | None = None,
    seed_digests: dict[str, str] | None = None,
) -> Plan:
    """Plan the changes that bring the scopes (owner, stack) of `desired` to `desired`.

    `usb` is the resolution of the VMs' device selectors against observed.usb (epfiot.usb does it);
    `seed_digests` maps VM libvirt names to the digest of their cloud-init seed (epfiot.cloudinit).
    """
    planner = _Planner(desired, observed, options, usb or UsbResolution(), seed_digests or {})
    return planner.run()


def plan_deletion(desired: Desired, observed: Observed, options: Options = Options()) -> Plan:
    """Destroy exactly the resources that `desired` declares (epfiot delete -f)."""
    planner = _Planner(Desired(stacks=desired.stacks), observed, options, UsbResolution(), {})
    declared_vms = {v.libvirt_name for v in desired.vms}
    declared_networks = {n.libvirt_name for n in desired.networks}
    declared_things = {t.name for t in desired.things}
    return planner.run_deletion(declared_vms, declared_networks, declared_things)


class _Planner:
    def __init__(
        self,
        desired: Desired,
        observed: Observed,
        options: Options,
        usb: UsbResolution,
        seed_digests: dict[str, str],
    ) -> None:
        self.desired = desired
        self.observed = observed
        self.options = options
        self.usb = usb
        self.seed_digests = seed_digests
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

    # --- entry points ------------------------------------------------------------------------------------

    def run(self) -> Plan:
        replaced_networks = self._plan_networks()
        pruned_vms = self._plan_vm_pruning() if self.options.prune else set()
        self.pruned = pruned_vms
        for spec in sorted(self.desired.vms, key=lambda v: v.libvirt_name):
            self._plan_vm(spec, replaced_networks)
        if self.options.prune:
            self._plan_network_pruning(pruned_vms)
        self._plan_things()
        if self.options.prune:
            self._plan_thing_pruning()
        return self._finish()

    def run_deletion(self, vms: set[str], networks: set[str], things: set[str]) -> Plan:
        for name in sorted(vms):
            vm = self.vms.get(name)
            if vm is not None and _describes(vm.libvirt_name, vm.ownership) and self._in_scope(vm.ownership):
                self._destroy_vm(vm, "declared in the manifests given to delete")
        for name in sorted(things):
            thing = self.things.get(name)
            if thing is not None and (thing.owner, thing.stack) in self.scopes:
                self._unregister_thing(thing, "declared in the manifests given to delete")
        self._plan_network_pruning(vms, only=networks)
        return self._finish()

    def _finish(self) -> Plan:
        order = {Kind.NETWORK: 0, Kind.VM: 1, Kind.THING: 2}
        actions = sorted(self.actions, key=lambda a: (a.phase, order[a.kind], a.owner, a.name))
        return Plan(tuple(actions), tuple(self.problems))

    def _in_scope(self, ownership: object) -> bool:
        owner = getattr(ownership, "owner", None)
        stack = getattr(ownership, "stack", None)
        return (owner, stack) in self.scopes

    def _add(self, **fields: object) -> None:
        self.actions.append(Action(**fields))  # type: ignore[arg-type]

    def _claimed_elsewhere(
        self, kind: str, name: str, ownership: Ownership | None, spec_stack: str, where: str
    ) -> bool:
        """A managed object of the same owner but another stack: the manifests cannot take it over."""
        if ownership is None:
            self.problems.append(
                f"{where}: {kind} {name!r} exists in libvirt but is not managed by epfiot; "
                "refusing to touch it (rename yours, or remove that one by hand)"
            )
            return True
        if not _describes(name, ownership):
            self.problems.append(
                f"{where}: {kind} {name!r} carries epfiot metadata that does not match its name (copied from "
                "another object?); refusing to touch it (remove it by hand)"
            )
            return True
        stack = getattr(ownership, "stack", "")
        if stack != spec_stack:
            self.problems.append(
                f"{where}: {kind} {name!r} belongs to stack {stack!r} of the same owner; "
                "remove it from that stack first"
            )
            return True
        return False

    # --- networks ----------------------------------------------------------------------------------------

    def _plan_networks(self) -> set[str]:
        """Plan desired networks; returns the libvirt names of networks that will be re-created."""
        replaced: set[str] = set()
        for spec in sorted(self.desired.networks, key=lambda n: n.libvirt_name):
            observed = self.networks.get(spec.libvirt_name)
            common = dict(kind=Kind.NETWORK, owner=spec.owner, stack=spec.stack, name=spec.name)
            if observed is None:
                self._add(
                    **common,
                    verb=Verb.CREATE,
                    reason="declared, does not exist",
                    phase=Phase.NETWORKS,
                    changes=_network_changes(spec, None),
                    steps=(s.DefineNetwork(spec),),
                )
                continue
            if self._claimed_elsewhere("network", spec.libvirt_name, observed.ownership, spec.stack, str(spec.source)):
                continue
            changes = _network_changes(spec, observed)
            if changes:
                replaced.add(spec.libvirt_name)
                self._add(
                    **common,
                    verb=Verb.UPDATE,
                    reason="network settings differ: re-created (running VMs on it reconnect at their next start)",
                    phase=Phase.NETWORKS,
                    changes=changes,
                    steps=(s.RemoveNetwork(spec.libvirt_name), s.DefineNetwork(spec)),
                )
            elif not observed.active:
                self._add(
                    **common,
                    verb=Verb.UPDATE,
                    reason="network is stopped",
                    phase=Phase.NETWORKS,
                    changes=(Change("active", False, True),),
                    steps=(s.StartNetwork(spec.libvirt_name),),
                )
            else:
                self._add(**common, verb=Verb.NOOP, reason="network is up to date", phase=Phase.NETWORKS)
        return replaced

    def _plan_network_pruning(self, pruned_vms: set[str], only: set[str] | None = None) -> None:
        desired = {n.libvirt_name for n in self.desired.networks}
        for net in sorted(self.observed.networks, key=lambda n: n.libvirt_name):
            if not _describes(net.libvirt_name, net.ownership) or not self._in_scope(net.ownership):
                continue
            if net.libvirt_name in desired or net.ownership is None:
                continue
            if only is not None and net.libvirt_name not in only:
                continue
            users = sorted(
                vm.libvirt_name
                for vm in self.observed.vms
                if vm.network == net.libvirt_name and vm.libvirt_name not in pruned_vms
            )
            users += sorted(v.libvirt_name for v in self.desired.vms if _vm_network(v) == net.libvirt_name)
            common = dict(
                kind=Kind.NETWORK, owner=net.ownership.owner, stack=net.ownership.stack, name=net.ownership.name
            )
            if users:
                self._add(
                    **common,
                    verb=Verb.WAIT,
                    reason=f"no longer declared, but still used by {', '.join(sorted(set(users)))}: not removed",
                    phase=Phase.REMOVE_NETWORKS,
                )
                continue
            self._add(
                **common,
                verb=Verb.DESTROY,
                reason="no longer declared" if only is None else "declared in the manifests given to delete",
                phase=Phase.REMOVE_NETWORKS,
                changes=(Change("network", net.cidr, None),),
                steps=(s.RemoveNetwork(net.libvirt_name),),
            )

    # --- VMs ---------------------------------------------------------------------------------------------

    def _reservation_holder(self, net: ObservedNetwork, spec: VmSpec) -> str | None:
        """Which other VM holds `spec.address` on `net` (one not pruned by this plan), or None.

        A reservation whose MAC belongs to no domain is stale (an apply killed between reserving and
        defining): it is taken over, so that the next apply converges."""
        for mac, ip in net.dhcp_hosts:
            if ip != spec.address or mac == spec.mac:
                continue
            for vm in self.observed.vms:
                if vm.mac == mac and vm.libvirt_name not in self.pruned and not self._releases(vm, net, ip):
                    return f"VM {vm.libvirt_name}"
        return None

    def _releases(self, vm: ObservedVm, net: ObservedNetwork, ip: str) -> bool:
        """Does this plan take `ip` on `net` from `vm`, a declared VM that no longer reserves it there?"""
        spec = self.desired_vms.get(vm.libvirt_name)
        return spec is not None and (_vm_network(spec), spec.address, spec.mac) != (net.libvirt_name, ip, vm.mac)

    def _reservations(self, vm: ObservedVm) -> list[tuple[str, str, str]]:
        """(network, mac, ip): the reservations of the VM's MAC on the network of its definition."""
        net = self.networks.get(vm.network) if vm.network else None
        if net is None or not vm.mac:
            return []
        return [(net.libvirt_name, mac, ip) for mac, ip in net.dhcp_hosts if mac == vm.mac]

    def _plan_vm_pruning(self) -> set[str]:
        desired = {v.libvirt_name for v in self.desired.vms}
        pruned: set[str] = set()
        for vm in sorted(self.observed.vms, key=lambda v: v.libvirt_name):
            if not _describes(vm.libvirt_name, vm.ownership) or not self._in_scope(vm.ownership):
                continue
            if vm.libvirt_name in desired:
                continue
            self._destroy_vm(vm, "no longer declared")
            pruned.add(vm.libvirt_name)
        return pruned

    def _destroy_vm(self, vm: ObservedVm, reason: str) -> None:
        assert vm.ownership is not None
        owner, name = vm.ownership.owner, vm.ownership.name
        steps: list[s.Step] = []
        if vm.active:
            if self.options.force:
                steps.append(s.DestroyVm(vm.libvirt_name))
            else:  # graceful, then forced; a paused guest is resumed first so that it can act on ACPI
                if vm.state is PowerState.PAUSED:
                    steps.append(s.ResumeVm(vm.libvirt_name))
                steps.append(s.ShutdownVm(vm.libvirt_name, timeout=self._shutdown_timeout(vm)))
        steps.append(s.UndefineVm(vm.libvirt_name))
        for network, mac, ip in self._reservations(vm):
            steps.append(s.RemoveDhcpHost(network, mac, ip))
        if not self.options.keep_disks:
            for volume in (overlay_volume_name(owner, name), seed_volume_name(owner, name)):
                if volume in self.volumes:
                    steps.append(s.DeleteVolume(volume))
        self._add(
            kind=Kind.VM,
            owner=owner,
            stack=vm.ownership.stack,
            name=name,
            verb=Verb.DESTROY,
            reason=reason,
            phase=Phase.DESTROY_VMS,
            changes=(Change("state", vm.state.value, None),),
            steps=tuple(steps),
        )

    def _shutdown_timeout(self, vm: ObservedVm) -> float:
        """A pruned VM's own timeout, recorded in its metadata when it was last applied."""
        for spec in self.desired.vms:
            if spec.libvirt_name == vm.libvirt_name:
                return spec.shutdown_timeout
        recorded = vm.ownership.shutdown_timeout if vm.ownership else None
        return recorded if recorded is not None else DEFAULT_SHUTDOWN_TIMEOUT

    def _resolved_usb(self, spec: VmSpec) -> tuple[tuple[tuple[HostUsbDevice, bool], ...], list[UsbSelector]]:
        present: list[tuple[HostUsbDevice, bool]] = []
        missing: list[UsbSelector] = []
        for selector in spec.devices:
            device = self.usb.assignments.get((spec.owner, spec.name, selector))
            if device is None:
                missing.append(selector)
            else:
                present.append((device, selector.required))
        present.sort(key=lambda pair: (pair[0].bus, pair[0].device, str(pair[0].id)))
        return tuple(present), missing

    def _plan_vm(self, spec: VmSpec, replaced_networks: set[str]) -> None:
        name = spec.libvirt_name
        observed = self.vms.get(name)
        if observed is not None and _plainly_unchanged(spec, observed):
            # The common case on a large host, answered without building the full comparison.
            self.actions.append(
                Action(Kind.VM, spec.owner, spec.stack, spec.name, Verb.NOOP, f"{spec.name} is {observed.state.value}", Phase.VMS)
            )
            return
        common = dict(kind=Kind.VM, owner=spec.owner, stack=spec.stack, name=spec.name, phase=Phase.VMS)
        if observed is not None and self._claimed_elsewhere("domain", name, observed.ownership, spec.stack, str(spec.source)):
            return
        usb, missing = self._resolved_usb(spec)
        missing_required = [sel for sel in missing if sel.required]
        notes = [f"USB {sel} is not plugged in" + ("" if sel.required else " (optional)") for sel in missing]
        seed_digest = self.seed_digests.get(name, "") if spec.credentials else ""
        if spec.image and is_epfiot_volume(spec.image):
            self.problems.append(
                f"{spec.source}: vm {spec.name}: image {spec.image!r} is a VM's disk or seed, not a base image"
            )
            return
        if spec.image and spec.image not in self.volumes and (observed is None or observed.disk_volume is None):
            pool = self.observed.image_pool
            images = sorted(v.name for v in self.observed.volumes if not is_epfiot_volume(v.name))
            if pool is None:
                self.problems.append(
                    f"{spec.source}: vm {spec.name}: image {spec.image!r}: the image pool does not exist yet "
                    "(epfiot apply creates it; then copy base images into its directory)"
                )
            else:
                listing = ", ".join(images) if images else "none"
                self.problems.append(
                    f"{spec.source}: vm {spec.name}: image {spec.image!r} not found in pool {pool!r} (images: {listing})"
                )
            return

        overlay = overlay_volume_name(spec.owner, spec.name)
        backing = self.backings.get(overlay) if spec.image else None
        if backing is not None and PurePosixPath(backing).name != spec.image:
            self.problems.append(
                f"{spec.source}: vm {spec.name}: disk {overlay} is backed by {PurePosixPath(backing).name}, "
                f"not by {spec.image}; a disk keeps the image it was made from (delete the VM to change it)"
            )
            return

        pre: list[s.Step] = []  # volumes and reservations, before the definition
        network = _vm_network(spec)
        for held_on, mac, ip in self._reservations(observed) if observed is not None else ():
            if (held_on, mac) != (network, spec.mac) or not spec.address:
                pre.append(s.RemoveDhcpHost(held_on, mac, ip))  # it leaves that network, or its fixed address
        if spec.address and network:
            net = self.networks.get(network)
            if net is not None and (holder := self._reservation_holder(net, spec)) is not None:
                self.problems.append(
                    f"{spec.source}: vm {spec.name}: address {spec.address} is reserved on network "
                    f"{spec.network} for {holder}; choose another address"
                )
                return
            reserved = net is not None and (spec.mac, spec.address) in net.dhcp_hosts
            if not reserved or network in replaced_networks:
                pre.append(s.SetDhcpHost(network, spec.mac, spec.address, spec.name))
        if spec.image and overlay not in self.volumes:
            pre.append(s.CreateOverlay(spec))

        work = _VmWork(spec, usb, missing_required, notes, seed_digest, pre, common)
        if observed is None:
            self._plan_vm_create(work)
        else:
            self._plan_vm_update(work, observed)

    def _plan_vm_create(self, work: _VmWork) -> None:
        spec, usb, missing_required, notes, seed_digest = work.spec, work.usb, work.missing_required, work.notes, work.seed_digest
        steps = list(work.pre)
        if spec.credentials:
            steps.append(s.WriteSeed(spec))
        steps.append(s.DefineVm(spec, usb, uuid=None, seed_digest=seed_digest))
        if missing_required and spec.state is not PowerState.SHUTOFF:
            notes.append(f"not started until its required devices are plugged in (state stays shutoff, wants {spec.state})")
        else:
            steps += _power_steps(spec, PowerState.SHUTOFF)
        steps += _address_wait(spec, steps)
        changes = [
            Change("state", None, spec.state.value),
            Change("vcpu", None, spec.vcpu),
            Change("memory_mib", None, spec.memory_mib),
        ]
        if spec.image:
            changes.append(Change("image", None, spec.image))
        if spec.network:
            changes.append(Change("network", None, spec.network))
        if spec.address:
            changes.append(Change("address", None, spec.address))
        if spec.credentials:
            changes.append(Change("credentials", None, f"seed {seed_digest}"))
        for device, _required in usb:
            changes.append(Change("usb", None, f"{device.id} at {device.bus}/{device.device}"))
        self._add(
            **work.common,
            verb=Verb.CREATE,
            reason="declared, does not exist",
            changes=tuple(changes),
            steps=tuple(steps),
            notes=tuple(notes),
        )

    def _plan_vm_update(self, work: _VmWork, vm: ObservedVm) -> None:
        spec, usb, missing_required, notes, seed_digest = work.spec, work.usb, work.missing_required, work.notes, work.seed_digest
        pre, common = work.pre, work.common
        name = spec.libvirt_name
        changes: list[Change] = []
        live: list[s.Step] = []
        redefine = False  # the definition must be re-rendered
        needs_restart = False  # only a restart makes the running VM match its definition
        running = vm.active

        def config(field_name: str, before: object, after: object, *, restart: bool) -> None:
            nonlocal redefine, needs_restart
            redefine = True
            if running and restart:
                needs_restart = True
                changes.append(Change(field_name, before, after, "restart required"))
            else:
                changes.append(Change(field_name, before, after, "definition"))  # no live step: the definition only

        # vCPUs: added live up to the running maximum; removing vCPUs needs the guest's cooperation, and a
        # new maximum needs a new QEMU process: both take a restart.
        running_max_vcpu = vm.live_max_vcpu or vm.max_vcpu
        if spec.max_vcpu != vm.max_vcpu:
            config("max_vcpu", vm.max_vcpu, spec.max_vcpu, restart=True)
        elif running and running_max_vcpu != spec.max_vcpu:
            needs_restart = True
            changes.append(Change("max_vcpu", running_max_vcpu, spec.max_vcpu, "restart required"))
        if running and vm.live_vcpu is not None and spec.vcpu != vm.live_vcpu:
            if vm.live_vcpu < spec.vcpu <= running_max_vcpu:
                live.append(s.SetVcpus(name, spec.vcpu, live=True))
                changes.append(Change("vcpu", vm.live_vcpu, spec.vcpu, "live"))
                redefine |= spec.vcpu != vm.vcpu  # the live step leaves the definition as it is
            elif spec.vcpu != vm.vcpu:
                config("vcpu", vm.live_vcpu, spec.vcpu, restart=True)
            else:  # the definition already has it: only a restart is missing
                needs_restart = True
                changes.append(Change("vcpu", vm.live_vcpu, spec.vcpu, "restart required"))
        elif spec.vcpu != vm.vcpu:
            config("vcpu", vm.vcpu, spec.vcpu, restart=False)

        # Memory: live through the balloon up to the running maximum; a new maximum takes a restart.
        running_max_memory = vm.live_max_memory_mib or vm.max_memory_mib
        if spec.max_memory_mib != vm.max_memory_mib:
            config("max_memory_mib", vm.max_memory_mib, spec.max_memory_mib, restart=True)
        elif running and running_max_memory != spec.max_memory_mib:
            needs_restart = True
            changes.append(Change("max_memory_mib", running_max_memory, spec.max_memory_mib, "restart required"))
        if spec.memory_mib != vm.memory_mib:
            if running and spec.memory_mib <= running_max_memory:
                live.append(s.SetMemory(name, spec.memory_mib, live=True))
                changes.append(Change("memory_mib", vm.memory_mib, spec.memory_mib, "live"))
                redefine = True  # the live step leaves the definition as it is
            else:
                config("memory_mib", vm.memory_mib, spec.memory_mib, restart=True)

        # Network, disk and seed live in the definition; a running VM sees them after a restart.
        network = _vm_network(spec)
        if network != vm.network or (network is not None and spec.mac != vm.mac):
            config("network", _short(vm.network), spec.network, restart=True)
        reserved = next((ip for _, _, ip in self._reservations(vm)), None)
        if reserved != spec.address:
            changes.append(Change("address", reserved, spec.address, "at next lease" if running else ""))
        want_disk = overlay_volume_name(spec.owner, spec.name) if spec.image else None
        if want_disk != vm.disk_volume:
            config("disk", vm.disk_volume, want_disk, restart=True)
        elif want_disk is not None and want_disk not in self.volumes:  # deleted by hand: CreateOverlay above
            changes.append(Change("disk", None, want_disk, "volume missing: made again from its image"))
        # Credentials reach the guest through the seed ISO, compared by digest: no secret is ever compared
        # or shown. New content takes effect at the next boot; adding or removing the CD-ROM takes a restart.
        want_seed = seed_volume_name(spec.owner, spec.name) if spec.credentials else None
        observed_digest = vm.ownership.seed_digest if vm.ownership else ""
        if want_seed != vm.seed_volume:
            if spec.credentials:
                pre.append(s.WriteSeed(spec))
            config("credentials", _seed_label(observed_digest), _seed_label(seed_digest), restart=True)
        elif spec.credentials and seed_digest != observed_digest:
            pre.append(s.WriteSeed(spec))
            redefine = True  # records the new digest
            changes.append(Change("credentials", _seed_label(observed_digest), _seed_label(seed_digest), "at next boot"))
        elif want_seed is not None and want_seed not in self.volumes:  # deleted by hand: the VM could not boot
            pre.append(s.WriteSeed(spec))
            changes.append(Change("credentials", None, _seed_label(seed_digest), "volume missing: written again"))

        if vm.devices or usb:
            redefine |= _usb_changes(name, vm, usb, changes, live)

        recorded_hash = vm.ownership.spec_hash if vm.ownership else ""
        if recorded_hash != spec.spec_hash():
            # Also settings without a visible effect (shutdown timeout, restart policy): the definition
            # records what was applied, so the next plan compares against it.
            redefine = True
            if not changes:
                changes.append(Change("settings", recorded_hash or None, spec.spec_hash(), "definition"))
        # Live steps change the running VM only; the definition is always re-rendered whole, after them.
        steps: list[s.Step] = [*pre, *live]
        if redefine:
            steps.append(s.DefineVm(spec, usb, uuid=vm.uuid, seed_digest=seed_digest))

        pending_restart = needs_restart
        restarting = False  # the restart steps bring the VM to its declared state as well
        if pending_restart and running and spec.state is not PowerState.SHUTOFF:
            if spec.allow_restart:
                steps += _restart_steps(spec, vm, force=self.options.force)
                restarting = True
                notes.append("restarts to apply changes that cannot be made live")
            else:
                notes.append("restart pending: set allow_restart: true, or restart the VM, to apply all changes")
        # Power state.
        blocked = bool(missing_required) and not vm.active and spec.state is not PowerState.SHUTOFF
        if blocked:
            notes.append(f"not started until its required devices are plugged in (wants {spec.state})")
        elif not restarting:
            power = _power_steps(spec, vm.state, force=self.options.force)
            if power:
                changes.append(Change("state", vm.state.value, spec.state.value))
                steps += power

        steps += _address_wait(spec, steps)
        if steps:
            verb, reason = Verb.UPDATE, _update_reason(changes, vm)
        elif blocked or (pending_restart and not spec.allow_restart):
            verb, reason = Verb.WAIT, "; ".join(notes)
        else:
            verb, reason = Verb.NOOP, f"{spec.name} is {vm.state.value}" + (f" ({'; '.join(notes)})" if notes else "")
        self._add(**common, verb=verb, reason=reason, changes=tuple(changes), steps=tuple(steps), notes=tuple(notes))

    # --- things ------------------------------------------------------------------------------------------

    def _server_uri(self, spec: ThingSpec) -> str | None:
        if spec.server:
            return spec.server
        if spec.vm is None:
            return None
        addresses = self.observed.vm_addresses.get(libvirt_name(spec.owner, spec.vm), ())
        if not addresses:
            return None
        host = addresses[0]
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
        return f"coap://{host}:{spec.port}"

    def _plan_things(self) -> None:
        for spec in sorted(self.desired.things, key=lambda t: t.name):
            common = dict(kind=Kind.THING, owner=spec.owner, stack=spec.stack, name=spec.name, phase=Phase.THINGS)
            uri = self._server_uri(spec)
            notes = () if uri else ("waiting for its server: VM " + str(spec.vm) + " has no address yet",)
            observed = self.things.get(spec.name)
            if observed is None:
                self._add(
                    **common,
                    verb=Verb.CREATE,
                    reason="declared, not registered",
                    changes=(Change("server_uri", None, uri),),
                    steps=(s.UpsertThing(spec, uri),),
                    notes=notes,
                )
                continue
            if observed.owner != spec.owner:
                self.problems.append(f"{spec.source}: thing {spec.name!r}: this endpoint name is registered by another owner")
                continue
            if observed.stack != spec.stack:
                self.problems.append(
                    f"{spec.source}: thing {spec.name!r} belongs to stack {observed.stack!r} of the same owner"
                )
                continue
            changes = _thing_changes(spec, observed, uri)
            if changes:
                self._add(
                    **common,
                    verb=Verb.UPDATE,
                    reason="registration differs",
                    changes=changes,
                    steps=(s.UpsertThing(spec, uri),),
                    notes=notes,
                )
            else:
                self._add(**common, verb=Verb.NOOP, reason=f"registered ({observed.status})", notes=notes)

    def _plan_thing_pruning(self) -> None:
        desired = {t.name for t in self.desired.things}
        for thing in sorted(self.observed.things, key=lambda t: t.name):
            if (thing.owner, thing.stack) in self.scopes and thing.name not in desired:
                self._unregister_thing(thing, "no longer declared")

    def _unregister_thing(self, thing: ObservedThing, reason: str) -> None:
        self._add(
            kind=Kind.THING,
            owner=thing.owner,
            stack=thing.stack,
            name=thing.name,
            verb=Verb.DESTROY,
            reason=reason,
            phase=Phase.UNREGISTER_THINGS,
            changes=(Change("server_uri", thing.server_uri, None),),
            steps=(s.DeleteThing(thing.name),),
        )


# --- helpers -----------------------------------------------------------------------------------------------


def _describes(libvirt_object: str, ownership: Ownership | None) -> bool:
    """Is this epfiot's metadata of this very object? A domain copied by hand (virt-clone) carries the
    metadata of its original: it is not managed, or pruning it would delete its original's disk."""
    return ownership is not None and libvirt_name(ownership.owner, ownership.name) == libvirt_object


def _vm_network(spec: VmSpec) -> str | None:
    return libvirt_name(spec.owner, spec.network) if spec.network else None


def _short(libvirt_network: str | None) -> str | None:
    return libvirt_network.split(".", 1)[1] if libvirt_network and "." in libvirt_network else libvirt_network


def _seed_label(digest: str) -> str | None:
    return f"seed {digest}" if digest else None


def _network_changes(spec: NetworkSpec, net: ObservedNetwork | None) -> tuple[Change, ...]:
    if net is None:
        return (
            Change("mode", None, spec.mode.value),
            Change("cidr", None, spec.cidr),
        )
    start, end = dhcp_range(spec)
    changes = []
    if net.mode != spec.mode:
        changes.append(Change("mode", net.mode.value if net.mode else None, spec.mode.value))
    if net.cidr != spec.cidr:
        changes.append(Change("cidr", net.cidr, spec.cidr))
    if (net.dhcp_start, net.dhcp_end) != (start, end):
        changes.append(Change("dhcp", f"{net.dhcp_start}-{net.dhcp_end}", f"{start}-{end}"))
    return tuple(changes)


def dhcp_range(spec: NetworkSpec) -> tuple[str, str]:
    """The dynamic range: as declared, else the upper half of the network (the lower half is for reservations)."""
    if spec.dhcp_start and spec.dhcp_end:
        return spec.dhcp_start, spec.dhcp_end
    net = ipaddress.IPv4Network(spec.cidr)
    hosts = net.num_addresses
    return str(net.network_address + hosts // 2), str(net.broadcast_address - 1)


def _thing_changes(spec: ThingSpec, observed: ObservedThing, uri: str | None) -> tuple[Change, ...]:
    pairs = [
        ("server_uri", observed.server_uri, uri),
        ("vm", observed.vm, spec.vm),
        ("lifetime", observed.lifetime, spec.lifetime),
        ("binding", observed.binding, spec.binding),
        ("deletes", list(observed.deletes), list(spec.deletes)),
        ("writes", [(w.path, w.value) for w in observed.writes], [(w.path, w.value) for w in spec.writes]),
    ]
    return tuple(Change(f, before, after) for f, before, after in pairs if before != after)


def _power_steps(spec: VmSpec, current: PowerState, *, force: bool = False) -> list[s.Step]:
    name, want = spec.libvirt_name, spec.state
    if current is want:
        return []
    if want is PowerState.RUNNING:
        return [s.ResumeVm(name)] if current is PowerState.PAUSED else [s.StartVm(name)]
    if want is PowerState.PAUSED:
        return [s.SuspendVm(name)] if current is PowerState.RUNNING else [s.StartVm(name, paused=True)]
    # want shutoff. A paused guest cannot react to ACPI: resume it first so that it can shut down cleanly.
    if force:
        return [s.DestroyVm(name)]
    resume: list[s.Step] = [s.ResumeVm(name)] if current is PowerState.PAUSED else []
    return [*resume, s.ShutdownVm(name, spec.shutdown_timeout)]


def _plainly_unchanged(spec: VmSpec, vm: ObservedVm) -> bool:
    """True for a VM without devices, network, disk or seed that matches its definition and runs as declared.

    Anything else goes through the full comparison; tests/test_plan.py checks that both agree."""
    own = vm.ownership
    if own is None or (own.owner, own.stack, own.name) != (spec.owner, spec.stack, spec.name):
        return False
    if vm.state is not spec.state:
        return False
    if spec.devices or vm.devices or spec.network or vm.network or spec.image or vm.disk_volume:
        return False
    if spec.credentials or vm.seed_volume:
        return False
    if (vm.vcpu, vm.max_vcpu, vm.memory_mib, vm.max_memory_mib) != (
        spec.vcpu,
        spec.max_vcpu,
        spec.memory_mib,
        spec.max_memory_mib,
    ):
        return False
    if vm.active and (
        vm.live_vcpu not in (None, spec.vcpu)
        or vm.live_max_vcpu not in (None, spec.max_vcpu)
        or vm.live_max_memory_mib not in (None, spec.max_memory_mib)
    ):
        return False
    return own.spec_hash == spec.spec_hash()


def _usb_changes(
    name: str,
    vm: ObservedVm,
    usb: tuple[tuple[HostUsbDevice, bool], ...],
    changes: list[Change],
    live: list[s.Step],
) -> bool:
    """USB devices: attached to (or detached from) the running VM live, and always written into the
    definition, which is re-rendered (the return value: whether it must be). A Coral that re-enumerated is a
    detach of its old identity and an attach of its new one."""
    from epfiot.usb import attached_matches, diff_attached  # imported only when a VM has devices

    running = vm.active
    diff = diff_attached(vm.devices, usb)
    how = "live" if running else "definition"
    for device, required in diff.attach:
        changes.append(Change("usb", None, f"{device.id} at {device.bus}/{device.device}", how))
        if running:
            live.append(s.AttachUsb(name, device, required, live=True))
    for stale in diff.detach:
        changes.append(Change("usb", str(stale.id), None, how))
        if running:
            live.append(s.DetachUsb(name, stale, live=True))
    for device, required in diff.required_changed:
        changes.append(Change("usb", f"{device.id} required={not required}", f"required={required}", "definition"))
    if running and vm.live_devices is not None:
        # Unplugged and plugged again: the definition has it, the running VM lost it.
        for device, required in diff.unchanged:
            if not any(attached_matches(a, device) for a in vm.live_devices):
                live.append(s.AttachUsb(name, device, required, live=True))
                changes.append(Change("usb", None, f"{device.id} at {device.bus}/{device.device}", "re-attach live"))
    return diff.changed


def _address_wait(spec: VmSpec, steps: list[s.Step]) -> list[s.Step]:
    """A VM that asks for it is waited for until it has an address, whenever this apply starts it."""
    started = any(isinstance(step, s.StartVm) and not step.paused for step in steps)
    if spec.wait_for_address and spec.state is PowerState.RUNNING and started:
        return [s.WaitForAddress(spec.libvirt_name, spec.wait_for_address)]
    return []


def _restart_steps(spec: VmSpec, vm: ObservedVm, *, force: bool) -> list[s.Step]:
    stop = _power_steps(replace(spec, state=PowerState.SHUTOFF), vm.state, force=force)
    return [*stop, *_power_steps(spec, PowerState.SHUTOFF)]


def _update_reason(changes: list[Change], vm: ObservedVm) -> str:
    fields = sorted({c.field for c in changes})
    if fields == ["state"]:
        return f"is {vm.state.value}"
    return "differs in " + ", ".join(fields) if fields else "definition out of date"
