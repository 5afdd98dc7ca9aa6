"""The firewall's table (epfiot.firewall): its rendering, its reading back through the real nft (in a
network namespace of the test's own, made by `unshare -n` and gone with it), and the planning of its action.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from epfiot.desired import load_manifest_text
from epfiot.firewall import guard, nft
from epfiot.firewall.planning import NAME, Facts, plan_firewall, target
from epfiot.firewall.ruleset import (
    ABSENT,
    Installed,
    Isolation,
    managed_bridges,
    parse_listing,
    removal,
    render,
)
from epfiot.model import NetworkMode, NetworkSpec, Observed, ObservedNetwork, Ownership
from epfiot.plan import Kind, Phase, Plan, Verb, make_plan
from epfiot.plan import steps as s

TWO = Isolation.of({"epfa1": "alice", "epfa2": "alice", "epfb1": "bob"})


def in_own_netns(script: str, *then: str) -> subprocess.CompletedProcess[str]:
    """Run `nft -f -` with `script` in a new, empty network namespace, then the shell commands `then`."""
    command = " && ".join(["nft -f -", *then])
    return subprocess.run(["unshare", "-n", "sh", "-c", command], input=script, capture_output=True, text=True, check=False)


def listed(script: str, *more: str) -> Installed:
    done = in_own_netns(script, *more, "nft -j list table inet epfiot")
    assert done.returncode == 0, done.stderr
    return parse_listing(done.stdout)


def network(owner: str, name: str, *, bridge: str | None = None, active: bool = True) -> ObservedNetwork:
    spec = NetworkSpec(owner, "edge", name, NetworkMode.ROUTE, "10.130.0.0/24")
    return ObservedNetwork(
        spec.libvirt_name, Ownership(owner, "edge", name), active, NetworkMode.ROUTE, spec.cidr,
        bridge=bridge or spec.bridge,
    )


# --- the table -------------------------------------------------------------------------------------------


def test_each_tenant_gets_one_rule_dropping_what_goes_to_another_tenants_bridge() -> None:
    text = render(TWO)
    assert text.startswith("table inet epfiot\ndelete table inet epfiot\ntable inet epfiot {")
    assert 'set tenant_0 {\n\t\ttype ifname\n\t\tcomment "alice"\n\t\telements = { "epfa1", "epfa2" }' in text
    assert 'elements = { "epfa1", "epfa2", "epfb1" }' in text  # the managed set
    assert "type filter hook forward priority filter - 10; policy accept;" in text
    rules = [line.strip() for line in text.splitlines() if "drop" in line]
    assert rules == [
        'iifname @tenant_0 oifname @managed oifname != @tenant_0 counter drop comment "alice"',
        'iifname @tenant_1 oifname @managed oifname != @tenant_1 counter drop comment "bob"',
    ]
    assert render(Isolation.of(dict(reversed(TWO.bridges.items())))) == text  # order of input is irrelevant


@pytest.mark.parametrize("isolation", [TWO, Isolation(), Isolation.of({"epfc1": "carol"})], ids=["two", "none", "one"])
def test_what_nft_lists_reads_back_as_what_was_written(isolation: Isolation) -> None:
    assert listed(render(isolation)) == Installed(True, isolation)


def test_writing_twice_replaces_the_table_whole(tmp_path: Path) -> None:
    carol = Isolation.of({"epfc1": "carol"})
    (tmp_path / "carol.nft").write_text(render(carol))
    assert listed(render(TWO), f"nft -f {tmp_path / 'carol.nft'}") == Installed(True, carol)
    done = in_own_netns(render(TWO) + removal(), "nft list ruleset")
    assert done.returncode == 0 and "epfiot" not in done.stdout, done


@pytest.mark.parametrize(
    "edit",
    [
        "nft add rule inet epfiot forward accept",
        "nft flush chain inet epfiot forward",
        "nft add element inet epfiot managed '{ eth0 }'",
        "nft delete element inet epfiot tenant_1 '{ epfb1 }'",
        "nft add set inet epfiot extra '{ type ifname; }'",
    ],
)
def test_a_table_changed_by_hand_is_not_taken_for_epfiots(edit: str) -> None:
    assert listed(render(TWO), edit) == Installed(True, None)


def test_no_table_and_garbage_read_as_such() -> None:
    assert parse_listing("not json") == Installed(True, None)
    assert Installed(False) == ABSENT and not ABSENT.intact


@pytest.mark.parametrize("bridges", [{"bad name": "alice"}, {'a"b': "alice"}, {"epfa1": 'x" drop'}, {"a" * 16: "alice"}])
def test_names_the_table_cannot_hold_are_refused(bridges: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="cannot be named"):
        Isolation.of(bridges)


def test_coverage_and_description() -> None:
    assert TWO.covers(Isolation.of({"epfa1": "alice"})) and not TWO.covers(Isolation.of({"epfa1": "bob"}))
    assert TWO.describe() == "2 tenants, 3 bridges" and Isolation().describe() == "0 tenants, 0 bridges"


def test_only_managed_networks_with_a_bridge_count() -> None:
    unmanaged = replace(network("x", "default"), ownership=None, libvirt_name="default")
    nets = [network("alice", "lan", bridge="epfa1"), unmanaged, network("bob", "lan", bridge="epfb1")]
    assert managed_bridges(nets) == {"epfa1": "alice", "epfb1": "bob"}
    assert managed_bridges(nets, leaving={"bob.lan"}) == {"epfa1": "alice"}


# --- planning --------------------------------------------------------------------------------------------

STACK = """
version: 1
stack: edge
owner: {owner}
networks:
{networks}
"""


def plan_for(owner: str, names: list[str], observed: tuple[ObservedNetwork, ...]) -> Plan:
    networks = "".join(f"  - {{name: {n}, mode: route, cidr: 10.13{i}.0.0/24}}\n" for i, n in enumerate(names)) or "  []"
    desired = load_manifest_text(STACK.format(owner=owner, networks=networks))
    return make_plan(desired, Observed(networks=observed))


def facts(isolation: Isolation | None, *, present: bool = True, nft: bool = True) -> Facts:
    return Facts(nft, Installed(present, isolation) if present else ABSENT)


def test_a_new_network_of_a_second_tenant_is_named_before_it_is_defined() -> None:
    alice = network("alice", "lan")
    plan = plan_for("bob", ["lan"], (alice,))
    bob_bridge = NetworkSpec("bob", "edge", "lan", NetworkMode.ROUTE, "10.130.0.0/24").bridge
    installed = Isolation.of({alice.bridge or "": "alice"})
    planned = plan_firewall(plan, (alice,), facts(installed))
    [action] = [a for a in planned.actions if a.kind is Kind.FIREWALL]
    assert (action.name, action.verb, action.phase) == (NAME, Verb.UPDATE, Phase.FIREWALL)
    assert action.reason == f"the table does not name the bridge {bob_bridge}"
    assert action.steps == (s.SyncFirewall(((bob_bridge, "bob"),)),)
    assert [(c.field, c.before, c.after) for c in action.changes] == [
        ("tenants", "1 tenant, 1 bridge", "2 tenants, 2 bridges")
    ]
    order = [a.phase for a in planned.changes]
    assert order == sorted(order) and order.index(Phase.FIREWALL) < order.index(Phase.NETWORKS)


def test_a_table_that_says_it_all_needs_no_action() -> None:
    alice, bob = network("alice", "lan"), network("bob", "lan")
    plan = plan_for("bob", ["lan"], (alice, bob))
    installed = Isolation.of(managed_bridges((alice, bob)))
    assert plan_firewall(plan, (alice, bob), facts(installed)) == plan
    # A stale entry, of a network removed behind epfiot's back, is harmless: no reason to rewrite.
    stale = Isolation.of({**installed.bridges, "epfgone": "carol"})
    assert plan_firewall(plan, (alice, bob), facts(stale)) == plan
    # ... until a run removes networks: then the table is tidied.
    [action] = [a for a in plan_firewall(plan, (alice, bob), facts(stale), tidy=True).actions if a.kind is Kind.FIREWALL]
    assert action.reason == "it names networks that are removed"


def test_a_missing_or_foreign_table_is_written() -> None:
    alice = network("alice", "lan")
    plan = plan_for("alice", ["lan"], (alice,))
    [created] = [a for a in plan_firewall(plan, (alice,), facts(None, present=False)).actions if a.kind is Kind.FIREWALL]
    assert created.verb is Verb.CREATE and created.changes[0].before is None
    [rewritten] = [a for a in plan_firewall(plan, (alice,), facts(None)).actions if a.kind is Kind.FIREWALL]
    assert rewritten.reason == "the table is not as epfiot writes it"
    # No managed network and no table: nothing to keep apart, nothing written.
    empty = plan_for("alice", [], ())
    assert plan_firewall(empty, (), facts(None, present=False)) == empty


def test_removing_a_tenants_network_drops_its_bridge() -> None:
    alice, bob = network("alice", "lan"), network("bob", "lan")
    plan = plan_for("bob", [], (alice, bob))
    assert [a.verb for a in plan.changes] == [Verb.DESTROY]
    wanted = target((alice, bob), plan)
    assert wanted.isolation == Isolation.of({alice.bridge or "": "alice"}) and wanted.removes and not wanted.adding
    planned = plan_firewall(plan, (alice, bob), facts(Isolation.of(managed_bridges((alice, bob)))))
    [action] = [a for a in planned.actions if a.kind is Kind.FIREWALL]
    assert action.changes[0].after == "1 tenant, 1 bridge"
    # After bob's network is gone, not before: rewritten then from the networks there are, once.
    assert action.phase is Phase.TIDY_FIREWALL
    order = [a.phase for a in planned.changes]
    assert order == sorted(order) and order.index(Phase.REMOVE_NETWORKS) < order.index(Phase.TIDY_FIREWALL)


def test_without_nft_a_second_tenant_is_a_problem_and_one_tenant_is_not() -> None:
    alice = network("alice", "lan")
    two = plan_for("bob", ["lan"], (alice,))
    assert plan_firewall(two, (alice,), facts(None, present=False, nft=False)).problems == (
        "firewall: 2 tenants have networks on this host, but nft is not installed, so their VMs could "
        "reach each other: install nftables (scripts/setup.sh)",
    )
    one = plan_for("alice", ["lan"], (alice,))
    assert plan_firewall(one, (alice,), facts(None, present=False, nft=False)) == one


def test_bridges_outside_this_namespace_are_a_problem() -> None:
    alice = network("alice", "lan")
    plan = plan_for("alice", ["lan"], (alice,))
    checked = plan_firewall(plan, (alice,), Facts(True, ABSENT, (alice.bridge or "",)))
    [problem] = checked.problems
    assert problem.startswith(f"firewall: the bridges {alice.bridge} of running networks are not in this network namespace")


def test_a_name_the_table_cannot_hold_is_a_problem() -> None:
    odd = network("alice", "lan", bridge="br 0")
    plan = plan_for("alice", ["lan"], (odd,))
    assert plan_firewall(plan, (odd,), facts(None)).problems == ("firewall: bridge name 'br 0' cannot be named in an nftables rule",)


@pytest.mark.parametrize(
    ("uri", "kept"),
    [
        ("qemu:///system", True),
        ("qemu+unix:///system", True),
        ("qemu:///session", False),
        ("qemu+ssh://edge/system", False),
        ("test:///default", False),
    ],
)
def test_the_table_is_kept_only_for_a_local_system_daemon(uri: str, kept: bool) -> None:
    assert guard.applies_to(uri) is kept
    alice = network("alice", "lan")
    plan = plan_for("alice", ["lan"], (alice,))
    if not kept:  # neither read nor written: nothing is added, whatever nft says
        assert guard.with_firewall(uri, plan, (alice,)) is plan


def test_without_nft_on_the_path_a_local_daemons_second_tenant_is_a_problem(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no nft
    alice = network("alice", "lan", active=False)
    plan = plan_for("bob", ["lan"], (alice,))
    [problem] = guard.with_firewall("qemu:///system", plan, (alice,)).problems
    assert problem.startswith("firewall: 2 tenants have networks on this host, but nft is not installed")


def test_bridges_are_looked_up_in_this_processs_network_namespace() -> None:
    assert nft.absent_bridges(["lo", "epfnosuchbr0"]) == ["epfnosuchbr0"]
