"""Managed libvirt networks on the daemon: observing, defining, starting, removing, DHCP host reservations
and leases. The document itself (rendering, reading back) is epfiot.libvirt.network_xml.

A network without epfiot's ownership element is someone else's and is never changed or removed here.

Reading back uses the persistent definition (XMLDesc INACTIVE), like domains: that is what the network
comes up with after a restart, and what set_dhcp_host keeps in step with the running dnsmasq.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import libvirt

from epfiot.errors import HostError
from epfiot.libvirt.connection import error_code, host_error, host_errors, lookup_or_none
from epfiot.libvirt.network_xml import NetworkXml, parse_network, render_network_xml
from epfiot.model import NetworkSpec, ObservedNetwork

# --- observing -------------------------------------------------------------------------------------------


def observe_networks(conn: Any) -> tuple[ObservedNetwork, ...]:
    """All networks of the connection, managed or not, sorted by name."""
    with host_errors("list networks"):
        networks = conn.listAllNetworks(0)
    found = []
    for net in networks:
        try:
            active = bool(net.isActive())
            xml = _persistent_xml(net)
        except libvirt.libvirtError as e:
            if error_code(e) == libvirt.VIR_ERR_NO_NETWORK:
                continue  # removed between the listing and now
            raise host_error("read network", e) from e
        found.append(parse_network(xml, active=active))
    found.sort(key=lambda n: n.libvirt_name)
    return tuple(found)


def _persistent_xml(net: Any) -> str:
    """The network's persistent definition; its only XML on drivers without VIR_NETWORK_XML_INACTIVE (the
    test driver keeps one copy)."""
    try:
        return str(net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE))
    except libvirt.libvirtError as e:
        if error_code(e) not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        return str(net.XMLDesc(0))


def _lookup(conn: Any, name: str) -> Any | None:
    return lookup_or_none(
        conn.networkLookupByName, name, f"look up network {name}", libvirt.VIR_ERR_NO_NETWORK
    )


def _require(conn: Any, name: str, operation: str) -> Any:
    net = _lookup(conn, name)
    if net is None:
        raise HostError(f"{operation} {name}: no network by that name")
    return net


# --- lifecycle -------------------------------------------------------------------------------------------


def define_network(conn: Any, spec: NetworkSpec) -> None:
    """Define (or re-define), start and autostart the network. Safe to run again after a crash part-way:
    an existing definition keeps its UUID and DHCP host reservations. A network that is already running
    keeps its running settings until it is restarted (the planner removes a network before defining it
    anew when its settings change). Refuses to replace a network of the same name that epfiot does not
    manage."""
    name = spec.libvirt_name
    existing = _lookup(conn, name)
    uuid: str | None = None
    hosts: list[dict[str, str]] = []
    if existing is not None:
        with host_errors(f"read network {name}"):
            current = _persistent_xml(existing)
            uuid = str(existing.UUIDString())
        if NetworkXml.from_xml(current).ownership is None:
            raise HostError(
                f"define network {name}: a network by that name exists and is not managed by epfiot"
            )
        hosts = _dhcp_hosts(current)
    xml = render_network_xml(spec, uuid=uuid, hosts=hosts)
    with host_errors(f"define network {name}"):
        net = conn.networkDefineXML(xml)
    with host_errors(f"start network {name}"):
        if not net.isActive():
            net.create()
    with host_errors(f"autostart network {name}"):
        if not net.autostart():
            net.setAutostart(1)


def start_network(conn: Any, name: str) -> None:
    net = _require(conn, name, "start network")
    with host_errors(f"start network {name}"):
        if not net.isActive():
            net.create()


def remove_network(conn: Any, name: str) -> None:
    """Stop (if active) and undefine. No error if there is no such network; refuses an unmanaged one."""
    net = _lookup(conn, name)
    if net is None:
        return
    with host_errors(f"remove network {name}"):
        xml = _persistent_xml(net)
        if NetworkXml.from_xml(xml).ownership is None:
            raise HostError(f"remove network {name}: not managed by epfiot; left alone")
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()


# --- DHCP host reservations ------------------------------------------------------------------------------

_SECTION = libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST
_ADD = libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST
_MODIFY = libvirt.VIR_NETWORK_UPDATE_COMMAND_MODIFY
_DELETE = libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE
_LIVE = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
_CONFIG = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG


def _host_xml(mac: str, ip: str, name: str | None) -> str:
    import xml.etree.ElementTree as ET  # only a change writes XML: a no-op apply does not import it

    host = ET.Element("host", {"mac": mac, "ip": ip})
    if name:
        host.set("name", name)
    return ET.tostring(host, encoding="unicode")


def _dhcp_hosts(xml: str) -> list[dict[str, str]]:
    return NetworkXml.from_xml(xml).dhcp_hosts()


def _scopes(net: Any) -> list[tuple[int, list[dict[str, str]]]]:
    """(update flags, current <host> entries) for each copy to change: one call for both the running
    network and its definition when they agree (the usual case), else one call for each."""
    config = _dhcp_hosts(_persistent_xml(net))
    if not net.isActive():
        return [(_CONFIG, config)]
    live = _dhcp_hosts(net.XMLDesc(0))
    if live == config:
        return [(_LIVE | _CONFIG, config)]
    return [(_LIVE, live), (_CONFIG, config)]


def set_dhcp_host(conn: Any, network: str, mac: str, ip: str, hostname: str) -> None:
    """Reserve `ip` for `mac` (named `hostname`), live and persistent when the network runs, persistent when
    it does not. An entry for the same mac, ip or host name is replaced; an identical one is kept."""
    mac = mac.lower()
    net = _require(conn, network, "reserve an address on network")
    wanted = {"mac": mac, "ip": ip, "name": hostname}
    new_xml = _host_xml(mac, ip, hostname)
    with host_errors(f"reserve {ip} for {mac} on network {network}"):
        for flags, hosts in _scopes(net):
            clashing = [
                h
                for h in hosts
                if (h.get("mac") or "").lower() == mac or h.get("ip") == ip or (h.get("name") == hostname)
            ]
            if (
                len(clashing) == 1
                and {k: (v.lower() if k == "mac" else v) for k, v in clashing[0].items()} == wanted
            ):
                continue  # already reserved exactly so
            if len(clashing) == 1 and (clashing[0].get("mac") or "").lower() == mac:
                net.update(_MODIFY, _SECTION, -1, new_xml, flags)  # one atomic change, matched by mac
                continue
            for old in clashing:
                net.update(
                    _DELETE,
                    _SECTION,
                    -1,
                    _host_xml(old.get("mac", ""), old.get("ip", ""), old.get("name")),
                    flags,
                )
            net.update(_ADD, _SECTION, -1, new_xml, flags)


def remove_dhcp_host(conn: Any, network: str, mac: str, ip: str) -> None:
    """Remove the reservation of `ip` for `mac`. No error if there is none, or no such network."""
    mac = mac.lower()
    net = _lookup(conn, network)
    if net is None:
        return
    with host_errors(f"release {ip} for {mac} on network {network}"):
        for flags, hosts in _scopes(net):
            for old in hosts:
                if (old.get("mac") or "").lower() == mac and old.get("ip") == ip:
                    net.update(
                        _DELETE, _SECTION, -1, _host_xml(old.get("mac", ""), ip, old.get("name")), flags
                    )


# --- leases ----------------------------------------------------------------------------------------------


def lease_addresses(conn: Any, network_name: str, mac: str) -> tuple[str, ...]:
    """The IPv4 addresses dnsmasq has leased to `mac` on the network, sorted. () when there is no such
    network or the driver keeps no leases (the test driver has no DHCPLeases)."""
    net = _lookup(conn, network_name)
    if net is None:
        return ()
    try:
        leases = net.DHCPLeases(mac.lower(), 0) or []
    except libvirt.libvirtError as e:
        if error_code(e) == libvirt.VIR_ERR_NO_SUPPORT:
            return ()
        raise host_error(f"read DHCP leases of network {network_name}", e) from e
    found: set[ipaddress.IPv4Address] = set()
    for lease in leases:
        if lease.get("type") != libvirt.VIR_IP_ADDR_TYPE_IPV4:
            continue
        try:
            found.add(ipaddress.IPv4Address(lease.get("ipaddr", "")))
        except ValueError:
            continue
    return tuple(str(a) for a in sorted(found))
