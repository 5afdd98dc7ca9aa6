"""LibvirtHost: the Host interface (epfiot.host) against one libvirt connection.

Thread safety: apply calls one LibvirtHost from several threads at once. libvirt connections are
thread-safe, and a LibvirtHost holds no mutable state of its own after `open`.

Observing reads, for each domain, dom.info() (state, and the running instance's memory and vCPUs) and its
persistent XML (XMLDesc INACTIVE); for running domains also the live vCPU maximum, for paused ones the reason. The live XML is read only for running domains whose definition has USB hostdevs, the only
live detail epfiot compares that those do not give. Unchanged domains reuse the last observe's parse.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Collection, Sequence
from typing import Any

import libvirt

from epfiot.errors import HostError
from epfiot.libvirt import domain as domxml
from epfiot.libvirt.connection import host_error, host_errors, open_connection
from epfiot.libvirt.connection import virt_type as detect_virt_type
from epfiot.model import (
    AttachedUsb,
    HostUsbDevice,
    NetworkSpec,
    Observed,
    ObservedNetwork,
    ObservedVm,
    ObservedVolume,
    VmSpec,
)

DEFAULT_IMAGE_POOL = "epfiot-images"

_LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
_CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
    # drivers that refuse some flags (the test driver has no NVRAM or checkpoints)
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    0,
)
_REFUSED_FLAGS = frozenset({libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT})


def _code(error: Any) -> int:
    return int(error.get_error_code() or 0)


class LibvirtHost:
    """The Host interface over a libvirt connection. Open with LibvirtHost.open(uri)."""

    def __init__(self, conn: Any, uri: str, *, image_pool: str, virt_type: str | None = None) -> None:
        self._conn = conn
        self.uri = uri
        self.image_pool = image_pool
        self._virt_type = virt_type
        # What the last observe read: (domain XML, state, live values) -> ObservedVm. Observing again (watch,
        # a plan after an apply) parses only the domains that changed. Replaced whole, under the lock.
        self._lock = threading.Lock()
        self._parsed: dict[tuple[object, ...], ObservedVm] = {}
        self._max_vcpus: dict[tuple[str, int], int] = {}  # (name, domain id) -> the instance's vCPU maximum

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

    # --- observing ---------------------------------------------------------------------------------------

    def observe(self, *, addresses_of: Collection[str] = ()) -> Observed:
        vms = self.observe_vms()
        wanted = set(addresses_of)
        addresses = {vm.libvirt_name: self.vm_addresses(vm.libvirt_name) for vm in vms if vm.active and vm.libvirt_name in wanted}
        pool = self._image_pool_name()
        return Observed(
            vms=vms,
            networks=self._observe_networks(),
            usb=self._observe_usb(),
            volumes=self._observe_volumes() if pool else (),
            vm_addresses=addresses,
            image_pool=pool,
        )

    def observe_vms(self) -> tuple[ObservedVm, ...]:
        """All domains, managed or not, sorted by name."""
        inactive_flag = libvirt.VIR_DOMAIN_XML_INACTIVE
        live_maximum = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_VCPU_MAXIMUM
        shutoff = libvirt.VIR_DOMAIN_SHUTOFF
        crashed = libvirt.VIR_DOMAIN_CRASHED
        paused = libvirt.VIR_DOMAIN_PAUSED
        with host_errors("list domains"):
            domains = self._conn.listAllDomains(0)
        previous, previous_max_vcpus = self._parsed, self._max_vcpus
        parsed: dict[tuple[object, ...], ObservedVm] = {}
        max_vcpus: dict[tuple[str, int], int] = {}
        found = []
        for dom in domains:
            try:
                info = dom.info()  # state, and the running instance's memory and vCPUs
                state = info[0]
                reason = dom.state()[1] if state == paused else 0  # paused, or still starting up?
                xml = dom.XMLDesc(inactive_flag)
                live_xml = max_vcpu = None
                if state in (shutoff, crashed):
                    key: tuple[object, ...] = (xml, state)
                else:
                    try:
                        # a running instance's vCPU maximum is fixed until it stops: known per (name, id)
                        instance = (dom.name(), dom.ID())
                        max_vcpu = previous_max_vcpus.get(instance)
                        if max_vcpu is None:
                            max_vcpu = dom.vcpusFlags(live_maximum)
                        max_vcpus[instance] = max_vcpu
                        live_xml = dom.XMLDesc(0) if domxml.has_hostdevs(xml) else None
                    except libvirt.libvirtError as e:
                        if _code(e) != libvirt.VIR_ERR_OPERATION_INVALID or dom.isActive():
                            raise
                        state, reason = shutoff, 0  # stopped between info() and now
                        live_xml = max_vcpu = None
                    key = (xml, state, reason, info[1], info[2], info[3], max_vcpu, live_xml)
            except libvirt.libvirtError as e:
                if _code(e) == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined between the listing and now
                raise host_error("read domain", e) from e
            vm = previous.get(key)
            if vm is None:
                live_info = None if state in (shutoff, crashed) else info
                vm = domxml.parse_domain(xml, state, live_info, live_xml, reason=reason, live_max_vcpu=max_vcpu)
            parsed[key] = vm
            found.append(vm)
        with self._lock:
            self._parsed, self._max_vcpus = parsed, max_vcpus
        found.sort(key=lambda vm: vm.libvirt_name)
        return tuple(found)

    def ensure_image_pool(self, path: str) -> None:
        """Create the image pool (a directory pool at `path`) unless it exists: apply needs it for VM disks
        and cloud-init seeds; base images are copied into its directory."""
        from epfiot.libvirt import storage

        storage.ensure_pool(self._conn, self.image_pool, path)

    def _image_pool_name(self) -> str | None:
        try:
            self._conn.storagePoolLookupByName(self.image_pool)
        except libvirt.libvirtError as e:
            if _code(e) in (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_SUPPORT):
                return None
            raise host_error(f"look up storage pool {self.image_pool}", e) from e
        return self.image_pool

    def _observe_networks(self) -> tuple[ObservedNetwork, ...]:
        from epfiot.libvirt import network

        return tuple(network.observe_networks(self._conn))

    def _observe_volumes(self) -> tuple[ObservedVolume, ...]:
        from epfiot.libvirt import storage

        return tuple(storage.observe_volumes(self._conn, self.image_pool))

    def _observe_usb(self) -> tuple[HostUsbDevice, ...]:
        from epfiot.libvirt import usb

        return tuple(usb.observe_usb(self._conn))

    # --- VMs ---------------------------------------------------------------------------------------------

    def _domain(self, name: str, operation: str) -> Any:
        with host_errors(f"{operation} {name}"):
            return self._conn.lookupByName(name)

    def _find(self, name: str) -> Any | None:
        """The domain, or None when there is none by that name."""
        try:
            return self._conn.lookupByName(name)
        except libvirt.libvirtError as e:
            if _code(e) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise host_error(f"look up {name}", e) from e

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
        xml = self.render_vm(spec, usb, uuid=uuid, seed_digest=seed_digest)
        with host_errors(f"define {spec.libvirt_name}"):
            self._conn.defineXML(xml)

    def start_vm(self, name: str, *, paused: bool = False) -> None:
        dom = self._domain(name, "start")
        with host_errors(f"start {name}"):
            if dom.isActive():
                return  # already started: nothing to do
            if not paused:
                dom.create()
                return
            try:
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            except libvirt.libvirtError as e:
                if _code(e) not in _REFUSED_FLAGS:
                    raise
                dom.create()  # a driver without START_PAUSED (the test driver): start, then pause
                dom.suspend()

    def shutdown_vm(self, name: str, *, timeout: float) -> bool:
        """ACPI shutdown, polled until `timeout`, then destroy. A paused VM is resumed first: a guest that
        does not run cannot act on ACPI."""
        dom = self._domain(name, "shut down")
        deadline = time.monotonic() + max(0.0, timeout)
        with host_errors(f"shut down {name}"):
            if not dom.isActive():
                return True
            try:
                state = dom.state()[0]
                if state == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()
                elif state == libvirt.VIR_DOMAIN_PMSUSPENDED:
                    dom.pMWakeup(0)
                dom.shutdown()
            except libvirt.libvirtError:
                if not dom.isActive():
                    return True
                deadline = 0.0  # ACPI refused (no guest support): straight to destroy
            delay = 0.02
            while True:
                if not dom.isActive():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)
        self._destroy(dom, name)
        return False

    def destroy_vm(self, name: str) -> None:
        self._destroy(self._domain(name, "destroy"), name)

    def _destroy(self, dom: Any, name: str) -> None:
        try:
            dom.destroy()
        except libvirt.libvirtError as e:
            try:
                active = dom.isActive()
            except libvirt.libvirtError:
                active = True
            if active:
                raise host_error(f"destroy {name}", e) from e
            # already off (or went off by itself meanwhile): done

    def suspend_vm(self, name: str) -> None:
        dom = self._domain(name, "suspend")
        with host_errors(f"suspend {name}"):
            if dom.state()[0] in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
                return
            dom.suspend()

    def resume_vm(self, name: str) -> None:
        dom = self._domain(name, "resume")
        with host_errors(f"resume {name}"):
            state = dom.state()[0]
            try:
                if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
                    dom.pMWakeup(0)
                elif state == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()
            except libvirt.libvirtError:
                if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
                    raise  # else it got there by itself (it was still starting up)

    def undefine_vm(self, name: str) -> None:
        dom = self._find(name)
        if dom is None:
            return  # already gone
        with host_errors(f"undefine {name}"):
            if dom.isActive():
                raise HostError(f"undefine {name}: the domain is running; stop it first")
            for flags in _UNDEFINE_FLAGS:
                try:
                    if flags:
                        dom.undefineFlags(flags)
                    else:
                        dom.undefine()
                    return
                except libvirt.libvirtError as e:
                    if flags == 0 or _code(e) not in _REFUSED_FLAGS:
                        raise

    def set_vcpus(self, name: str, count: int, *, live: bool) -> None:
        dom = self._domain(name, "set vcpus of")
        with host_errors(f"set {count} vcpus {'live ' if live else ''}on {name}"):
            dom.setVcpusFlags(count, _LIVE if live else _CONFIG)

    def set_memory(self, name: str, mib: int, *, live: bool) -> None:
        dom = self._domain(name, "set memory of")
        with host_errors(f"set memory to {mib} MiB {'live ' if live else ''}on {name}"):
            dom.setMemoryFlags(mib * 1024, _LIVE if live else _CONFIG)

    def attach_usb(self, name: str, device: HostUsbDevice, *, required: bool, live: bool) -> None:
        dom = self._domain(name, "attach USB to")
        xml = domxml.hostdev_xml(device, required=required)
        with host_errors(f"attach USB {device.id} {'live ' if live else ''}to {name}"):
            dom.attachDeviceFlags(xml, _LIVE if live else _CONFIG)

    def detach_usb(self, name: str, device: AttachedUsb, *, live: bool) -> None:
        dom = self._domain(name, "detach USB from")
        host_device = HostUsbDevice(nodedev="", id=device.id, bus=device.bus or 0, device=device.device or 0)
        xml = domxml.hostdev_xml(host_device, required=device.required)
        with host_errors(f"detach USB {device.id} {'live ' if live else ''}from {name}"):
            dom.detachDeviceFlags(xml, _LIVE if live else _CONFIG)

    def vm_addresses(self, name: str) -> tuple[str, ...]:
        """IPv4 addresses from DHCP leases, else from the guest agent; () when none is known (or libvirt
        cannot tell: no lease yet, no agent)."""
        try:
            dom = self._find(name)
            if dom is None or not dom.isActive():
                return ()
        except (HostError, libvirt.libvirtError):
            return ()
        for source in (
            libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
            libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
        ):
            try:
                interfaces = dom.interfaceAddresses(source, 0) or {}
            except libvirt.libvirtError:
                continue
            found = _ipv4_addresses(interfaces)
            if found:
                return found
        return ()

    # --- networks (epfiot.libvirt.network) ---------------------------------------------------------------

    def define_network(self, spec: NetworkSpec) -> None:
        from epfiot.libvirt import network

        network.define_network(self._conn, spec)

    def start_network(self, name: str) -> None:
        from epfiot.libvirt import network

        network.start_network(self._conn, name)

    def remove_network(self, name: str) -> None:
        from epfiot.libvirt import network

        network.remove_network(self._conn, name)

    def set_dhcp_host(self, network: str, mac: str, ip: str, hostname: str) -> None:
        from epfiot.libvirt import network as networks

        networks.set_dhcp_host(self._conn, network, mac, ip, hostname)

    def remove_dhcp_host(self, network: str, mac: str, ip: str) -> None:
        from epfiot.libvirt import network as networks

        networks.remove_dhcp_host(self._conn, network, mac, ip)

    # --- storage (epfiot.libvirt.storage) ----------------------------------------------------------------

    def create_overlay(self, spec: VmSpec) -> None:
        from epfiot.libvirt import storage

        storage.create_overlay(self._conn, self.image_pool, spec)

    def write_seed(self, name: str, iso: bytes) -> None:
        from epfiot.libvirt import storage

        storage.write_seed(self._conn, self.image_pool, name, iso)

    def delete_volume(self, volume: str) -> None:
        from epfiot.libvirt import storage

        storage.delete_volume(self._conn, self.image_pool, volume)


def _ipv4_addresses(interfaces: dict[str, Any]) -> tuple[str, ...]:
    found: set[ipaddress.IPv4Address] = set()
    for interface in interfaces.values():
        for entry in (interface or {}).get("addrs") or ():
            if entry.get("type") != libvirt.VIR_IP_ADDR_TYPE_IPV4:
                continue
            try:
                address = ipaddress.IPv4Address(entry.get("addr", ""))
            except ValueError:
                continue
            if not address.is_loopback and not address.is_link_local:
                found.add(address)
    return tuple(str(a) for a in sorted(found))
