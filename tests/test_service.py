"""The caller-scoped service (epfiot.service) on the libvirt test driver: a tenant changes and sees only its own.

Each test's host is a private test-driver copy (tests/hosts/testdriver.py: a network o.net, the image pool,
one CP210x), held open and handed to the Service, so that successive calls see one host.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from epfiot.errors import ManifestError
from epfiot.eventlog import EventLog
from epfiot.hostconfig import ADMIN, Caller, HostConfig, parse_host_config
from epfiot.libvirt.host import LibvirtHost
from epfiot.service import Manifests, NotFound, Service
from tests.hosts.testdriver import open_test_driver
from tests.stacks import vm, write_stack

ALICE, BOB = Caller("alice", "alice"), Caller("bob", "bob")


def host_config(state: Path) -> HostConfig:
    text = f"version: 1\nstate_dir: {state}\ntenants:\n  alice: {{users: [alice]}}\n  bob: {{users: [bob]}}\n"
    return parse_host_config(text, str(state.parent / "host.yaml"))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LibvirtHost]:
    with open_test_driver(tmp_path) as opened:
        yield opened


@pytest.fixture
def service(tmp_path: Path, host: LibvirtHost) -> Service:
    return Service.from_host_config(host_config(tmp_path / "state"), uri="test:///unused", host=host)


def domains(host: LibvirtHost) -> set[str]:
    return {v.libvirt_name for v in host.observe().vms}


def apply_stack(service: Service, caller: Caller, directory: Path, owner: str, *names: str) -> None:
    directory.mkdir(exist_ok=True)
    stack = write_stack(directory, owner, vms=[vm(n) for n in names])
    service.apply(caller, Manifests.from_paths([stack]), approve=True)


def test_the_host_configuration_decides_the_state_directory_image_pool_and_usb_policy(tmp_path: Path, host: LibvirtHost) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text('usb:\n  - id: "10c4:ea60"\n    owners: [bob]\n')
    text = f"version: 1\nstate_dir: {tmp_path / 'state'}\nimage_pool: shared\nusb_policy: {policy}\ntenants:\n  alice: {{}}\n"
    config = parse_host_config(text, str(tmp_path / "host.yaml"))
    mine = {"state_dir": tmp_path / "mine", "image_pool": "mine", "image_dir": "/srv/mine", "policy_path": tmp_path / "mine.yaml"}
    service = Service.from_host_config(config, uri="test:///x", host=host, **mine)  # type: ignore[arg-type]
    assert (service.state_dir, service.image_pool, service.policy_path) == (tmp_path / "state", "shared", policy)
    assert service.image_dir == "/var/lib/epfiot/images"  # the default: the host configuration names none
    with_dir = parse_host_config(text + "image_dir: /srv/images\n", str(tmp_path / "host.yaml"))
    assert Service.from_host_config(with_dir, uri="test:///x", **mine).image_dir == "/srv/images"  # type: ignore[arg-type]
    claim = write_stack(tmp_path, "alice", vms=[vm("web", devices=[{"usb": {"id": "10c4:ea60"}}])])
    (problem,) = service.plan(ALICE, Manifests.from_paths([claim]))["problems"]
    assert "10c4:ea60" in problem["message"] and "policy" in problem["message"], problem
    alone = Service.from_host_config(HostConfig(), uri="test:///x", host=host, **mine)  # type: ignore[arg-type]
    assert (alone.state_dir, alone.image_pool, alone.image_dir, alone.policy_path) == (tmp_path / "mine", "mine", "/srv/mine", tmp_path / "mine.yaml")


def test_a_manifest_naming_another_owner_is_refused_whole_with_its_line(service: Service, host: LibvirtHost, tmp_path: Path) -> None:
    apply_stack(service, BOB, tmp_path / "b", "bob", "x")
    mine = write_stack(tmp_path, "alice", vms=[vm("web")], filename="a.yaml")
    theirs = write_stack(tmp_path, "bob", vms=[], filename="b.yaml")  # empty lists: would prune bob's x
    with pytest.raises(ManifestError) as raised:
        service.apply(ALICE, Manifests.from_paths([mine, theirs]), approve=True)
    (problem,) = raised.value.problems
    assert (Path(problem.file).name, problem.line, problem.path) == ("b.yaml", 3, "owner")
    assert "'bob' is not yours" in problem.message
    assert domains(host) == {"bob.x"}  # nothing of alice's load was applied either


def test_a_manifest_given_as_text_is_checked_alike(service: Service) -> None:
    body = "version: 1\nstack: s\nowner: bob\nvms: []\n"
    with pytest.raises(ManifestError, match=r"body.yaml:3: owner: 'bob' is not yours"):
        service.plan(ALICE, Manifests.from_text(body, "body.yaml"))
    plan = service.plan(BOB, Manifests.from_text(body, "body.yaml"))
    assert plan["problems"] == [] and plan["actions"] == []


def test_a_tenant_sees_only_its_own_and_anothers_vm_does_not_exist(service: Service, tmp_path: Path, host: LibvirtHost) -> None:
    apply_stack(service, ALICE, tmp_path / "a", "alice", "web")
    apply_stack(service, BOB, tmp_path / "b", "bob", "x")
    assert [r["owner"] for r in service.vms(ALICE, service.observe())] == ["alice"]
    assert [r["owner"] for r in service.vms(ALICE, service.observe(), "bob")] == []
    assert {r["owner"] for r in service.vms(ADMIN, service.observe())} == {"alice", "bob"}
    assert service.vm(ALICE, service.observe(), "alice", "web")["state"] == "running"
    for ask in (lambda: service.vm(ALICE, service.observe(), "bob", "x"), lambda: service.delete_vm(ALICE, "bob", "x", approve=True)):
        with pytest.raises(NotFound, match=r"^vm bob/x does not exist"):
            ask()
    with pytest.raises(NotFound, match=r"^vm alice/gone does not exist"):
        service.delete_vm(ALICE, "alice", "gone", approve=True)
    assert domains(host) == {"alice.web", "bob.x"}
    service.delete_vm(BOB, "bob", "x", approve=True)
    assert domains(host) == {"alice.web"}


def test_a_plan_that_destroys_needs_approval(service: Service, tmp_path: Path, host: LibvirtHost) -> None:
    from epfiot.approval import NotApproved

    apply_stack(service, ALICE, tmp_path / "a", "alice", "web", "db")
    smaller = write_stack(tmp_path / "a", "alice", vms=[vm("web")])
    with pytest.raises(NotApproved, match=r"destroys 1 resource \(vm alice/db\)"):
        service.apply(ALICE, Manifests.from_paths([smaller]))
    assert domains(host) == {"alice.web", "alice.db"}
    result = service.apply(ALICE, Manifests.from_paths([smaller]), approve=True)
    assert [(o["name"], o["action"], o["ok"]) for o in result["outcomes"]] == [("db", "destroy", True)]


def test_events_are_the_tenants_own(service: Service, tmp_path: Path) -> None:
    apply_stack(service, ALICE, tmp_path / "a", "alice", "web")
    apply_stack(service, BOB, tmp_path / "b", "bob", "x")
    log = EventLog(service.state_dir / "events.db")
    log.record("manifest.invalid", "watch", "bob.yaml:3: broken", tenant="bob")
    log.record("reconcile.failed", "watch", "the host's own")
    log.close()
    subjects = {e["subject"] for e in service.events(ALICE)}
    assert subjects == {"vm/alice/web"}
    assert {e["subject"] for e in service.events(BOB, kind="manifest.invalid")} == {"watch"}
    everything = service.events(ADMIN)
    assert {"vm/alice/web", "vm/bob/x", "watch"} <= {e["subject"] for e in everything}
    assert {e["subject"] for e in service.events(ADMIN, owner="bob", kind="action.")} == {"vm/bob/x"}


def test_a_tenant_sees_which_devices_are_free_and_which_it_holds_not_who_holds_the_rest(service: Service, tmp_path: Path) -> None:
    serial = {"devices": [{"usb": {"id": "10c4:ea60"}}]}
    (tmp_path / "b").mkdir()
    stack = write_stack(tmp_path / "b", "bob", vms=[vm("x", **serial)])
    service.apply(BOB, Manifests.from_paths([stack]), approve=True)
    (row,) = service.usb(ALICE, service.observe())
    assert (row["vendor_id"], row["held_by"]) == ("10c4", "(held)")
    assert [r["held_by"] for r in service.usb(BOB, service.observe())] == ["bob/x"]
    assert [r["held_by"] for r in service.usb(ADMIN, service.observe())] == ["bob/x"]
    service.delete_vm(BOB, "bob", "x", approve=True)
    assert [r["held_by"] for r in service.usb(ALICE, service.observe())] == [None]


def test_a_manifest_given_as_text_reads_neither_files_nor_the_environment(service: Service, tmp_path: Path) -> None:
    """A body comes from someone who may not read what this process can: its secrets are its own."""
    readable = tmp_path / "readable"
    readable.write_text("the server's\n")
    body = (
        "version: 1\nstack: s\nowner: alice\nvms:\n"
        f"  - {{name: a, memory: 64MiB, vcpu: 1, credentials: {{user: u, password: {{file: {readable}}}}}}}\n"
        "  - {name: b, memory: 64MiB, vcpu: 1, credentials: {user: u, password: {env: HOME}}}\n"
    )
    with pytest.raises(ManifestError) as raised:
        service.plan(ALICE, Manifests.from_text(body, "body.yaml"))
    assert [(p.line, p.message) for p in raised.value.problems] == [
        (5, f"password file {readable} is outside the directories it may be read from"),
        (6, "environment variable HOME is not set"),
    ]


def test_a_tenants_password_hashes_with_its_recorded_salt_so_a_second_apply_changes_nothing(tmp_path: Path, service: Service) -> None:
    import json
    from dataclasses import replace

    mine = tmp_path / "alice"
    mine.mkdir()
    (mine / "password").write_text("Zebra-Quokka-417\n")
    stack = write_stack(mine, "alice", vms=[vm("web", credentials={"user": "edge", "password": {"file": "password"}})])
    manifests = replace(Manifests.from_paths([stack]), env={}, secret_dirs=(mine,))  # as watch reads a tenant's
    first = service.apply_run(ALICE, manifests, approve=True)
    assert first.outcomes and not first.failed
    salts = tmp_path / "state" / "salts.json"
    assert list(json.loads(salts.read_text())) == ["alice/alice-stack/web"] and "Zebra" not in salts.read_text()
    again = service.apply_run(ALICE, manifests, approve=True)
    assert not again.plan.changes and not again.outcomes
