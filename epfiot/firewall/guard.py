"""What reconcile calls: a plan with the firewall's action (or problem) added, for hosts whose bridges are
on this machine.

Only a local system daemon's networks have their bridges here (`qemu:///system`, no host in the URI): for
the test driver, a remote daemon or a session daemon (user-mode networking, no bridges), the table is
neither read nor written.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from epfiot.model import ObservedNetwork
from epfiot.plan import Plan
from epfiot.plan.steps import DefineNetwork


def applies_to(uri: str) -> bool:
    """True for a libvirt URI whose networks' bridges are interfaces of this machine."""
    parts = urlsplit(uri)
    return parts.scheme in ("qemu", "qemu+unix") and not parts.hostname and parts.path == "/system"


def with_firewall(uri: str, plan: Plan, networks: tuple[ObservedNetwork, ...], *, tidy: bool = False) -> Plan:
    """`plan` with what the firewall needs; `plan` itself for a host epfiot keeps no table for. `tidy`: the
    run has just removed networks (epfiot.firewall.planning)."""
    if not applies_to(uri):
        return plan
    if not tidy and not any(n.ownership is not None for n in networks) and not _defines_networks(plan):
        return plan  # no tenant's network before or after: nothing to keep apart (and no nft to run)
    from epfiot.firewall import nft
    from epfiot.firewall.planning import Facts, plan_firewall
    from epfiot.firewall.ruleset import ABSENT

    found = nft.available()
    running = [n.bridge for n in networks if n.ownership is not None and n.active and n.bridge]
    facts = Facts(found, nft.read() if found else ABSENT, tuple(nft.absent_bridges(running)))
    return plan_firewall(plan, networks, facts, tidy=tidy)


def _defines_networks(plan: Plan) -> bool:
    return any(isinstance(step, DefineNetwork) for action in plan.changes for step in action.steps)
