"""Test doubles for what these machines cannot do for real.

FakeLiveUsb exists because the machines that run the tests have no USB bus: libvirt's live USB passthrough
(attachDeviceFlags(LIVE) on a running domain, or starting a domain with a USB hostdev) fails here with
"cannot open directory '/sys/bus/usb/devices'", and the test driver does not implement attachDeviceFlags at
all. The persistent half of a USB change (the domain definition) is tested for real against the daemon
(tests/test_usb_daemon.py); only the live half goes through this fake, at the Host interface, and only for
the devices a test sets up explicitly: anything else fails loudly.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

from epfiot.errors import HostError
from epfiot.host import Host
from epfiot.model import AttachedUsb, HostUsbDevice, NetworkSpec, Observed, VmSpec
from epfiot.usb import attached_matches


@dataclass(frozen=True)
class LiveUsbCall:
    op: str  # "attach" or "detach"
    vm: str  # libvirt name
    device: AttachedUsb  # what the hostdev says (id, bus, device, required)


class FakeLiveUsb:
    """A Host that passes everything through to a real one, except live USB attach/detach.

    `expect(vm, device)` sets up a host device that may be attached to, or detached from, that running VM
    live. Such a call is recorded in `calls` and emulated as the Host interface specifies live=True: the
    running VM only (AFFECT_LIVE), never its definition (the planner re-renders the definition itself, so a
    fake that also wrote the definition would hide a plan that forgot to). `observe()` then shows the device
    in, or no longer in, that VM's live devices, until the VM stops.

    Like libvirt: a live call on a VM that is not running, attaching a device the VM already has live, or
    detaching one it does not have, raises HostError. A live call for a VM or device not set up raises
    AssertionError("FakeLiveUsb: unexpected ... (not set up)"). Calls with live=False pass through.
    """

    def __init__(self, inner: Host) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.calls: list[LiveUsbCall] = []
        self._expected: list[tuple[str, HostUsbDevice]] = []
        self._live: dict[str, list[AttachedUsb]] = {}  # emulated live hostdevs of the VMs touched live

    def expect(self, vm: str, device: HostUsbDevice) -> None:
        """Allow live attach/detach of `device` on the VM with libvirt name `vm`."""
        self._expected.append((vm, device))

    # --- the intercepted calls ---------------------------------------------------------------------------

    def attach_usb(self, name: str, device: HostUsbDevice, *, required: bool, live: bool) -> None:
        if not live:
            self.inner.attach_usb(name, device, required=required, live=False)
            return
        if (name, device) not in self._expected:
            raise AssertionError(
                f"FakeLiveUsb: unexpected live attach of {device.id} ({device.nodedev}) to {name} (not set up)"
            )
        live_now = self._live_devices(name)
        hostdev = AttachedUsb(device.id, device.bus, device.device, required)
        self.calls.append(LiveUsbCall("attach", name, hostdev))
        if any(_same_hostdev(a, hostdev) for a in live_now):
            raise HostError(f"Requested operation is not valid: USB device {device.bus:03d}:{device.device:03d} is in use by {name}")
        self._live[name] = [*live_now, hostdev]

    def detach_usb(self, name: str, device: AttachedUsb, *, live: bool) -> None:
        if not live:
            self.inner.detach_usb(name, device, live=False)
            return
        if not any(vm == name and attached_matches(device, d) for vm, d in self._expected):
            raise AssertionError(f"FakeLiveUsb: unexpected live detach of {device.id} from {name} (not set up)")
        live_now = self._live_devices(name)
        self.calls.append(LiveUsbCall("detach", name, device))
        if not any(_same_hostdev(a, device) for a in live_now):
            raise HostError(f"device not found: USB {device.id} is not attached to {name}")
        self._live[name] = [a for a in live_now if not _same_hostdev(a, device)]

    def observe(self, *, addresses_of: Collection[str] = ()) -> Observed:
        observed = self.inner.observe(addresses_of=addresses_of)
        vms = []
        for vm in observed.vms:
            if vm.libvirt_name in self._live:
                if vm.active:
                    live = sorted(self._live[vm.libvirt_name], key=lambda a: (str(a.id), a.bus or 0, a.device or 0))
                    vm = replace(vm, live_devices=tuple(live))
                else:
                    del self._live[vm.libvirt_name]  # stopped: its live state is gone; it boots from its definition
            vms.append(vm)
        return replace(observed, vms=tuple(vms))

    def _live_devices(self, name: str) -> list[AttachedUsb]:
        """The VM's live hostdevs (emulated once touched), or HostError when it is not running."""
        vm = next((v for v in self.inner.observe().vms if v.libvirt_name == name), None)
        if vm is None:
            raise HostError(f"Domain not found: no domain with matching name '{name}'")
        if not vm.active:
            self._live.pop(name, None)
            raise HostError(f"Requested operation is not valid: domain is not running ({name})")
        if name not in self._live:
            self._live[name] = list(vm.live_devices if vm.live_devices is not None else vm.devices)
        return list(self._live[name])

    # --- everything else goes to the real host -----------------------------------------------------------

    def close(self) -> None:
        self.inner.close()

    def define_vm(
        self, spec: VmSpec, usb: tuple[tuple[HostUsbDevice, bool], ...], *, uuid: str | None, seed_digest: str
    ) -> None:
        self.inner.define_vm(spec, usb, uuid=uuid, seed_digest=seed_digest)

    def start_vm(self, name: str, *, paused: bool = False) -> None:
        self.inner.start_vm(name, paused=paused)

    def shutdown_vm(self, name: str, *, timeout: float) -> bool:
        return self.inner.shutdown_vm(name, timeout=timeout)

    def destroy_vm(self, name: str) -> None:
        self.inner.destroy_vm(name)

    def suspend_vm(self, name: str) -> None:
        self.inner.suspend_vm(name)

    def resume_vm(self, name: str) -> None:
        self.inner.resume_vm(name)

    def undefine_vm(self, name: str) -> None:
        self.inner.undefine_vm(name)

    def set_vcpus(self, name: str, count: int, *, live: bool) -> None:
        self.inner.set_vcpus(name, count, live=live)

    def set_memory(self, name: str, mib: int, *, live: bool) -> None:
        self.inner.set_memory(name, mib, live=live)

    def vm_addresses(self, name: str) -> tuple[str, ...]:
        return self.inner.vm_addresses(name)

    def define_network(self, spec: NetworkSpec) -> None:
        self.inner.define_network(spec)

    def start_network(self, name: str) -> None:
        self.inner.start_network(name)

    def remove_network(self, name: str) -> None:
        self.inner.remove_network(name)

    def set_dhcp_host(self, network: str, mac: str, ip: str, hostname: str) -> None:
        self.inner.set_dhcp_host(network, mac, ip, hostname)

    def remove_dhcp_host(self, network: str, mac: str, ip: str) -> None:
        self.inner.remove_dhcp_host(network, mac, ip)

    def create_overlay(self, spec: VmSpec) -> None:
        self.inner.create_overlay(spec)

    def write_seed(self, name: str, iso: bytes) -> None:
        self.inner.write_seed(name, iso)

    def delete_volume(self, volume: str) -> None:
        self.inner.delete_volume(volume)


def _same_hostdev(a: AttachedUsb, b: AttachedUsb) -> bool:
    return (a.id, a.bus, a.device) == (b.id, b.bus, b.device)
