"""observe -> plan -> apply: the loop that apply, delete and watch share.

Reading (observe), deciding (plan) and acting (apply.execute) stay apart; this module only wires them and
adds what needs all three: USB claims resolved against the devices present, seed digests, and a second
pass for things whose VM got its address during the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from epfiot.apply import Outcome, Progress, execute
from epfiot.errors import PlanError
from epfiot.host import Host
from epfiot.model import (
    Desired,
    Observed,
    ObservedThing,
    ResourceWriteSpec,
    libvirt_name,
)
from epfiot.plan import Kind, Options, Plan, UsbResolution, Verb, make_plan

if TYPE_CHECKING:
    from epfiot.policy import UsbPolicy
    from epfiot.registry import Registry, ThingRecord


@dataclass(frozen=True)
class Result:
    plan: Plan
    outcomes: tuple[Outcome, ...]

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)


def observe(host: Host, registry: Registry | None, desired: Desired) -> Observed:
    wanted = {libvirt_name(t.owner, t.vm) for t in desired.things if t.vm}
    observed = host.observe(addresses_of=wanted)
    things = tuple(observed_thing(r) for r in registry.things()) if registry is not None else ()
    return replace(observed, things=things)


def observed_thing(record: ThingRecord) -> ObservedThing:
    c = record.config
    return ObservedThing(
        name=c.name,
        owner=c.owner,
        stack=c.stack,
        vm=c.vm,
        server_uri=c.server_uri,
        lifetime=c.lifetime,
        binding=c.binding,
        deletes=tuple(c.deletes),
        writes=tuple(ResourceWriteSpec(w.path, w.value) for w in c.writes),
        status=record.status,
    )


def resolve_usb(desired: Desired, observed: Observed, policy: UsbPolicy | None) -> UsbResolution:
    claims = [(vm.owner, vm.name, selector) for vm in desired.vms for selector in vm.devices]
    if not claims:
        return UsbResolution()
    from epfiot import usb

    assignments, problems = usb.resolve_claims(claims, observed.usb, policy)
    return UsbResolution(assignments, tuple(problems))


def plan_changes(desired: Desired, observed: Observed, options: Options, policy: UsbPolicy | None) -> Plan:
    digests = {}
    if any(vm.credentials for vm in desired.vms):
        from epfiot import cloudinit  # only stacks with credentials need it (and its imports)

        digests = {vm.libvirt_name: cloudinit.seed_digest(vm) for vm in desired.vms if vm.credentials}
    return make_plan(desired, observed, options, usb=resolve_usb(desired, observed, policy), seed_digests=digests)


def check(plan: Plan) -> None:
    if plan.problems:
        count = len(plan.problems)
        lines = [f"{count} problem{'s' if count != 1 else ''} in the plan; nothing was changed:"]
        raise PlanError("\n".join(lines + [f"  {p}" for p in plan.problems]))


def apply_plan(
    plan: Plan,
    desired: Desired,
    host: Host,
    registry: Registry | None,
    options: Options,
    policy: UsbPolicy | None,
    *,
    parallel: int,
    progress: Progress | None = None,
) -> Result:
    check(plan)
    outcomes = execute(plan, host, registry=registry, parallel=parallel, progress=progress)
    if desired.things and _vms_came_up(plan.changes):
        # A VM created or started just now may have its address already: register its things with it
        # now rather than at the next apply.
        again = plan_changes(desired, observe(host, registry, desired), options, policy)
        things = Plan(tuple(a for a in again.actions if a.kind is Kind.THING and a.changes_something))
        outcomes += execute(things, host, registry=registry, parallel=1, progress=progress)
    return Result(plan, tuple(outcomes))


def _vms_came_up(actions: Iterable[object]) -> bool:
    return any(getattr(a, "kind", None) is Kind.VM and getattr(a, "verb", None) is not Verb.DESTROY for a in actions)
