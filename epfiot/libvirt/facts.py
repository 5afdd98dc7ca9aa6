"""What the host is, read through a libvirt connection: its domains, networks, volumes, USB devices and the
addresses of running domains. Nothing here changes anything (epfiot.libvirt.actions does).

Observing reads, for each domain, dom.info() (state, and the running instance's memory and vCPUs) and its
persistent XML (XMLDesc INACTIVE); for running domains also the live vCPU maximum, for paused ones the
reason. The live XML is read only for running domains whose definition has USB hostdevs, the only live
detail epfiot compares that those do not give.

A DomainFacts keeps what its last observe read: a definition is parsed once for as long as its XML stays
the same, and a running domain whose XML, state and live values are all unchanged reuses its ObservedVm.
So watch, and the plan after an apply, parse only the domains that changed.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Collection
from typing import Any

import libvirt

from epfiot.errors import HostError
from epfiot.libvirt import domain as domxml
from epfiot.libvirt import network, storage, usb
from epfiot.libvirt.connection import error_code, host_error, host_errors, lookup_or_none
from epfiot.model import Observed, ObservedVm

_INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE
_LIVE_MAXIMUM = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_VCPU_MAXIMUM
_STOPPED = frozenset({libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED})
_ADDRESS_SOURCES = (
    libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
)


class DomainFacts:
    """Reads every domain of a connection, reusing what the previous read parsed (thread-safe: each read
    builds new tables and replaces the old ones whole, under the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._definitions: dict[str, ObservedVm] = {}  # inactive XML -> the definition read from it
        self._instances: dict[tuple[object, ...], ObservedVm] = {}  # (XML, state, live values) -> running VM
        self._max_vcpus: dict[tuple[str, int], int] = {}  # (name, domain id) -> the instance's vCPU maximum

    def forget(self) -> None:
        """Drop what earlier reads parsed: the next read parses every domain, as in a new process."""
        with self._lock:
            self._definitions, self._instances, self._max_vcpus = {}, {}, {}

    def observe_vms(self, conn: Any) -> tuple[ObservedVm, ...]:
        """All domains, managed or not, sorted by name."""
        with host_errors("list domains"):
            domains = conn.listAllDomains(0)
        with self._lock:
            old_definitions, old_instances, old_max_vcpus = self._definitions, self._instances, self._max_vcpus
        definitions: dict[str, ObservedVm] = {}
        instances: dict[tuple[object, ...], ObservedVm] = {}
        max_vcpus: dict[tuple[str, int], int] = {}
        found = []
        for dom in domains:
            try:
                info = dom.info()  # state, and the running instance's memory and vCPUs
                state = info[0]
                reason = dom.state()[1] if state == libvirt.VIR_DOMAIN_PAUSED else 0  # paused, or starting up?
                xml = dom.XMLDesc(_INACTIVE)
                definition = old_definitions.get(xml) or domxml.read_definition(xml)
                definitions[xml] = definition
                live_xml = max_vcpu = None
                if state not in _STOPPED:
                    try:
                        # a running instance's vCPU maximum is fixed until it stops: known per (name, id),
                        # the name being the definition's (one libvirt call fewer than dom.name())
                        instance = (definition.libvirt_name, dom.ID())
                        max_vcpu = old_max_vcpus.get(instance)
                        if max_vcpu is None:
                            max_vcpu = dom.vcpusFlags(_LIVE_MAXIMUM)
                        max_vcpus[instance] = max_vcpu
                        live_xml = dom.XMLDesc(0) if definition.devices else None
                    except libvirt.libvirtError as e:
                        if error_code(e) != libvirt.VIR_ERR_OPERATION_INVALID or dom.isActive():
                            raise
                        state = libvirt.VIR_DOMAIN_SHUTOFF  # stopped between info() and now
            except libvirt.libvirtError as e:
                if error_code(e) == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined between the listing and now
                raise host_error("read domain", e) from e
            if state in _STOPPED:
                found.append(definition)
                continue
            key = (xml, state, reason, info[1], info[2], info[3], max_vcpu, live_xml)
            vm = old_instances.get(key)
            if vm is None:
                vm = domxml.with_state(definition, state, info, live_xml, reason=reason, live_max_vcpu=max_vcpu)
            instances[key] = vm
            found.append(vm)
        with self._lock:
            self._definitions, self._instances, self._max_vcpus = definitions, instances, max_vcpus
        found.sort(key=lambda vm: vm.libvirt_name)
        return tuple(found)


def observe(
    conn: Any, domains: DomainFacts, image_pool: str, *, addresses_of: Collection[str] = ()
) -> Observed:
    """Everything epfiot.host.Host.observe returns, `image_pool` being the pool's name (its volumes are
    read when it exists)."""
    vms = domains.observe_vms(conn)
    wanted = set(addresses_of)
    addresses = {
        vm.libvirt_name: vm_addresses(conn, vm.libvirt_name) for vm in vms if vm.active and vm.libvirt_name in wanted
    }
    pool = image_pool if storage.pool_running(conn, image_pool) else None
    return Observed(
        vms=vms,
        networks=network.observe_networks(conn),
        usb=usb.observe_usb(conn),
        volumes=storage.observe_volumes(conn, pool) if pool else (),
        vm_addresses=addresses,
        image_pool=pool,
    )


def find_domain(conn: Any, name: str) -> Any | None:
    """The domain called `name`, or None when there is none."""
    return lookup_or_none(conn.lookupByName, name, f"look up {name}", libvirt.VIR_ERR_NO_DOMAIN)


def vm_addresses(conn: Any, name: str) -> tuple[str, ...]:
    """IPv4 addresses from DHCP leases, else from the guest agent; () when none is known (or libvirt cannot
    tell: no lease yet, no agent)."""
    try:
        dom = find_domain(conn, name)
        if dom is None or not dom.isActive():
            return ()
    except (HostError, libvirt.libvirtError):
        return ()
    for source in _ADDRESS_SOURCES:
        try:
            interfaces = dom.interfaceAddresses(source, 0) or {}
        except libvirt.libvirtError:
            continue
        found = _ipv4_addresses(interfaces)
        if found:
            return found
    return ()


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
