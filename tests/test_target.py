"""Targeted plans (--target KIND/OWNER/NAME): end to end on the libvirt test driver (tests/test_cli.py says how
its shared state is held), and the planner's cut on its own."""

from __future__ import annotations

import json
from pathlib import Path

import libvirt
import pytest

from epfiot.model import (
    Desired,
    NetworkMode,
    NetworkSpec,
    Observed,
    ObservedNetwork,
    ObservedVm,
    Ownership,
    PowerState,
    StackSpec,
)
from epfiot.plan import Options, Verb, make_plan
from tests.stacks import vm, write_stack

URI = "test:///default"
WARNING = "Warning: targeted plan (vm/alice/a1): only these resources and what they need are"




def names(conn: libvirt.virConnect) -> set[str]:
    return {d.name() for d in conn.listAllDomains() if d.name().startswith("alice.")}


def networks(conn: libvirt.virConnect) -> set[str]:
    return {n.name() for n in conn.listAllNetworks() if n.name().startswith("alice.")}


def stack(directory: Path) -> Path:
    return write_stack(
        directory, "alice",
        networks=[{"name": "n1", "mode": "isolated", "cidr": "10.151.0.0/24"}, {"name": "n2", "mode": "isolated", "cidr": "10.152.0.0/24"}],
        vms=[vm("a1", network="n1"), vm("a2", network="n2")],
        things=[{"name": "t2", "vm": "a2"}, {"name": "t3", "server": "coap://192.0.2.3:5683"}],
    )  # fmt: skip


def test_a_targeted_plan_and_apply_touch_only_the_target_and_what_it_needs(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    manifest = stack(tmp_path)
    code, out, _ = run("plan", "-f", str(manifest), "--target", "vm/alice/a1")
    assert code == 0, out
    assert "+ network alice/n1: create" in out and "+ vm alice/a1: create" in out
    assert "a2" not in out and "n2" not in out and "t2" not in out
    assert "Plan: 2 to create, 0 to change, 0 to destroy, 0 unchanged." in out
    assert WARNING in out

    code, out, _ = run("plan", "-f", str(manifest), "--target", "vm/alice/a1", "-o", "json")
    assert json.loads(out)["targets"] == ["vm/alice/a1"]

    code, out, err = run("apply", "-f", str(manifest), "--target", "vm/alice/a1")
    assert code == 0, out + err
    assert WARNING in out and "Apply complete: 2 created" in out
    assert names(host) == {"alice.a1"} and networks(host) == {"alice.n1"}

    saved = tmp_path / "t2.plan"
    assert run("plan", "-f", str(manifest), "--target", "thing/alice/t2", "-out", str(saved))[0] == 0
    code, out, err = run("apply", str(saved))
    assert code == 0, out + err
    assert "Warning: targeted plan (thing/alice/t2)" in out
    assert names(host) == {"alice.a1", "alice.a2"} and "t3" not in run("get", "things")[1]
    assert "t2" in run("get", "things")[1]
    run("delete", "-f", str(manifest), "-y", "--force")

    code, out, _ = run("plan", "-f", str(manifest), "--target", "thing/alice/t2")  # its VM and that VM's network
    assert "+ thing alice/t2: create" in out and "+ vm alice/a2: create" in out and "+ network alice/n2: create" in out
    assert "t3" not in out and "vm alice/a1" not in out
    code, out, _ = run("plan", "-f", str(manifest))
    assert "Warning: targeted" not in out and "Plan: 6 to create, 0 to change, 0 to destroy, 0 unchanged." in out


def test_a_target_that_names_nothing_is_a_problem_and_a_malformed_one_a_usage_error(run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    manifest = stack(tmp_path)
    code, out, _ = run("plan", "-f", str(manifest), "--target", "vm/alice/nope")
    assert code == 1
    assert "--target vm/alice/nope: no such resource in the manifests given, nor in their stacks on the host" in out
    for bad in ("vm/alice", "disk/alice/a1", "vm/Alice/a1"):
        with pytest.raises(SystemExit) as exited:
            run("plan", "-f", str(manifest), "--target", bad)
        assert exited.value.code == 2
        assert "argument --target" in capsys.readouterr().err


def test_a_targeted_network_destroy_takes_the_vms_on_it_along() -> None:
    scope = StackSpec("alice", "s")
    owned = lambda name: Ownership("alice", "s", name)  # noqa: E731
    observed = Observed(
        vms=(
            ObservedVm("alice.a1", "u1", owned("a1"), PowerState.SHUTOFF, 1, 1, 64, 64, network="alice.n1"),
            ObservedVm("alice.a2", "u2", owned("a2"), PowerState.SHUTOFF, 1, 1, 64, 64),
        ),
        networks=(ObservedNetwork("alice.n1", owned("n1"), True, NetworkMode.ISOLATED, "10.1.0.0/24"),),
    )
    desired = Desired(stacks=(scope,))
    full = make_plan(desired, observed)
    assert {(a.address, a.verb) for a in full.actions} == {
        ("vm/alice/a1", Verb.DESTROY), ("vm/alice/a2", Verb.DESTROY), ("network/alice/n1", Verb.DESTROY)
    }
    cut = make_plan(desired, observed, Options(targets=frozenset({"network/alice/n1"})))
    assert [a.address for a in cut.actions] == ["vm/alice/a1", "network/alice/n1"]
    assert cut.targets == ("network/alice/n1",)
    unused = NetworkSpec("alice", "s", "n9", NetworkMode.ISOLATED, "10.9.0.0/24")
    assert make_plan(Desired(stacks=(scope,), networks=(unused,)), observed, Options(targets=frozenset({"network/alice/n9"}))).actions[0].verb is Verb.CREATE
