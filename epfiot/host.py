"""The host driver interface: everything apply may ask of the machine it manages.

epfiot.libvirt.host.LibvirtHost implements it against a libvirt connection; tests may substitute a fake for
what this machine cannot do (live USB passthrough), and such a fake fails loudly on anything not set up.
Names are libvirt names ("<owner>.<name>"). Every method either does what it says or raises an
epfiot.errors.HostError carrying libvirt's message.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from epfiot.model import AttachedUsb, HostUsbDevice, NetworkSpec, Observed, VmSpec


class Host(Protocol):
    uri: str

    def observe(self, *, addresses_of: Collection[str] = ()) -> Observed:
        """Read the live state once: all domains (managed or not), networks, USB node devices, the image
        pool's volumes, and the addresses of the running domains named in `addresses_of`."""
        ...

    def close(self) -> None: ...

    # --- VMs ---------------------------------------------------------------------------------------------
    def define_vm(
        self,
        spec: VmSpec,
        usb: tuple[tuple[HostUsbDevice, bool], ...],
        *,
        uuid: str | None,
        seed_digest: str,
    ) -> None:
        """Define (create or replace) the persistent definition from templates/domain.xml.j2, ownership
        metadata included. `uuid` keeps an existing domain's identity; `usb` are the host devices the
        VM's selectors resolved to, each with its selector's `required` (optional ones that are unplugged
        are absent)."""
        ...

    def start_vm(self, name: str, *, paused: bool = False) -> None: ...

    def shutdown_vm(self, name: str, *, timeout: float) -> bool:
        """Graceful (ACPI) shutdown, waiting up to `timeout` s, then forced. True if it stopped gracefully."""
        ...

    def destroy_vm(self, name: str) -> None:
        """Immediate power off (virDomainDestroy). No error if already off."""
        ...

    def suspend_vm(self, name: str) -> None: ...

    def resume_vm(self, name: str) -> None: ...

    def undefine_vm(self, name: str) -> None:
        """Remove the definition with its nvram, managed save and snapshot metadata. Must be shut off."""
        ...

    def set_vcpus(self, name: str, count: int, *, live: bool) -> None:
        """live=True: the running VM only (AFFECT_LIVE); else the definition only (AFFECT_CONFIG).
        The planner re-renders the whole definition after live changes, so live calls never touch it."""
        ...

    def set_memory(self, name: str, mib: int, *, live: bool) -> None: ...

    def attach_usb(self, name: str, device: HostUsbDevice, *, required: bool, live: bool) -> None:
        """live=True: the running VM only (AFFECT_LIVE); else the definition only (AFFECT_CONFIG)."""
        ...

    def detach_usb(self, name: str, device: AttachedUsb, *, live: bool) -> None: ...

    def vm_addresses(self, name: str) -> tuple[str, ...]:
        """IPv4 addresses of a running VM: DHCP leases, then the guest agent when present."""
        ...

    # --- networks ----------------------------------------------------------------------------------------
    def define_network(self, spec: NetworkSpec) -> None:
        """Define, start and autostart a network from templates/network.xml.j2, with ownership metadata."""
        ...

    def start_network(self, name: str) -> None: ...

    def remove_network(self, name: str) -> None:
        """Stop (if active) and undefine."""
        ...

    def set_dhcp_host(self, network: str, mac: str, ip: str, hostname: str) -> None:
        """Add or replace the DHCP host reservation for `mac`, live and persistent."""
        ...

    def remove_dhcp_host(self, network: str, mac: str, ip: str) -> None: ...

    # --- storage -----------------------------------------------------------------------------------------
    def ensure_image_pool(self, path: str) -> None:
        """Create the image pool, a directory pool at `path`, unless it exists."""
        ...

    def create_overlay(self, spec: VmSpec) -> None:
        """Create the VM's qcow2 overlay volume backed by its base image (idempotent: an existing overlay
        with the right backing store is kept)."""
        ...

    def write_seed(self, name: str, iso: bytes) -> None:
        """Create or replace the VM's cloud-init seed ISO volume."""
        ...

    def delete_volume(self, volume: str) -> None:
        """Delete a volume of the image pool. No error if absent."""
        ...
