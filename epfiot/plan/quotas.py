"""Tenants' quotas: what a tenant would have after the plan (all its stacks on the host, less what this plan
removes, plus what it declares) against Tenant.quotas.

A plan that would take a tenant over a quota is a problem naming the quota, the total and what counts toward
it. A plan that leaves a tenant over a quota lowered since, but adds nothing to that total, is not: the
tenant can come back under it step by step.

What counts: each VM (vms), its vCPUs and memory as defined, its disk (the overlay's size: the larger of its
base image and disk_size; an existing overlay as the pool reports it), each USB device it claims (usb), each
network and each thing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from epfiot.model import Source, VmSpec, is_epfiot_volume, overlay_volume_name
from epfiot.plan.actions import Kind, Verb
from epfiot.plan.context import Context, describes
from epfiot.wording import counted

GIB = 1024**3
SHOWN = 8  # items listed in a problem; the rest are counted

# quota field (of epfiot.hostconfig.Quotas) -> its key in the host configuration's quotas:, what its total counts
QUOTAS = {
    "vms": ("vms", "VM"),
    "vcpus": ("vcpus", "vCPU"),
    "memory_mib": ("memory", "MiB of memory"),
    "disk_gib": ("disk", "GiB of disk"),
    "usb": ("usb", "USB device"),
    "networks": ("networks", "network"),
    "things": ("things", "thing"),
}
COUNTED_KIND = {"networks": Kind.NETWORK, "things": Kind.THING}  # the other quotas count VMs


class Item(NamedTuple):
    """One resource counted toward a tenant's quotas (a named tuple: a shared host has thousands)."""

    kind: Kind
    name: str
    stack: str
    amounts: dict[str, int]
    planned: bool  # declared by this plan (else: on the host and left as it is)
    source: Source | None = None


def check_quotas(ctx: Context) -> None:
    """Records a problem for each quota this plan takes a tenant of its scopes over. Runs last: the plan's
    removals are known."""
    rules = ctx.rules
    if rules is None:
        return
    owners = sorted({owner for owner, _ in ctx.scopes if owner in rules.quotas})
    if not owners:
        return
    capacities = {v.name: v.capacity_bytes for v in ctx.observed.volumes}
    for owner in owners:
        quotas = rules.quotas[owner]
        kinds = {COUNTED_KIND.get(q, Kind.VM) for q in QUOTAS if getattr(quotas, q) is not None}
        if not kinds:
            continue
        before = list(_on_host(ctx, owner, capacities, kinds))
        declared = list(_declared(ctx, owner, capacities, kinds))
        removed = {(a.kind, a.name) for a in ctx.actions if a.owner == owner and a.verb is Verb.DESTROY}
        removed |= {(i.kind, i.name) for i in declared}  # counted as declared
        after = [i for i in before if (i.kind, i.name) not in removed] + declared
        for quota, (key, unit) in QUOTAS.items():
            limit = getattr(quotas, quota)
            if limit is None:
                continue
            total = sum(i.amounts.get(quota, 0) for i in after)
            if total <= limit or total <= sum(i.amounts.get(quota, 0) for i in before):
                continue
            counted = [i for i in after if i.amounts.get(quota, 0)]
            ctx.problems.append(
                f"{_where(ctx, owner, counted)}: tenant {owner} would have {_amount(total, unit)} after this plan, over its "
                f"quota of {_amount(limit, unit, quota=True)} (quotas.{key}); counted: {_listing(counted, quota)}"
            )


