"""Whether a plan needs the table `inet epfiot` rewritten: a pure function of the plan, the networks
observed and what was found of the table.

Once the plan is applied, the table is to say which bridge belongs to which tenant: the managed networks
observed, plus those the plan defines, minus those it removes. It needs rewriting when it is missing (and
there is a managed network), when it is not as epfiot writes it, when it lacks a bridge (or names another
owner for one), or when the plan removes networks the table names. A stale bridge whose network was removed
behind epfiot's back is no reason by itself: such an entry is harmless (see epfiot.firewall.ruleset), and
it goes at the next rewrite.

The action names no tenant (only counts and bridges, whose names are digests): every tenant's plan may
show it. When the table lacks a bridge, it runs in Phase.FIREWALL, before the networks are defined: the
table names the new bridges before they exist, so that no observer ever sees a tenant's bridge the table
does not name. Networks the plan removes stay in it until they are gone: a rewrite that only drops their
bridges runs in Phase.TIDY_FIREWALL, after them (the table is written from the networks there are then).
When a plan both adds and removes, the rewrite before the networks keeps the bridges still running, and the
run plans again with `tidy` once they are gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from epfiot.firewall.ruleset import FAMILY, TABLE, Installed, Isolation, managed_bridges
from epfiot.model import ObservedNetwork
from epfiot.plan import Action, Change, Kind, Phase, Plan, Verb
from epfiot.plan import steps as s

NAME = f"{FAMILY} {TABLE}"


@dataclass(frozen=True)
class Facts:
    """What was found on this host: whether nft is installed, the table, and the bridges of running managed
    networks that are not interfaces of this process's network namespace."""

    nft: bool
    installed: Installed
    absent_bridges: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """The table once the plan is applied, the bridges the plan adds (bridge, owner), and whether it
    removes a managed network."""

    isolation: Isolation
    adding: tuple[tuple[str, str], ...] = ()
    removes: bool = False


def target(networks: Iterable[ObservedNetwork], plan: Plan) -> Target:
    """Which bridge is whose once `plan` is applied. ValueError for a name the table cannot hold."""
    networks = tuple(networks)
    bridges = managed_bridges(networks)
    by_name = {n.libvirt_name: n.bridge for n in networks if n.ownership is not None and n.bridge}
    adding: dict[str, str] = {}
    removed: set[str] = set()
    for action in plan.changes:
        for step in action.steps:
            if isinstance(step, s.DefineNetwork):
                adding[step.spec.bridge] = step.spec.owner
                removed.discard(step.spec.libvirt_name)
            elif isinstance(step, s.RemoveNetwork) and step.name in by_name:
                removed.add(step.name)
    for name in removed:
        bridges.pop(by_name[name], None)
    return Target(Isolation.of({**bridges, **adding}), tuple(sorted(adding.items())), bool(removed))


def plan_firewall(plan: Plan, networks: tuple[ObservedNetwork, ...], facts: Facts, *, tidy: bool = False) -> Plan:
    """`plan` with the firewall's action added when the table needs rewriting, or with a problem when it
    cannot be kept: no nft while two tenants have networks, or bridges in another network namespace.
    `tidy`: the run has just removed networks, which the table may still name."""
    try:
        wanted = target(networks, plan)
    except ValueError as error:
        return replace(plan, problems=(*plan.problems, f"firewall: {error}"))
    problems: list[str] = []
    if facts.absent_bridges:
        problems.append(
            f"firewall: the bridges {', '.join(facts.absent_bridges)} of running networks are not in this "
            "network namespace, so rules written here would not see their traffic: run epfiot in the "
            "libvirt daemon's network namespace (scripts/in-netns.sh)"
        )
    if not facts.nft:
        if len(wanted.isolation.tenants) > 1:
            problems.append(
                f"firewall: {len(wanted.isolation.tenants)} tenants have networks on this host, but nft is not "
                "installed, so their VMs could reach each other: install nftables (scripts/setup.sh)"
            )
        return replace(plan, problems=(*plan.problems, *problems))
    action = firewall_action(wanted, facts.installed, tidy=tidy)
    actions = plan.actions if action is None else (*plan.actions, action)
    return Plan.ordered(list(actions), [*plan.problems, *problems])


def firewall_action(wanted: Target, installed: Installed, *, tidy: bool = False) -> Action | None:
    """The action that makes the table say `wanted`, or None when it does already (or need not exist)."""
    current, final = installed.isolation, wanted.isolation
    phase = Phase.FIREWALL
    if not installed.present:
        if not final.tenants:
            return None
        reason, verb = "tenants' networks exist and the table is missing", Verb.CREATE
    elif current is None:
        reason, verb = "the table is not as epfiot writes it", Verb.UPDATE
    elif not current.covers(final):
        missing = sorted(b for b, owner in final.bridges.items() if current.bridges.get(b) != owner)
        reason, verb = f"the table does not name the bridge{'s' if len(missing) > 1 else ''} {', '.join(missing)}", Verb.UPDATE
    elif (wanted.removes or tidy) and current != final:
        reason, verb = "it names networks that are removed", Verb.UPDATE
        phase = Phase.TIDY_FIREWALL
    else:
        return None
    # Counts, not names: every tenant's plan shows this action, and tenants' names are not for each other.
    before = current.describe() if current is not None else None
    changes = (Change("tenants", before, final.describe()),)
    steps = (s.SyncFirewall(wanted.adding),)
    return Action(Kind.FIREWALL, "", "", NAME, verb, reason, phase, changes, steps)
