"""Managed libvirt networks: rendering, defining, observing, DHCP host reservations and leases.

A managed network carries epfiot's ownership element in its <metadata> (the same element as a domain's,
without the seed digest); a network without it is someone else's and is never changed or removed here.

The rendered network (templates/network.xml.j2):
- mode `route` and `nat` give <forward mode='route'|'nat'/>; `isolated` has no <forward> at all;
- the bridge is `spec.bridge` (a short name derived from the identity), with STP on;
- the host takes the network's first address; DHCP hands out `dhcp_start`-`dhcp_end`, by default the upper
  half of the network minus the broadcast address (epfiot.addressing.dhcp_range: the lower half is for fixed
  addresses), and fixed addresses are DHCP host reservations added with networkUpdate.

Reading back uses the persistent definition (XMLDesc INACTIVE), like domains: that is what the network
comes up with after a restart, and what set_dhcp_host keeps in step with the running dnsmasq.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import libvirt

from epfiot.addressing import dhcp_range
from epfiot.errors import HostError
from epfiot.libvirt import metadata
from epfiot.libvirt.connection import error_code, host_error, host_errors
from epfiot.libvirt.xmlmodel import XmlChild, XmlChildren, XmlObject, text
from epfiot.model import NetworkMode, NetworkSpec, ObservedNetwork, Ownership

_FORWARD_MODES = {NetworkMode.ROUTE: "route", NetworkMode.NAT: "nat", NetworkMode.ISOLATED: None}
_MODES = {"route": NetworkMode.ROUTE, "nat": NetworkMode.NAT}


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


class DhcpHost(XmlObject):
    """<host mac= ip= name=/> of an <ip>'s <dhcp>."""

    mac = text("@mac")
    ip = text("@ip")
    name = text("@name")

    @property
    def attributes(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.element.attrib.items()}


class NetworkIp(XmlObject):
    """An <ip> element: the host's address on the network, and its DHCP service."""

    family = text("@family")
    address = text("@address")
    prefix = text("@prefix")
    netmask = text("@netmask")
    dhcp_start = text("dhcp/range[1]/@start")
    dhcp_end = text("dhcp/range[1]/@end")
    hosts = XmlChildren(DhcpHost, "dhcp/host")

    @property
    def is_ipv4(self) -> bool:
        return (self.family or "ipv4") == "ipv4"

    @property
    def interface(self) -> ipaddress.IPv4Interface | None:
        """The host's IPv4 address with its network; None when it is not one."""
        prefix = self.prefix or self.netmask
        if not self.is_ipv4 or not self.address:
            return None
        try:
            return ipaddress.IPv4Interface(f"{self.address}/{prefix}" if prefix else self.address)
        except ValueError:
            return None

    @property
    def subnet(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The network this element serves, IPv4 or IPv6 (None when it names no valid address)."""
        if not self.address:
            return None
        prefix = self.prefix or self.netmask
        try:
            return ipaddress.ip_interface(f"{self.address}/{prefix}" if prefix else self.address).network
        except ValueError:
            return None


class Forward(XmlObject):
    """<forward mode=/>; a network without one is isolated."""

    mode = text("@mode")


class NetworkXml(XmlObject):
    """What epfiot compares of a network document."""

    TAG = "network"
    NAMESPACES = metadata.NAMESPACES

    name = text("name")
    resource = XmlChild(metadata.Resource, metadata.RESOURCE_PATH)
    forward = XmlChild(Forward, "forward")
    bridge = text("bridge/@name")
    ips = XmlChildren(NetworkIp, "ip")

    @property
    def ownership(self) -> Ownership | None:
        resource = self.resource
        return resource.ownership if resource is not None else None

    @property
    def mode(self) -> NetworkMode | None:
        forward = self.forward
        if forward is None:
            return NetworkMode.ISOLATED
        return _MODES.get(forward.mode or "nat")  # libvirt's default forward mode is nat

    def dhcp_hosts(self) -> list[dict[str, str]]:
        """The <host> entries of the first IPv4 <ip> element, as attribute dicts."""
        first = next((ip for ip in self.ips if ip.is_ipv4), None)
        return [h.attributes for h in first.hosts] if first is not None else []


def parse_network(xml: str, *, active: bool) -> ObservedNetwork:
    """What epfiot owns of a network, from its XML. The first IPv4 address is the network epfiot manages."""
    doc = NetworkXml.from_xml(xml)
    observed = ObservedNetwork(
        libvirt_name=(doc.name or "").strip(),
        ownership=doc.ownership,
        active=active,
        mode=doc.mode,
        cidr=None,
        bridge=doc.bridge,
        subnets=tuple(str(subnet) for ip in doc.ips if (subnet := ip.subnet) is not None),
    )
    for ip in doc.ips:
        interface = ip.interface
        if interface is None:
            continue
        hosts = sorted(((h.mac or "").lower(), h.ip or "") for h in ip.hosts if h.mac and h.ip)
        return replace(
            observed,
            cidr=str(interface.network),
            dhcp_start=ip.dhcp_start,
            dhcp_end=ip.dhcp_end,
            dhcp_hosts=tuple(hosts),
        )
    return observed


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
    try:
        return conn.networkLookupByName(name)
    except libvirt.libvirtError as e:
        if error_code(e) == libvirt.VIR_ERR_NO_NETWORK:
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
