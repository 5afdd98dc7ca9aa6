"""Managed libvirt networks: rendering, defining, observing, DHCP host reservations and leases.

A managed network carries epfiot's ownership element in its <metadata> (the same element as a domain's,
without the seed digest); a network without it is someone else's and is never changed or removed here.

The rendered network (templates/network.xml.j2):
- mode `route` and `nat` give <forward mode='route'|'nat'/>; `isolated` has no <forward> at all;
- the bridge is `spec.bridge` (a short name derived from the identity), with STP on;
- the host takes the network's first address; DHCP hands out `dhcp_start`-`dhcp_end`, by default the upper
  half of the network minus the broadcast address (epfiot.plan.dhcp_range: the lower half is for fixed
  addresses), and fixed addresses are DHCP host reservations added with networkUpdate.

Reading back uses the persistent definition (XMLDesc INACTIVE), like domains: that is what the network
comes up with after a restart, and what set_dhcp_host keeps in step with the running dnsmasq.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

import libvirt

from epfiot.addressing import dhcp_range
from epfiot.errors import HostError
from epfiot.libvirt import metadata
from epfiot.libvirt.connection import host_error, host_errors
from epfiot.model import NetworkMode, NetworkSpec, ObservedNetwork

_FORWARD_MODES = {NetworkMode.ROUTE: "route", NetworkMode.NAT: "nat", NetworkMode.ISOLATED: None}
_MODES = {"route": NetworkMode.ROUTE, "nat": NetworkMode.NAT}


def _code(error: Any) -> int:
    return int(error.get_error_code() or 0)


# --- rendering -------------------------------------------------------------------------------------------


def render_network_xml(
    spec: NetworkSpec, *, uuid: str | None = None, hosts: Sequence[Mapping[str, str]] = ()
) -> str:
    """The network XML for `spec`: deterministic, every value escaped. ValueError for a CIDR that leaves
    no room for the host and a DHCP range (smaller than /30).

    `uuid` and `hosts` (DHCP host entries: mac, ip, name) keep those of an existing definition when it is
    defined again; those hosts outside the network are dropped."""
    net = ipaddress.IPv4Network(spec.cidr)  # strict: host bits must be zero
    if net.prefixlen > 30:
        raise ValueError(f"network {spec.libvirt_name}: {spec.cidr} is too small (at most /30)")
    start, end = dhcp_range(spec)
    kept = [
        {"mac": (h.get("mac") or "").lower(), "ip": h.get("ip") or "", "name": h.get("name") or ""}
        for h in hosts
        if h.get("mac") and _inside(h.get("ip") or "", net)
    ]
    text: str = (
        metadata.render(
            "network.xml.j2",
            spec=spec,
            spec_hash=spec.spec_hash(),
            forward=_FORWARD_MODES[spec.mode],
            host_address=str(net.network_address + 1),
            prefix=net.prefixlen,
            dhcp_start=start,
            dhcp_end=end,
            uuid=uuid,
            hosts=kept,
        )
    )
    return text


def _inside(ip: str, net: ipaddress.IPv4Network) -> bool:
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return address in net and address not in (net.network_address, net.broadcast_address)


# --- reading back ----------------------------------------------------------------------------------------


def parse_network(xml: str, *, active: bool) -> ObservedNetwork:
    """What epfiot owns of a network, from its XML."""
    root = ET.fromstring(xml)
    forward = root.find("forward")
    if forward is None:
        mode: NetworkMode | None = NetworkMode.ISOLATED
    else:
        mode = _MODES.get(forward.get("mode") or "nat")  # libvirt's default forward mode is nat
    bridge = root.find("bridge")
    cidr = dhcp_start = dhcp_end = None
    hosts: list[tuple[str, str]] = []
    for ip in root.findall("ip"):
        if (ip.get("family") or "ipv4") != "ipv4" or not ip.get("address"):
            continue
        prefix = ip.get("prefix") or ip.get("netmask")
        try:
            interface = ipaddress.IPv4Interface(
                f"{ip.get('address')}/{prefix}" if prefix else ip.get("address", "")
            )
        except ValueError:
            continue
        cidr = str(interface.network)
        dhcp = ip.find("dhcp")
        if dhcp is not None:
            first = dhcp.find("range")
            if first is not None:
                dhcp_start, dhcp_end = first.get("start"), first.get("end")
            hosts = [
                ((h.get("mac") or "").lower(), h.get("ip") or "")
                for h in dhcp.findall("host")
                if h.get("mac") and h.get("ip")
            ]
        break  # the first IPv4 address is the network epfiot manages
    return ObservedNetwork(
        libvirt_name=(root.findtext("name") or "").strip(),
        ownership=metadata.parse_ownership(root),
        active=active,
        mode=mode,
        cidr=cidr,
        dhcp_start=dhcp_start,
        dhcp_end=dhcp_end,
        dhcp_hosts=tuple(sorted(hosts)),
        bridge=bridge.get("name") if bridge is not None else None,
    )


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
            if _code(e) == libvirt.VIR_ERR_NO_NETWORK:
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
        if _code(e) not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        return str(net.XMLDesc(0))


def _lookup(conn: Any, name: str) -> Any | None:
    try:
        return conn.networkLookupByName(name)
    except libvirt.libvirtError as e:
        if _code(e) == libvirt.VIR_ERR_NO_NETWORK:
            return None
        raise host_error(f"look up network {name}", e) from e


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
        if metadata.parse_ownership(ET.fromstring(current)) is None:
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
        if metadata.parse_ownership(ET.fromstring(xml)) is None:
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
    host = ET.Element("host", {"mac": mac, "ip": ip})
    if name:
        host.set("name", name)
    return ET.tostring(host, encoding="unicode")


def _dhcp_hosts(xml: str) -> list[dict[str, str]]:
    """The <host> entries of the first IPv4 <ip> element, as attribute dicts."""
    for ip in ET.fromstring(xml).findall("ip"):
        if (ip.get("family") or "ipv4") == "ipv4":
            return [dict(h.attrib) for h in ip.findall("dhcp/host")]
    return []


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
        if _code(e) == libvirt.VIR_ERR_NO_SUPPORT:
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
