"""Pruning stays inside the files an apply was given: a resource records the manifest file that declared it
(relative to its root), and one whose file still exists but was not given is kept, the plan saying why.

End to end on the libvirt test driver (see tests/test_cli.py for how its shared state is held), plus the
planner and the registry on their own.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import libvirt
import pytest

from epfiot.desired import load_manifests
from epfiot.desired.sources import unread_manifests
from epfiot.model import Desired, Observed, ObservedThing, ObservedVm, Ownership, PowerState, StackSpec
from epfiot.plan import Verb, make_plan
from epfiot.registry import Registry, ThingConfig
from tests.stacks import vm, write_stack

URI = "test:///default"
KEPT_B = "declared in sub/b.yaml, which this apply was not given: kept"




def two_files(root: Path) -> tuple[Path, Path]:
    """One stack over two files: root/a.yaml and root/sub/b.yaml, each with a VM and a thing, b with a network."""
    (root / "sub").mkdir(parents=True)
    a = write_stack(root, "alice", stack="edge", vms=[vm("a1")], filename="a.yaml",
                    things=[{"name": "ta", "server": "coap://192.0.2.1:5683"}])  # fmt: skip
    b = write_stack(root / "sub", "alice", stack="edge", filename="b.yaml",
                    networks=[{"name": "netb", "mode": "route", "cidr": "10.141.0.0/24"}],
                    vms=[vm("b1", network="netb")],
                    things=[{"name": "tb", "server": "coap://192.0.2.2:5683"}])  # fmt: skip
    return a, b


def things(run) -> str:  # type: ignore[no-untyped-def]
    code, out, _ = run("get", "things")
    assert code == 0
    return str(out)


def test_applying_one_file_of_a_stack_keeps_what_its_other_files_declare(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "dir"
    a, _b = two_files(root)
    assert run("apply", "-f", str(root))[0] == 0
    resource = host.lookupByName("alice.b1").XMLDesc()
    assert "manifest='sub/b.yaml'" in resource or 'manifest="sub/b.yaml"' in resource

    code, out, err = run("apply", "-f", str(a))
    assert code == 0, out + err
    assert f"= vm alice/b1: noop ({KEPT_B})" in out
    assert f"= thing alice/tb: noop ({KEPT_B})" in out
    assert f"= network alice/netb: noop ({KEPT_B})" in out
    assert "0 to destroy" in out
    assert {"alice.a1", "alice.b1"} <= {d.name() for d in host.listAllDomains()}
    assert "alice.netb" in host.listNetworks()
    assert "tb" in things(run)


def test_a_file_given_and_its_directory_record_the_same_name(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "dir"
    a, _b = two_files(root)
    by_file = load_manifests([str(a)])
    by_dir = load_manifests([str(root)])
    assert {v.name: v.source.manifest for v in by_file.vms} == {"a1": "a.yaml"}
    assert {v.name: v.source.manifest for v in by_dir.vms} == {"a1": "a.yaml", "b1": "sub/b.yaml"}
    assert by_file.origin.roots == by_dir.origin.roots == (str(root.absolute()),)


def test_a_resource_whose_file_is_gone_is_pruned(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "dir"
    a, b = two_files(root)
    assert run("apply", "-f", str(root))[0] == 0
    b.rename(b.with_name("c.yaml.renamed"))

    code, out, err = run("apply", "-f", str(a), "--force", "-y")
    assert code == 0, out + err
    assert "- vm alice/b1: destroy (no longer declared)" in out
    assert "- thing alice/tb: destroy (no longer declared)" in out
    assert "- network alice/netb: destroy (no longer declared)" in out
    assert "alice.b1" not in {d.name() for d in host.listAllDomains()}
    assert "tb" not in things(run)


def test_stdin_is_rooted_at_its_base_directory(run, tmp_path: Path, host: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "dir"
    a, _b = two_files(root)
    assert run("apply", "-f", str(root))[0] == 0
    monkeypatch.chdir(root)
    monkeypatch.setattr("sys.stdin", io.StringIO(a.read_text()))
    code, out, err = run("apply", "-f", "-")
    assert code == 0, out + err
    assert f"= vm alice/b1: noop ({KEPT_B})" in out
    assert "alice.b1" in {d.name() for d in host.listAllDomains()}


# --- the planner and the registry on their own -----------------------------------------------------------


def _observed_vm(name: str, manifest: str) -> ObservedVm:
    ownership = Ownership("alice", "edge", name, spec_hash="sha256:x", manifest=manifest)
    return ObservedVm(f"alice.{name}", "", ownership, PowerState.SHUTOFF, 1, 1, 64, 64)


def test_the_planner_keeps_only_what_an_unread_file_declared() -> None:
    desired = Desired(stacks=(StackSpec("alice", "edge"),))
    observed = Observed(
        vms=(_observed_vm("old", ""), _observed_vm("kept", "sub/b.yaml"), _observed_vm("gone", "gone.yaml")),
        things=(ObservedThing("t", "alice", "edge", None, None, 300, "U", (), (), manifest="sub/b.yaml"),),
    )
    plan = make_plan(desired, observed, unread_manifests=frozenset({"sub/b.yaml"}))
    verbs = {(a.kind.value, a.name): (a.verb, a.reason) for a in plan.actions}
    assert verbs[("vm", "old")][0] is Verb.DESTROY  # recorded no file: pruned as before
    assert verbs[("vm", "gone")][0] is Verb.DESTROY
    assert verbs[("vm", "kept")] == (Verb.NOOP, KEPT_B)
    assert verbs[("thing", "t")] == (Verb.NOOP, KEPT_B)


def test_unread_manifests_are_those_present_below_a_root_and_not_read(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("")
    (tmp_path / "sub" / "b.yaml").write_text("")
    read = frozenset({str((tmp_path / "a.yaml").resolve())})
    recorded = ["a.yaml", "sub/b.yaml", "gone.yaml", ""]
    assert unread_manifests((str(tmp_path),), read, recorded) == {"sub/b.yaml"}


def test_the_registry_records_the_declaring_file_without_a_new_revision(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    with sqlite3.connect(path) as db:  # a registry of schema version 1, before files were recorded
        from epfiot.registry.schema import SCHEMA_V1

        db.executescript(SCHEMA_V1 + "PRAGMA user_version = 1;")
        db.execute(
            "INSERT INTO things (name, owner, stack, vm, server_uri, lifetime, binding, short_server_id, deletes, "
            "writes, status) VALUES ('old', 'alice', 'edge', NULL, 'coap://192.0.2.1', 300, 'U', 1, '[]', '[]', 'pending')"
        )
    db.close()
    with Registry(path) as registry:
        assert [r.config.manifest for r in registry.things()] == [""]
        config = ThingConfig("t", "alice", "edge", None, "coap://192.0.2.1:5683", manifest="a.yaml")
        registry.upsert(config)
        before = registry.bootstrap_target("t")
        registry.upsert(ThingConfig("t", "alice", "edge", None, "coap://192.0.2.1:5683", manifest="sub/b.yaml"))
        after = registry.bootstrap_target("t")
        assert before is not None and before.record.config.manifest == "a.yaml"
        assert after is not None and after.record.config.manifest == "sub/b.yaml"
        assert after.revision == before.revision
