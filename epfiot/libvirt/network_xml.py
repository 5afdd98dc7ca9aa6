"""The network XML of a managed network: rendering it, and the models it is read back with.

A managed network carries epfiot's ownership element in its <metadata> (the same element as a domain's,
without the seed digest); a network without it is someone else's.

The rendered network (templates/network.xml.j2):
- mode `route` and `nat` give <forward mode='route'|'nat'/>; `isolated` has no <forward> at all;
- the bridge is `spec.bridge` (a short name derived from the identity), with STP on;
- the host takes the network's first address; DHCP hands out `dhcp_start`-`dhcp_end`, by default the upper
  half of the network minus the broadcast address (epfiot.addressing.dhcp_range: the lower half is for fixed
  addresses), and fixed addresses are DHCP host reservations (epfiot.libvirt.network.set_dhcp_host).

Pure: the document only, no connection (epfiot.libvirt.network does what is done on the daemon).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import replace

from epfiot.addressing import dhcp_range
from epfiot.libvirt import metadata
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
