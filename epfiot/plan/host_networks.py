"""Networks against the whole host: a declared network overlaps no network that stays on the host (any
tenant's, any stack's, or one epfiot does not manage), nor another network of the same apply, and a tenant's
network lies inside the ranges the host configuration allows. Two overlapping networks hand out the same
addresses: one's DHCP range covers the other's reservations, and routes to either go astray."""

from __future__ import annotations

import ipaddress

from epfiot.addressing import IpNetwork
from epfiot.model import NetworkSpec, ObservedNetwork, libvirt_name
from epfiot.plan.actions import Kind, Verb
from epfiot.plan.context import Context


def check_networks(ctx: Context) -> None:
    """Records a problem for each declared network that overlaps another or lies outside the allowed ranges.
    Runs once the plan's actions are known: a network this plan removes no longer counts."""
    rules = ctx.rules
    if rules is None or not ctx.desired.networks:
        return
    removed = {libvirt_name(a.owner, a.name) for a in ctx.actions if a.kind is Kind.NETWORK and a.verb is Verb.DESTROY}
    declared = {n.libvirt_name for n in ctx.desired.networks}
    staying = [
        (net, subnet)
        for net in sorted(ctx.observed.networks, key=lambda n: n.libvirt_name)
        if net.libvirt_name not in declared and net.libvirt_name not in removed
        for subnet in _parsed(net.address_ranges)
    ]
    ranges = ", ".join(str(r) for r in rules.network_ranges)
    earlier: list[tuple[NetworkSpec, IpNetwork]] = []
    for spec in sorted(ctx.desired.networks, key=lambda n: (n.source, n.libvirt_name)):
        parsed = _parsed((spec.cidr,))
        if not parsed:
            continue  # the manifest's own checks report a malformed range
        subnet = parsed[0]
        where = f"{spec.source}: network {spec.name} ({spec.cidr})"
        if not rules.allows_range(spec.owner, subnet):
            ctx.problems.append(f"{where} lies outside the ranges this host gives tenants' networks ({ranges})")
        for other, other_subnet in staying:
            if _overlap(subnet, other_subnet):
                ctx.problems.append(f"{where} overlaps {_describe(ctx, other, other_subnet)}: {_WHY}")
        for other_spec, other_subnet in earlier:
            if _overlap(subnet, other_subnet):
                ctx.problems.append(
                    f"{where} overlaps network {other_spec.name} ({other_spec.cidr}) declared at {other_spec.source}: {_WHY}"
                )
        earlier.append((spec, subnet))


_WHY = "networks on one host must not overlap (their DHCP ranges and reservations would collide)"


def _describe(ctx: Context, net: ObservedNetwork, subnet: IpNetwork) -> str:
    assert ctx.rules is not None
    owner = net.ownership.owner if net.ownership is not None else None
    text = ctx.rules.describe("network", net.libvirt_name, net.ownership)
    return f"{text}, {subnet}" if ctx.rules.sees(owner) else text


def _overlap(a: IpNetwork, b: IpNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def _parsed(texts: tuple[str, ...]) -> list[IpNetwork]:
    found: list[IpNetwork] = []
    for text in texts:
        try:
            found.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    return found
