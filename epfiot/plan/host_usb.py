"""USB claims against the whole host: a device that a domain outside this apply holds (a VM of another stack
or tenant, or a domain epfiot does not manage) cannot be claimed; and a claim left without its device although
the device is plugged in says who holds it, rather than "not plugged in"."""

from __future__ import annotations

from epfiot.model import ObservedVm, UsbSelector
from epfiot.plan.actions import UsbResolution
from epfiot.plan.context import Context, describes

Claim = tuple[str, str, UsbSelector]


def check_usb(ctx: Context) -> None:
    """Runs after pruning is planned (a VM this plan destroys frees its devices) and before the VMs are. With
    host rules, a claim on a device held outside the apply is a problem and gets no device; every claim left
    without a device that is plugged in gets a note saying why (ctx.usb_notes)."""
    claims = [(vm.owner, vm.name, selector) for vm in ctx.desired.vms for selector in vm.devices]
    if not claims:
        return
    from epfiot.usb import describe_claim, describe_device, holders, match  # only for VMs with devices

    outside = [vm for vm in ctx.observed.vms if not _released_or_redeclared(ctx, vm)]
    held = holders(outside, ctx.observed.usb)
    assignments = dict(ctx.usb.assignments)
    rules = ctx.rules
    for claim in claims:
        owner, vm_name, selector = claim
        device = assignments.get(claim)
        if device is None or rules is None or device.nodedev not in held:
            continue
        holder = _holder(ctx, held[device.nodedev])
        ctx.problems.append(
            f"{selector.source}: vm {owner}/{vm_name}: usb {selector}: {describe_device(device)} is held by "
            f"{holder}: a device is held by at most one VM (free it there first)"
        )
        assignments[claim] = None
    ctx.usb = UsbResolution(assignments, ctx.usb.problems)
    for claim in claims:
        if assignments.get(claim) is not None:
            continue
        found = match(claim[2], ctx.observed.usb)
        if len(found) != 1:
            continue  # not plugged in, or ambiguous (a problem already says so)
        device = found[0]
        if device.nodedev in held:
            why = f"held by {_holder(ctx, held[device.nodedev])}"
        else:
            rivals = [c for c in claims if c != claim and match(c[2], (device,))]
            why = f"also claimed by {describe_claim(rivals[0])}" if rivals else "not given to it (see the plan's problems)"
        ctx.usb_notes[claim] = f"USB {claim[2]} is plugged in but {why}"


def _released_or_redeclared(ctx: Context, vm: ObservedVm) -> bool:
    """A domain of this apply's scopes that it declares (its claims are this plan's) or destroys."""
    if not describes(vm.libvirt_name, vm.ownership) or not ctx.in_scope(vm.ownership):
        return False
    return vm.libvirt_name in ctx.desired_vms or vm.libvirt_name in ctx.pruned


def _holder(ctx: Context, vm: ObservedVm) -> str:
    if ctx.rules is None:
        return f"VM {vm.libvirt_name!r}"
    return ctx.rules.describe("VM", vm.libvirt_name, vm.ownership)