def _on_host(ctx: Context, owner: str, capacities: dict[str, int], kinds: set[Kind]) -> Iterable[Item]:
    """What `owner` has on the host now, in all its stacks (of the kinds its quotas count)."""
    for vm in ctx.observed.vms if Kind.VM in kinds else ():
        o = vm.ownership
        if o is None or o.owner != owner or not describes(vm.libvirt_name, o):
            continue
        disk = capacities.get(vm.disk_volume or overlay_volume_name(o.owner, o.name), 0)
        amounts = _vm_amounts(vm.vcpu, vm.memory_mib, _gib(disk), len(vm.devices))
        yield Item(Kind.VM, o.name, o.stack, amounts, False)
    for net in ctx.observed.networks if Kind.NETWORK in kinds else ():
        o = net.ownership
        if o is not None and o.owner == owner and describes(net.libvirt_name, o):
            yield Item(Kind.NETWORK, o.name, o.stack, {"networks": 1}, False)
    for thing in ctx.observed.things if Kind.THING in kinds else ():
        if thing.owner == owner:
            yield Item(Kind.THING, thing.name, thing.stack, {"things": 1}, False)


def _declared(ctx: Context, owner: str, capacities: dict[str, int], kinds: set[Kind]) -> Iterable[Item]:
    """What this plan declares for `owner` (of the kinds its quotas count)."""
    for vm in ctx.desired.vms if Kind.VM in kinds else ():
        if vm.owner == owner:
            amounts = _vm_amounts(vm.vcpu, vm.memory_mib, _disk_gib(vm, capacities), len(vm.devices))
            yield Item(Kind.VM, vm.name, vm.stack, amounts, True, vm.source)
    for net in ctx.desired.networks if Kind.NETWORK in kinds else ():
        if net.owner == owner:
            yield Item(Kind.NETWORK, net.name, net.stack, {"networks": 1}, True, net.source)
    for thing in ctx.desired.things if Kind.THING in kinds else ():
        if thing.owner == owner:
            yield Item(Kind.THING, thing.name, thing.stack, {"things": 1}, True, thing.source)


def _amount(total: int, unit: str, *, quota: bool = False) -> str:
    """"3 VMs", "320 MiB of memory"; as a quota: "2", "256 MiB"."""
    if " of " in unit:
        return f"{total} {unit.split(' of ')[0]}" if quota else f"{total} {unit}"
    return str(total) if quota else counted(total, unit)


def _vm_amounts(vcpus: int, memory_mib: int, disk_gib: int, usb: int) -> dict[str, int]:
    return {"vms": 1, "vcpus": vcpus, "memory_mib": memory_mib, "disk_gib": disk_gib, "usb": usb}


def _disk_gib(spec: VmSpec, capacities: dict[str, int]) -> int:
    """The disk a declared VM has once applied: its overlay as the pool has it (apply keeps an existing one as it
    is), else the one apply makes: as large as its base image, or disk_size when larger."""
    if not spec.image:
        return 0
    existing = capacities.get(overlay_volume_name(spec.owner, spec.name))
    if existing is not None:
        return _gib(existing)
    base = 0 if is_epfiot_volume(spec.image) else capacities.get(spec.image, 0)
    return _gib(max(base, (spec.disk_size_gib or 0) * GIB))


def _gib(size: int) -> int:
    return -(-size // GIB)  # whole GiB, rounded up


def _where(ctx: Context, owner: str, counted: list[Item]) -> str:
    """The first declaration of this plan that counts toward the quota; else the first stack of the owner."""
    sources = sorted(i.source for i in counted if i.source is not None)
    if sources:
        return str(sources[0])
    return str(min(s.source for s in ctx.desired.stacks if s.owner == owner))


def _listing(items: list[Item], quota: str) -> str:
    def label(i: Item) -> str:
        where = f"this plan, stack {i.stack}" if i.planned else f"stack {i.stack}"
        amount = "" if quota in ("vms", "networks", "things") else f" {i.amounts[quota]}"
        return f"{i.kind} {i.name}{amount} ({where})"

    ordered = sorted(items, key=lambda i: (not i.planned, i.stack, i.name))
    text = ", ".join(label(i) for i in ordered[:SHOWN])
    if len(ordered) > SHOWN:
        text += f" and {len(ordered) - SHOWN} more"
    return text
