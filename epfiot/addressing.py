"""The addresses of a managed network: which part of it DHCP hands out dynamically.

Pure (no I/O): the planner compares a network's range with it and the libvirt driver renders it, so both
live here, below either of them.
"""

from __future__ import annotations

import ipaddress

from epfiot.model import NetworkSpec

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def dhcp_range(spec: NetworkSpec) -> tuple[str, str]:
    """The dynamic range: as declared, else the upper half of the network (the lower half is for reservations)."""
    if spec.dhcp_start and spec.dhcp_end:
        return spec.dhcp_start, spec.dhcp_end
    net = ipaddress.IPv4Network(spec.cidr)
    hosts = net.num_addresses
    return str(net.network_address + hosts // 2), str(net.broadcast_address - 1)


def within_ranges(network: IpNetwork, ranges: tuple[IpNetwork, ...]) -> bool:
    """Whether `network` lies inside one of `ranges` (no ranges: anywhere)."""
    if not ranges:
        return True
    return any(network.version == r.version and network.subnet_of(r) for r in ranges)  # type: ignore[arg-type]
