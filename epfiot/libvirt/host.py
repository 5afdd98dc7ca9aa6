"""LibvirtHost: the Host interface (epfiot.host) against one libvirt connection.

It only wires the interface to the driver's modules: facts (observing: domains, with their parse cache,
networks, volumes, USB devices, addresses), actions (what is done to domains), network and storage (what is
done to networks and the image pool), domain (the domain XML define_vm defines).

Thread safety: apply calls one LibvirtHost from several threads at once. libvirt connections are
thread-safe, and the only mutable state of a LibvirtHost after `open` is what its DomainFacts keeps of
the last observe, which is replaced whole under a lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Sequence
from typing import Any

import libvirt

from epfiot.libvirt import actions, facts, storage
from epfiot.libvirt import domain as domxml
from epfiot.libvirt import network as networks  # `network` is a parameter name below
from epfiot.libvirt.connection import host_errors, open_connection
from epfiot.libvirt.connection import virt_type as detect_virt_type
from epfiot.model import AttachedUsb, HostUsbDevice, NetworkSpec, Observed, ObservedVm, VmSpec

DEFAULT_IMAGE_POOL = storage.DEFAULT_POOL


class LibvirtHost:
    """The Host interface over a libvirt connection. Open with LibvirtHost.open(uri)."""

    def __init__(self, conn: Any, uri: str, *, image_pool: str, virt_type: str | None = None) -> None:
        self._conn = conn
        self.uri = uri
        self.image_pool = image_pool
        self._virt_type = virt_type
        self.domains = facts.DomainFacts()

    @classmethod
    def open(
        cls,
        uri: str | None = None,
        *,
        image_pool: str = DEFAULT_IMAGE_POOL,
        virt_type: str | None = None,
    ) -> LibvirtHost:
        """Connect to `uri` (default: $LIBVIRT_DEFAULT_URI, else qemu:///system). `virt_type`: the domain
        type to define ("kvm", "qemu", "test"); default: $EPFIOT_VIRT_TYPE, else detected."""
        conn = open_connection(uri)
        try:
            with host_errors("read the connection's URI"):
                actual_uri = str(conn.getURI())
            chosen = detect_virt_type(conn, virt_type) if virt_type else None  # a wrong one fails now
        except BaseException:
            conn.close()
            raise
        return cls(conn, actual_uri, image_pool=image_pool or DEFAULT_IMAGE_POOL, virt_type=chosen)

    @property
    def virt_type(self) -> str:
        """The domain type of the VMs this host defines; detected when first needed, so that commands that
        define nothing neither pay for the detection nor show its warnings."""
        if self._virt_type is None:
            self._virt_type = detect_virt_type(self._conn)
        return self._virt_type

    @property
    def connection(self) -> Any:
        """The libvirt connection (virConnect), for the epfiot.libvirt modules and benchmarks."""
        return self._conn

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):  # already closed, or the daemon went away
            self._conn.close()

    def __enter__(self) -> LibvirtHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- observing (epfiot.libvirt.facts) ----------------------------------------------------------------

    def observe(self, *, addresses_of: Collection[str] = ()) -> Observed:
        return facts.observe(self._conn, self.domains, self.image_pool, addresses_of=addresses_of)

    def observe_vms(self) -> tuple[ObservedVm, ...]:
        """All domains, managed or not, sorted by name."""
        return self.domains.observe_vms(self._conn)

    def vm_addresses(self, name: str) -> tuple[str, ...]:
        return facts.vm_addresses(self._conn, name)

    # --- VMs (epfiot.libvirt.actions) --------------------------------------------------------------------

    def render_vm(
        self, spec: VmSpec, usb: Sequence[tuple[HostUsbDevice, bool]], *, uuid: str | None, seed_digest: str
    ) -> str:
        """The domain XML define_vm would define."""
        return domxml.render_domain_xml(
            spec, usb, uuid=uuid, seed_digest=seed_digest, virt_type=self.virt_type, image_pool=self.image_pool
        )

    def define_vm(
        self,
        spec: VmSpec,
        usb: tuple[tuple[HostUsbDevice, bool], ...],
        *,
        uuid: str | None,
        seed_digest: str,
    ) -> None:
        actions.define(self._conn, spec.libvirt_name, self.render_vm(spec, usb, uuid=uuid, seed_digest=seed_digest))

    def start_vm(self, name: str, *, paused: bool = False) -> None:
        actions.start(self._conn, name, paused=paused)

    def shutdown_vm(self, name: str, *, timeout: float) -> bool:
        return actions.shutdown(self._conn, name, timeout=timeout)

    def destroy_vm(self, name: str) -> None:
        actions.destroy(self._conn, name)

    def suspend_vm(self, name: str) -> None:
        actions.suspend(self._conn, name)

    def resume_vm(self, name: str) -> None:
        actions.resume(self._conn, name)

    def undefine_vm(self, name: str) -> None:
        actions.undefine(self._conn, name)

    def set_vcpus(self, name: str, count: int, *, live: bool) -> None:
        actions.set_vcpus(self._conn, name, count, live=live)

    def set_memory(self, name: str, mib: int, *, live: bool) -> None:
        actions.set_memory(self._conn, name, mib, live=live)

    def attach_usb(self, name: str, device: HostUsbDevice, *, required: bool, live: bool) -> None:
        actions.attach_usb(self._conn, name, device, required=required, live=live)

    def detach_usb(self, name: str, device: AttachedUsb, *, live: bool) -> None:
        actions.detach_usb(self._conn, name, device, live=live)

    # --- networks (epfiot.libvirt.network) ---------------------------------------------------------------

    def define_network(self, spec: NetworkSpec) -> None:
        networks.define_network(self._conn, spec)

    def start_network(self, name: str) -> None:
        networks.start_network(self._conn, name)

    def remove_network(self, name: str) -> None:
        networks.remove_network(self._conn, name)

    def set_dhcp_host(self, network: str, mac: str, ip: str, hostname: str) -> None:
        networks.set_dhcp_host(self._conn, network, mac, ip, hostname)

    def remove_dhcp_host(self, network: str, mac: str, ip: str) -> None:
        networks.remove_dhcp_host(self._conn, network, mac, ip)

    # --- storage (epfiot.libvirt.storage) ----------------------------------------------------------------

    def ensure_image_pool(self, path: str) -> None:
        """Create the image pool (a directory pool at `path`) unless it exists: apply needs it for VM disks
        and cloud-init seeds; base images are copied into its directory."""
        storage.ensure_pool(self._conn, self.image_pool, path)

    def create_overlay(self, spec: VmSpec) -> None:
        storage.create_overlay(self._conn, self.image_pool, spec)

    def write_seed(self, name: str, iso: bytes) -> None:
        storage.write_seed(self._conn, self.image_pool, name, iso)

    def delete_volume(self, volume: str) -> None:
        storage.delete_volume(self._conn, self.image_pool, volume)
