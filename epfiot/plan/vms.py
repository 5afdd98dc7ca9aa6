"""VMs: each declared VM is created, or compared with its domain concern by concern (vm_sizing, vm_network,
vm_storage, vm_usb, vm_power); managed VMs no longer declared are removed with their reservations and volumes.

One comparison serves every VM: a VM that matches goes through the same checks as one that differs, each of
them a few attribute comparisons, so a no-op plan over a large host costs about as much as reading it.
"""

from __future__ import annotations

from epfiot.model import ObservedVm, PowerState, VmSpec, overlay_volume_name, seed_volume_name
from epfiot.plan import steps as s
from epfiot.plan import vm_network, vm_power, vm_sizing, vm_storage, vm_usb
from epfiot.plan.actions import Action, Change, Kind, Phase, Verb
from epfiot.plan.context import Context, describes, network_of
from epfiot.plan.vm_update import VmUpdate


def plan_vm(ctx: Context, name: str, spec: VmSpec, replaced_networks: set[str]) -> None:
    """Plan the declared VM `spec`, of libvirt name `name`."""
    observed = ctx.vms.get(name)
    if observed is not None and ctx.claimed_elsewhere("domain", name, observed.ownership, spec.stack, spec.source):
        return
    usb, notes, devices_missing = vm_usb.resolve(ctx, spec)
    seed_digest = ctx.seed_digests.get(name, "") if spec.credentials else ""
    disk = vm_storage.disk_steps(ctx, spec, observed) if spec.image else ()
    if disk is None:
        return
    network = network_of(spec)
    held = vm_network.reservations(ctx, observed) if observed is not None else ()
    pre = vm_network.reservation_steps(ctx, spec, network, held, replaced_networks)
    if pre is None:
        return
    pre += disk
    if observed is None:
        _plan_create(ctx, spec, usb, devices_missing, notes, seed_digest, pre)
        return

    u = VmUpdate(spec, observed, pre, notes)
    vm_sizing.compare(u)
    vm_network.compare(u, network, held)
    vm_storage.compare(u, ctx, seed_digest)
    if observed.devices or usb:
        vm_usb.compare(u, usb)
    recorded_hash = observed.ownership.spec_hash if observed.ownership else ""
    if recorded_hash != spec.spec_hash():
        # Also settings without a visible effect (shutdown timeout, restart policy): the definition
        # records what was applied, so the next plan compares against it.
        u.redefine = True
        if not u.changes:
            u.changes.append(Change("settings", recorded_hash or None, spec.spec_hash(), "definition"))
    steps: list[s.Step] = [*u.pre, *u.live]
    if u.redefine:
        steps.append(s.DefineVm(spec, usb, uuid=observed.uuid, seed_digest=seed_digest))
    waits = vm_power.compare(u, steps, devices_missing=devices_missing, force=ctx.options.force)
    if steps:
        verb, reason = Verb.UPDATE, _update_reason(u.changes, observed)
    elif waits:
        verb, reason = Verb.WAIT, "; ".join(notes)
    else:
        verb, reason = Verb.NOOP, f"{spec.name} is {observed.condition}" + (f" ({'; '.join(notes)})" if notes else "")
    changes = tuple(u.changes)
    ctx.actions.append(Action(Kind.VM, spec.owner, spec.stack, spec.name, verb, reason, Phase.VMS, changes, tuple(steps), tuple(notes)))


def _plan_create(
    ctx: Context,
    spec: VmSpec,
    usb: vm_usb.Devices,
    devices_missing: bool,
    notes: list[str],
    seed_digest: str,
    steps: list[s.Step],
) -> None:
    # The definition first, then what it names (reservation, overlay, seed): an apply killed at any point
    # leaves a domain that names them, so the next plan finds and finishes it (a missing volume is made
    # again, a missing reservation set), or destroys all of it when the VM is no longer declared. Made the
    # other way round, a kill before the definition left volumes and a reservation that no domain names,
    # which no later plan could tell from a disk kept with --keep-disks.
    steps[:0] = [s.DefineVm(spec, usb, uuid=None, seed_digest=seed_digest)]
    if spec.credentials:
        steps.append(s.WriteSeed(spec))
    if devices_missing and spec.state is not PowerState.SHUTOFF:
        notes.append(f"not started until its required devices are plugged in and free (state stays shutoff, wants {spec.state})")
    else:
        steps += vm_power.power_steps(spec.libvirt_name, PowerState.SHUTOFF, spec.state, timeout=spec.shutdown_timeout)
    steps += vm_power.address_wait(spec, steps)
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
        changes.append(Change("usb", None, vm_usb.plugged_in(device)))
    reason = "declared, does not exist"
    ctx.actions.append(Action(Kind.VM, spec.owner, spec.stack, spec.name, Verb.CREATE, reason, Phase.VMS, tuple(changes), tuple(steps), tuple(notes)))


def _update_reason(changes: list[Change], vm: ObservedVm) -> str:
    fields = sorted({c.field for c in changes})
    if fields == ["state"]:
        return f"is {vm.condition}"
    return "differs in " + ", ".join(fields) if fields else "definition out of date"


# --- removal -------------------------------------------------------------------------------------------------


def plan_vm_pruning(ctx: Context) -> set[str]:
    """Remove the managed VMs of the plan's scopes that are no longer declared; returns their names."""
    pruned: set[str] = set()
    for vm in sorted(ctx.observed.vms, key=lambda v: v.libvirt_name):
        if vm.libvirt_name in ctx.desired_vms:
            continue
        if not describes(vm.libvirt_name, vm.ownership) or not ctx.in_scope(vm.ownership):
            continue
        o = vm.ownership
        assert o is not None
        if ctx.kept_unread(Kind.VM, o.owner, o.stack, o.name, o.manifest, Phase.DESTROY_VMS):
            continue
        destroy_vm(ctx, vm, "no longer declared")
        pruned.add(vm.libvirt_name)
    return pruned


def destroy_vm(ctx: Context, vm: ObservedVm, reason: str) -> None:
    """Stop, undefine, release its reservations and (unless kept) delete its volumes.

    A removed VM is no longer declared: it stops within the timeout recorded when it was last applied."""
    assert vm.ownership is not None
    owner, name = vm.ownership.owner, vm.ownership.name
    recorded = vm.ownership.shutdown_timeout
    timeout = recorded if recorded is not None else vm_power.DEFAULT_SHUTDOWN_TIMEOUT
    steps = vm_power.stop_steps(vm, timeout=timeout, force=ctx.options.force)
    # The definition goes last, for the reason it comes first in a create: until it is gone the next plan
    # sees the VM and removes whatever of its reservations and volumes a killed apply left.
    for network, mac, ip in vm_network.reservations_anywhere(ctx, vm):
        steps.append(s.RemoveDhcpHost(network, mac, ip))
    if not ctx.options.keep_disks:
        for volume in (overlay_volume_name(owner, name), seed_volume_name(owner, name)):
            if volume in ctx.volumes:
                steps.append(s.DeleteVolume(volume))
    steps.append(s.UndefineVm(vm.libvirt_name))
    changes = (Change("state", vm.state.value, None),)
    ctx.actions.append(Action(Kind.VM, owner, vm.ownership.stack, name, Verb.DESTROY, reason, Phase.DESTROY_VMS, changes, tuple(steps)))
