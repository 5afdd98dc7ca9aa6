"""Networks against the whole host: a declared network overlaps no network that stays on the host (any
tenant's, any stack's, or one epfiot does not manage), nor another network of the same apply, and a tenant's
network lies inside the ranges the host configuration allows. Two overlapping networks hand out the same
addresses: one's DHCP range covers the other's reservations, and routes to either go astray."""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

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
    staying = Spans(
        (net, span)
        for net in ctx.observed.networks
        if net.libvirt_name not in declared and net.libvirt_name not in removed
        for text in net.address_ranges
        if (span := span_of(text)) is not None
    )
    ranges = ", ".join(str(r) for r in rules.network_ranges)
    earlier: list[tuple[NetworkSpec, Span]] = []
    for spec in sorted(ctx.desired.networks, key=lambda n: (n.source, n.libvirt_name)):
        span = span_of(spec.cidr)
        if span is None:
            continue  # the manifest's own checks report a malformed range
        where = f"{spec.source}: network {spec.name} ({spec.cidr})"
        if not rules.allows_range(spec.owner, span.network):
            ctx.problems.append(f"{where} lies outside the ranges this host gives tenants' networks ({ranges})")
        for other, other_span in staying.overlapping(span):
            ctx.problems.append(f"{where} overlaps {_describe(ctx, other, other_span.network)}: {_WHY}")
        for other_spec, other_span in earlier:
            if span.overlaps(other_span):
                ctx.problems.append(
                    f"{where} overlaps network {other_spec.name} ({other_spec.cidr}) declared at {other_spec.source}: {_WHY}"
                )
        earlier.append((spec, span))


_WHY = "networks on one host must not overlap (their DHCP ranges and reservations would collide)"


class Span(NamedTuple):
    """A network as the integers of its first and last address: compared without ipaddress's overhead, as a
    plan on a shared host compares every declared network with every other on the host."""

    version: int
    first: int
    last: int
    network: IpNetwork

    def overlaps(self, other: Span) -> bool:
        return self.version == other.version and self.first <= other.last and other.first <= self.last


class Spans:
    """The networks' spans, sorted, each with the furthest last address of it and those before it (of its
    version): the spans overlapping one are found by bisection, not by comparing it with every network."""

    def __init__(self, items: Iterable[tuple[ObservedNetwork, Span]]) -> None:
        self.items = sorted(items, key=lambda item: (item[1].version, item[1].first))
        self.keys = [(span.version, span.first) for _, span in self.items]
        self.reach: list[int] = []
        for i, (_, span) in enumerate(self.items):
            before = self.reach[-1] if i and self.items[i - 1][1].version == span.version else -1
            self.reach.append(max(before, span.last))

    def overlapping(self, span: Span) -> list[tuple[ObservedNetwork, Span]]:
        """The networks overlapping `span`, by name."""
        found = []
        i = bisect_right(self.keys, (span.version, span.last)) - 1
        while i >= 0 and self.keys[i][0] == span.version and self.reach[i] >= span.first:
            if self.items[i][1].last >= span.first:
                found.append(self.items[i])
            i -= 1
        return sorted(found, key=lambda item: (item[0].libvirt_name, item[1].first))


@lru_cache(maxsize=4096)
def span_of(text: str) -> Span | None:
    """The span of "10.9.0.0/24" (host bits allowed, as libvirt allows them); None when it is no network.
    Cached: watch plans the same host's networks again and again."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    first = int(network.network_address)
    return Span(network.version, first, first + network.num_addresses - 1, network)


def _describe(ctx: Context, net: ObservedNetwork, subnet: IpNetwork) -> str:
    assert ctx.rules is not None
    owner = net.ownership.owner if net.ownership is not None else None
    text = ctx.rules.describe("network", net.libvirt_name, net.ownership)
    return f"{text}, {subnet}" if ctx.rules.sees(owner) else text
