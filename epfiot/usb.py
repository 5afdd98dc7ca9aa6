"""USB claims: which host device each VM's selector gets. Pure: no libvirt, no I/O.

The rules (issue 4):
- A selector matches a device when the device's id is the selector's id or one of its aliases (a Coral is
  1a6e:089a until its first inference, then 18d1:9302), and, when the selector gives them, the serial and the
  port path are equal too. Hubs never match: passing a hub through would take every device behind it.
- A device is held by at most one VM. Two claims that resolve to the same device (same tenant or not, same VM
  or not) are a plan-time error naming both claims.
- A selector that matches several devices is an error listing the candidates and how to narrow it.
- A claim denied by the host USB policy (epfiot.policy) is an error.
- A device that is not plugged in resolves to None. This is not an error: the planner defines the VM without
  it; a VM with a *required* device that is missing is not started ("waiting for device ..."), and the next
  apply (or `epfiot serve`) starts it once the device appears. An optional device that is missing is simply
  left out and the VM starts. We chose waiting over failing the plan so that one unplugged accelerator does
  not block every other change on the host, and so that plugging it in is all it takes to converge.

Bus and device numbers change whenever a device re-enumerates; the planner re-resolves selectors on every
apply, so the bus/device pinned in a hostdev is always the current one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from epfiot.model import AttachedUsb, HostUsbDevice, ObservedVm, UsbSelector
from epfiot.policy import UsbPolicy

Claim = tuple[str, str, UsbSelector]  # (owner, VM name, selector)


def match(selector: UsbSelector, devices: Iterable[HostUsbDevice]) -> list[HostUsbDevice]:
    """The devices `selector` matches, hubs excluded, in (bus, device, nodedev) order."""
    ids = set(selector.ids)
    found = [
        d
        for d in devices
        if not d.is_hub
        and d.id in ids
        and (selector.serial is None or d.serial == selector.serial)
        and (selector.port is None or d.port == selector.port)
    ]
    return sorted(found, key=_device_order)


def describe_device(device: HostUsbDevice) -> str:
    """One line naming a device the way a user finds it: id, product, where it is plugged, serial."""
    where = [f"bus {device.bus} device {device.device}"]
    if device.port:
        where.append(f"port {device.port}")
    if device.serial:
        where.append(f"serial {device.serial}")
    name = f" {device.product_name}" if device.product_name else ""
    return f"{device.id}{name} ({device.nodedev}: {', '.join(where)})"


def describe_claim(claim: Claim) -> str:
    owner, vm, selector = claim
    return f"{owner}/{vm} ({selector.source}, usb {selector})"


def resolve_claims(
    claims: Sequence[Claim],
    devices: Iterable[HostUsbDevice],
    policy: UsbPolicy | None = None,
) -> tuple[dict[Claim, HostUsbDevice | None], list[str]]:
    """Resolve every claim against the host's devices.

    Returns the assignment of each claim (None: no device, because it is not plugged in or because of a
    problem) and the problems, each a complete sentence starting with the claim's manifest position. Any
    problem makes the plan unappliable.
    """
    devices = tuple(devices)
    assignments: dict[Claim, HostUsbDevice | None] = {}
    problems: list[str] = []
    holders: dict[str, list[Claim]] = {}  # nodedev -> the claims that resolved to it
    for claim in claims:
        owner, vm, selector = claim
        prefix = f"{selector.source}: vm {owner}/{vm}: usb {selector}"
        found = match(selector, devices)
        if len(found) > 1:
            assignments[claim] = None
            problems.append(f"{prefix}: matches {len(found)} devices: {_candidates(found)}. {_narrowing_hint(found)}")
            continue
        if not found:
            assignments.setdefault(claim, None)
            problem = _why_nothing_matches(selector, devices)
            if problem is None and policy is not None:
                denial = policy.denial_for_selector(owner, selector)
                if denial is not None:
                    problem = f"tenant {owner} may not claim it: {denial}"
            if problem is not None:
                problems.append(f"{prefix}: {problem}")
            continue
        device = found[0]
        denial = policy.denial(owner, device) if policy is not None else None
        if denial is not None:
            assignments[claim] = None
            problems.append(f"{prefix}: tenant {owner} may not claim {describe_device(device)}: {denial}")
            continue
        assignments[claim] = device
        holders.setdefault(device.nodedev, []).append(claim)
    for nodedev, held in holders.items():
        if len(held) < 2:
            continue
        device = next(d for d in devices if d.nodedev == nodedev)
        first = held[0]
        for other in held[1:]:
            problems.append(
                f"{other[2].source}: usb device {describe_device(device)} is claimed by both "
                f"{describe_claim(first)} and {describe_claim(other)}: a device is held by at most one VM"
            )
        for claim in held:
            assignments[claim] = None
    return assignments, problems


def _device_order(d: HostUsbDevice) -> tuple[int, int, str]:
    return (d.bus, d.device, d.nodedev)


def _candidates(found: Sequence[HostUsbDevice]) -> str:
    return "; ".join(describe_device(d) for d in found)


def _narrowing_hint(found: Sequence[HostUsbDevice]) -> str:
    options = []
    for key, values in (("serial", [d.serial for d in found]), ("port", [d.port for d in found])):
        if all(values) and len(set(values)) == len(values):
            options.append(f"{key}: (one of {', '.join(repr(v) for v in values)})")
    if not options:
        return "Narrow it with serial: or port: (the host reports neither for these devices, so they cannot be told apart)"
    return "Narrow it with " + " or ".join(options) + "."


def _why_nothing_matches(selector: UsbSelector, devices: Sequence[HostUsbDevice]) -> str | None:
    """A problem when nothing matches for a reason other than "not plugged in"; None for unplugged."""
    ids = set(selector.ids)
    same_id = [d for d in devices if d.id in ids]
    if same_id and all(d.is_hub for d in same_id):
        return f"{_candidates(same_id)} is a hub; hubs cannot be passed through"
    candidates = [d for d in same_id if not d.is_hub and (selector.port is None or d.port == selector.port)]
    if selector.serial is not None and candidates and all(d.serial is None for d in candidates):
        return (
            f"the host reports no serial number for {_candidates(candidates)}, so serial: cannot select it; "
            "select it by port: instead"
        )
    return None


# --- attached hostdevs vs desired devices ----------------------------------------------------------------


def attached_matches(attached: AttachedUsb, device: HostUsbDevice) -> bool:
    """True when a hostdev read back from a domain definition is this host device.

    Same id, and the same bus/device when the hostdev pins them (epfiot's always do). A Coral that
    re-enumerated (1a6e:089a at 1/4 -> 18d1:9302 at 1/5) does not match: its hostdev must be replaced.
    """
    if attached.id != device.id:
        return False
    return attached.bus is None or (attached.bus, attached.device) == (device.bus, device.device)


def attached_to_claim(attached: AttachedUsb, selector: UsbSelector) -> bool:
    """True when a hostdev could have been made for `selector` (its id is one of the selector's ids).

    Serial and port are not in a hostdev, so this cannot tell two identical adapters apart: use it to explain
    a replacement ("the Coral re-enumerated"), not to decide one; attached_matches decides.
    """
    return attached.id in selector.ids


@dataclass(frozen=True)
class UsbDiff:
    """How a VM's attached hostdevs differ from the devices its claims resolved to. Order never matters."""

    unchanged: tuple[tuple[HostUsbDevice, bool], ...] = ()
    attach: tuple[tuple[HostUsbDevice, bool], ...] = ()
    detach: tuple[AttachedUsb, ...] = ()
    required_changed: tuple[tuple[HostUsbDevice, bool], ...] = ()  # attached; only `required` differs

    @property
    def changed(self) -> bool:
        return bool(self.attach or self.detach or self.required_changed)


def diff_attached(attached: Iterable[AttachedUsb], wanted: Iterable[tuple[HostUsbDevice, bool]]) -> UsbDiff:
    """Compare hostdevs (from a domain definition) with (device, required) pairs (from resolve_claims)."""
    remaining = sorted(attached, key=_attached_order)
    unchanged: list[tuple[HostUsbDevice, bool]] = []
    attach: list[tuple[HostUsbDevice, bool]] = []
    required_changed: list[tuple[HostUsbDevice, bool]] = []
    for device, required in sorted(wanted, key=lambda pair: _device_order(pair[0])):
        hit = next((a for a in remaining if attached_matches(a, device)), None)
        if hit is None:
            attach.append((device, required))
            continue
        remaining.remove(hit)
        (unchanged if hit.required == required else required_changed).append((device, required))
    return UsbDiff(tuple(unchanged), tuple(attach), tuple(remaining), tuple(required_changed))


def _attached_order(a: AttachedUsb) -> tuple[str, int, int]:
    return (str(a.id), -1 if a.bus is None else a.bus, -1 if a.device is None else a.device)


# --- who holds what -------------------------------------------------------------------------------------


def held_by(vms: Iterable[ObservedVm], devices: Iterable[HostUsbDevice]) -> dict[str, str]:
    """Which domain's persistent definition holds each host device: nodedev name -> "owner/vm".

    Managed VMs are named owner/name; other domains by their libvirt name (see holders)."""
    result: dict[str, str] = {}
    for nodedev, vm in holders(vms, devices).items():
        result[nodedev] = f"{vm.ownership.owner}/{vm.ownership.name}" if vm.ownership is not None else vm.libvirt_name
    return result


def holders(vms: Iterable[ObservedVm], devices: Iterable[HostUsbDevice]) -> dict[str, ObservedVm]:
    """Which domain's persistent definition holds each host device: nodedev name -> the domain.

    A hostdev pinning bus/device holds the device at that address with that id; one without an address holds
    the device with its id only when exactly one such device is plugged in (libvirt itself refuses to start
    an ambiguous one). A VM whose definition still names a Coral's old identity holds nothing until apply
    updates the hostdev. Of two domains naming one device, the first by name holds it.
    """
    devices = tuple(devices)
    result: dict[str, ObservedVm] = {}
    for vm in sorted(vms, key=lambda v: v.libvirt_name):
        for attached in vm.devices:
            hits = [d for d in devices if attached_matches(attached, d)]
            if len(hits) == 1:
                result.setdefault(hits[0].nodedev, vm)
    return result
