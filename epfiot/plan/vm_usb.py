"""A VM's USB devices: the devices its selectors resolved to, attached to (or detached from) the running VM
live and always written into its definition."""

from __future__ import annotations

from epfiot.model import HostUsbDevice, VmSpec
from epfiot.plan import steps as s
from epfiot.plan.actions import Change
from epfiot.plan.context import Context
from epfiot.plan.vm_update import VmUpdate

Devices = tuple[tuple[HostUsbDevice, bool], ...]  # resolved devices, with their selectors' `required`


def resolve(ctx: Context, spec: VmSpec) -> tuple[Devices, list[str], bool]:
    """The devices present for the VM's selectors (in bus order), a note for each selector that found none,
    and whether a required one is missing."""
    if not spec.devices:
        return (), [], False
    present: list[tuple[HostUsbDevice, bool]] = []
    notes: list[str] = []
    required_missing = False
    for selector in spec.devices:
        device = ctx.usb.assignments.get((spec.owner, spec.name, selector))
        if device is None:
            why = ctx.usb_notes.get((spec.owner, spec.name, selector)) or f"USB {selector} is not plugged in"
            notes.append(why + ("" if selector.required else " (optional)"))
            required_missing |= selector.required
        else:
            present.append((device, selector.required))
    present.sort(key=lambda pair: (pair[0].bus, pair[0].device, str(pair[0].id)))
    return tuple(present), notes, required_missing


def plugged_in(device: HostUsbDevice) -> str:
    return f"{device.id} at {device.bus}/{device.device}"


def compare(u: VmUpdate, usb: Devices) -> None:
    """The definition is re-rendered when its devices differ. A Coral that re-enumerated is a detach of its
    old identity and an attach of its new one."""
    from epfiot.usb import attached_matches, diff_attached  # imported only when a VM has devices

    vm = u.vm
    name = vm.libvirt_name
    running = u.running
    diff = diff_attached(vm.devices, usb)
    how = "live" if running else "definition"
    for device, required in diff.attach:
        u.changes.append(Change("usb", None, plugged_in(device), how))
        if running:
            u.live.append(s.AttachUsb(name, device, required, live=True))
    for stale in diff.detach:
        u.changes.append(Change("usb", str(stale.id), None, how))
        if running:
            u.live.append(s.DetachUsb(name, stale, live=True))
    for device, required in diff.required_changed:
        u.changes.append(Change("usb", f"{device.id} required={not required}", f"required={required}", "definition"))
    if running and vm.live_devices is not None:
        # Unplugged and plugged again: the definition has it, the running VM lost it.
        for device, required in diff.unchanged:
            if not any(attached_matches(a, device) for a in vm.live_devices):
                u.live.append(s.AttachUsb(name, device, required, live=True))
                u.changes.append(Change("usb", None, plugged_in(device), "re-attach live"))
    u.redefine |= diff.changed
