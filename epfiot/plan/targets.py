"""Targeted plans (--target KIND/OWNER/NAME): the full plan, cut down to the targets and what they need.

The plan is made whole first and then cut, so that a targeted action is the very action a full plan would
have: the same checks, the same problems. What a target brings along:

- a VM: the network it is declared on (created or started before it);
- a thing: its VM, and that VM's network;
- a network that is destroyed or re-created: the VMs whose reservations on it change, and the VMs on it
  that are destroyed (a network is removed only once no VM uses it).

Problems stay whole: a plan with any is not applied, targeted or not. A target that names no resource of
the full plan (none declared, none managed in the manifests' stacks) is a problem too: a typo would
otherwise plan nothing and say nothing.
"""

from __future__ import annotations

import re
from dataclasses import replace

from epfiot.model import NAME_PATTERN, Desired, Observed, libvirt_name
from epfiot.plan import steps as s
from epfiot.plan.actions import Action, Kind, Plan, Verb

KINDS = (Kind.VM.value, Kind.NETWORK.value, Kind.THING.value)
_NAME = re.compile(NAME_PATTERN)


def parse_target(text: str) -> str:
    """'vm/alice/example1' as given, checked; raises ValueError with the reason."""
    parts = text.split("/")
    if len(parts) != 3 or parts[0] not in KINDS:
        raise ValueError(f"{text!r}: a target is KIND/OWNER/NAME, KIND one of {', '.join(KINDS)} (e.g. vm/alice/example1)")
    for part in parts[1:]:
        if not _NAME.match(part):
            raise ValueError(f"{text!r}: {part!r} is not a name (lower-case letters, digits and '-')")
    return text


def restrict(plan: Plan, targets: frozenset[str], desired: Desired, observed: Observed) -> Plan:
    """`plan` with only the actions of `targets` and of what they need (module docstring)."""
    by_address = {a.address: a for a in plan.actions}
    problems = list(plan.problems)
    for target in sorted(targets - by_address.keys()):
        problems.append(f"--target {target}: no such resource in the manifests given, nor in their stacks on the host")
    wanted = _closure(set(targets) & by_address.keys(), by_address, desired, observed)
    actions = tuple(a for a in plan.actions if a.address in wanted)
    return replace(plan, actions=actions, problems=tuple(problems), targets=tuple(sorted(targets)))


def _closure(start: set[str], by_address: dict[str, Action], desired: Desired, observed: Observed) -> set[str]:
    vms = {(v.owner, v.name): v for v in desired.vms}
    things = {(t.owner, t.name): t for t in desired.things}
    observed_network = {vm.libvirt_name: vm.network for vm in observed.vms}
    wanted: set[str] = set()
    todo = list(start)
    while todo:
        address = todo.pop()
        if address in wanted or address not in by_address:
            continue
        wanted.add(address)
        action = by_address[address]
        owner, name = action.owner, action.name
        if action.kind is Kind.VM and (spec := vms.get((owner, name))) is not None and spec.network:
            todo.append(f"{Kind.NETWORK}/{owner}/{spec.network}")
        elif action.kind is Kind.THING and (thing := things.get((owner, name))) is not None and thing.vm:
            todo.append(f"{Kind.VM}/{owner}/{thing.vm}")
        elif action.kind is Kind.NETWORK and action.verb in (Verb.DESTROY, Verb.UPDATE):
            network = libvirt_name(owner, name)
            todo += [a.address for a in by_address.values() if a.kind is Kind.VM and _touches(a, network, observed_network)]
    return wanted


def _touches(vm: Action, network: str, observed_network: dict[str, str | None]) -> bool:
    """Does this VM action change a reservation on `network`, or destroy a VM that is on it?"""
    if vm.verb is Verb.DESTROY and observed_network.get(libvirt_name(vm.owner, vm.name)) == network:
        return True
    return any(isinstance(step, s.SetDhcpHost | s.RemoveDhcpHost) and step.network == network for step in vm.steps)
