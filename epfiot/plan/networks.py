"""Networks: created, re-created when their settings differ, started, and pruned once no VM uses them."""

from __future__ import annotations

from epfiot.addressing import dhcp_range
from epfiot.model import NetworkSpec, ObservedNetwork
from epfiot.plan import steps as s
from epfiot.plan.actions import Action, Change, Kind, Phase, Verb
from epfiot.plan.context import Context, describes, network_of


def plan_networks(ctx: Context) -> set[str]:
    """Plan desired networks; returns the libvirt names of networks that will be re-created."""
    replaced: set[str] = set()
    for spec in sorted(ctx.desired.networks, key=lambda n: n.libvirt_name):
        observed = ctx.networks.get(spec.libvirt_name)
        if observed is None:
            ctx.actions.append(_action(spec, Verb.CREATE, "declared, does not exist", network_changes(spec, None), (s.DefineNetwork(spec),)))
            continue
        if ctx.claimed_elsewhere("network", spec.libvirt_name, observed.ownership, spec.stack, spec.source):
            continue
        changes = network_changes(spec, observed)
        if changes:
            replaced.add(spec.libvirt_name)
            reason = "network settings differ: re-created (running VMs on it reconnect at their next start)"
            ctx.actions.append(_action(spec, Verb.UPDATE, reason, changes, (s.RemoveNetwork(spec.libvirt_name), s.DefineNetwork(spec))))
        elif not observed.active:
            changes = (Change("active", False, True),)
            ctx.actions.append(_action(spec, Verb.UPDATE, "network is stopped", changes, (s.StartNetwork(spec.libvirt_name),)))
        else:
            ctx.actions.append(_action(spec, Verb.NOOP, "network is up to date"))
    return replaced


def _action(
    spec: NetworkSpec, verb: Verb, reason: str, changes: tuple[Change, ...] = (), steps: tuple[s.Step, ...] = ()
) -> Action:
    return Action(Kind.NETWORK, spec.owner, spec.stack, spec.name, verb, reason, Phase.NETWORKS, changes, steps)


def plan_network_pruning(ctx: Context, pruned_vms: set[str], only: set[str] | None = None) -> None:
    """Remove managed networks no longer declared (or, for a deletion, those in `only`), unless a VM that
    stays still uses them."""
    desired = {n.libvirt_name for n in ctx.desired.networks}
    for net in sorted(ctx.observed.networks, key=lambda n: n.libvirt_name):
        ownership = net.ownership
        if ownership is None or not describes(net.libvirt_name, ownership) or not ctx.in_scope(ownership):
            continue
        if net.libvirt_name in desired:
            continue
        if only is not None and net.libvirt_name not in only:
            continue
        users = sorted(
            vm.libvirt_name
            for vm in ctx.observed.vms
            if vm.network == net.libvirt_name and vm.libvirt_name not in pruned_vms
        )
        users += sorted(v.libvirt_name for v in ctx.desired.vms if network_of(v) == net.libvirt_name)
        owner, stack, name = ownership.owner, ownership.stack, ownership.name
        if only is None and ctx.kept_unread(Kind.NETWORK, owner, stack, name, ownership.manifest, Phase.REMOVE_NETWORKS):
            continue
        if users:
            reason = f"no longer declared, but still used by {', '.join(sorted(set(users)))}: not removed"
            ctx.actions.append(Action(Kind.NETWORK, owner, stack, name, Verb.WAIT, reason, Phase.REMOVE_NETWORKS))
            continue
        reason = "no longer declared" if only is None else "declared in the manifests given to delete"
        changes = (Change("network", net.cidr, None),)
        steps = (s.RemoveNetwork(net.libvirt_name),)
        ctx.actions.append(Action(Kind.NETWORK, owner, stack, name, Verb.DESTROY, reason, Phase.REMOVE_NETWORKS, changes, steps))


def network_changes(spec: NetworkSpec, net: ObservedNetwork | None) -> tuple[Change, ...]:
    if net is None:
        return (
            Change("mode", None, spec.mode.value),
            Change("cidr", None, spec.cidr),
        )
    start, end = dhcp_range(spec)
    changes = []
    if net.mode != spec.mode:
        changes.append(Change("mode", net.mode.value if net.mode else None, spec.mode.value))
    if net.cidr != spec.cidr:
        changes.append(Change("cidr", net.cidr, spec.cidr))
    if (net.dhcp_start, net.dhcp_end) != (start, end):
        changes.append(Change("dhcp", f"{net.dhcp_start}-{net.dhcp_end}", f"{start}-{end}"))
    return tuple(changes)
