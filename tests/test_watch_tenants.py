"""watch on a host with tenants (epfiot.watch.tenants), on the libvirt test driver: each tenant's manifest
directories reconciled as that tenant, a foreign owner refused at its file and line, the others unaffected."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from epfiot.eventlog import EventLog
from epfiot.hostconfig import ADMIN, Caller, HostConfig, parse_host_config
from epfiot.logs import Log
from epfiot.service import Service
from epfiot.watch.tenants import Reconcilers, members
from tests.stacks import vm, write_stack
from tests.test_watch import TEST_URI, config_for

START, MANIFEST = frozenset({"start"}), frozenset({"manifest"})


@pytest.fixture
def testhost() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(TEST_URI)
    yield conn
    conn.close()


def host_config(tmp_path: Path) -> HostConfig:
    text = (
        f"version: 1\nstate_dir: {tmp_path / 'state'}\ntenants:\n"
        f"  alice: {{users: [alice], manifests: [{tmp_path / 'alice'}]}}\n"
        f"  bob: {{users: [bob], manifests: [{tmp_path / 'bob'}]}}\n"
        "  carol: {users: [carol]}\n"
    )
    return parse_host_config(text, str(tmp_path / "host.yaml"))


def managed(conn: libvirt.virConnect) -> set[str]:
    return {d.name() for d in conn.listAllDomains() if d.name() != "test"}


def test_the_administrators_watch_has_a_member_per_tenant_with_directories(tmp_path: Path) -> None:
    host = host_config(tmp_path)
    own = tmp_path / "own"
    config = config_for(tmp_path, [own, tmp_path / "alice" / "sub"])
    group = members(config, host, ADMIN)
    assert [(m.caller.tenant, m.config.paths, m.scopes_file) for m in group] == [
        ("alice", (tmp_path / "alice",), "watch-scopes.alice.json"),
        ("bob", (tmp_path / "bob",), "watch-scopes.bob.json"),
        (None, (own,), "watch-scopes.json"),  # its -f paths; the one inside alice's directory is hers
    ]
    alice = Caller("alice", "alice")
    assert [(m.caller, m.config.paths) for m in members(config, host, alice)] == [(alice, config.paths)]
    assert [m.caller for m in members(config, HostConfig(), ADMIN)] == [ADMIN]


def test_a_foreign_owner_in_a_tenants_directory_stops_only_that_tenants_load(tmp_path: Path, testhost: libvirt.virConnect) -> None:
    host = host_config(tmp_path)
    for name in ("alice", "bob", "state"):
        (tmp_path / name).mkdir()
    config = config_for(tmp_path, [], prune_after=0.0)
    out = io.StringIO()
    events = EventLog.in_state_dir(config.state_dir)
    watch = Reconcilers(members(config, host, ADMIN), Log(out, "json", verbose=True), events, None)
    try:
        write_stack(tmp_path / "alice", "alice", vms=[vm("a1")])
        write_stack(tmp_path / "bob", "bob", vms=[vm("b1")])
        assert watch.run(START).outcome == "ok"
        assert managed(testhost) == {"alice.a1", "bob.b1"}

        # alice adds a VM, and a document claiming bob's stack with no VMs (it would prune bob's b1);
        # bob adds a VM in the same round.
        write_stack(tmp_path / "alice", "alice", vms=[vm("a1"), vm("a2")])
        claim = write_stack(tmp_path / "alice", "bob", vms=[], filename="claim.yaml")
        write_stack(tmp_path / "bob", "bob", vms=[vm("b1"), vm("b2")])
        watch.run(MANIFEST)
        assert managed(testhost) == {"alice.a1", "bob.b1", "bob.b2"}  # nothing of alice's new load
        problems = [json.loads(line) for line in out.getvalue().splitlines() if '"manifest.problem"' in line]
        assert [(p["subject"], p["path"]) for p in problems] == [(f"{claim}:3", "owner")]
        assert "'bob' is not yours" in problems[0]["message"]

        claim.unlink()
        watch.run(MANIFEST)
        assert managed(testhost) == {"alice.a1", "alice.a2", "bob.b1", "bob.b2"}
    finally:
        watch.close()
        events.close()
    service = Service.from_host_config(host, uri=TEST_URI)
    alices = [e for e in service.events(Caller("alice", "alice"), kind="manifest.invalid")]
    assert len(alices) == 1 and alices[0]["tenant"] == "alice"
    assert service.events(Caller("bob", "bob"), kind="manifest.invalid") == []


def test_watch_starts_before_any_tenant_directory_exists_and_reads_one_made_later(tmp_path: Path, testhost: libvirt.virConnect) -> None:
    import asyncio
    import os
    import signal
    import time
    from dataclasses import replace

    from epfiot.watch.daemon import Watcher
    from epfiot.watch.tenants import watched_paths

    host = host_config(tmp_path)
    (tmp_path / "state").mkdir()
    config = replace(config_for(tmp_path, []), resync=0.2)
    group = members(config, host, ADMIN)
    assert watched_paths(group) == ()
    out = io.StringIO()
    events = EventLog.in_state_dir(config.state_dir)

    async def scenario() -> int:
        task = asyncio.create_task(Watcher(replace(config, paths=()), Log(out, "json", verbose=True), group).run(events, None))
        (tmp_path / "alice").mkdir()
        write_stack(tmp_path / "alice", "alice", vms=[vm("late")])
        deadline = time.monotonic() + 10.0
        while "alice.late" not in managed(testhost):
            assert time.monotonic() < deadline and not task.done(), out.getvalue()
            await asyncio.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(task, 10.0)

    try:
        assert asyncio.run(scenario()) == 0
    finally:
        events.close()
    assert '"watch.failed"' not in out.getvalue()


def test_watch_reads_a_tenants_secrets_only_from_its_own_directories(tmp_path: Path, testhost: libvirt.virConnect) -> None:
    """watch runs as root: a tenant's manifests must not make it read, for the tenant, what the tenant cannot."""
    host = host_config(tmp_path)
    for name in ("alice", "bob", "state", "elsewhere"):
        (tmp_path / name).mkdir()
    secret = tmp_path / "elsewhere" / "root-only"
    secret.write_text("not alice's\n")
    config = config_for(tmp_path, [], prune_after=0.0)
    out = io.StringIO()
    events = EventLog.in_state_dir(config.state_dir)
    watch = Reconcilers(members(config, host, ADMIN), Log(out, "json", verbose=True), events, None)

    def problems() -> list[tuple[str, str]]:
        logged = [json.loads(line) for line in out.getvalue().splitlines()]
        return [(r["subject"], r["message"]) for r in logged if r["event"] == "manifest.problem"]

    def credentials(password: dict[str, str]) -> dict[str, object]:
        return {"credentials": {"user": "alice", "password": password}}

    try:
        lab = write_stack(tmp_path / "alice", "alice", vms=[vm("a1", **credentials({"file": str(secret)})), vm("a2", **credentials({"env": "HOME"}))])
        write_stack(tmp_path / "bob", "bob", vms=[vm("b1")])
        watch.run(START)
        assert managed(testhost) == {"bob.b1"}
        found = problems()
        assert [m for _, m in found] == [
            f"vms[0].credentials.password: password file {secret} is outside the directories it may be read from",
            "vms[1].credentials.password: environment variable HOME is not set",
        ]
        assert all(s.startswith(f"{lab}:") for s, _ in found)

        lab.unlink()
        (tmp_path / "alice" / "evil.yaml").symlink_to(tmp_path / "elsewhere" / "outside.yaml")
        write_stack(tmp_path / "elsewhere", "alice", vms=[vm("a3")], filename="outside.yaml")
        out.truncate(0), out.seek(0)
        watch.run(MANIFEST)
        assert problems() == [(f"{tmp_path / 'alice' / 'evil.yaml'}:0", "a link to a file outside the manifest directories: not read")]
        assert managed(testhost) == {"bob.b1"}
    finally:
        watch.close()
        events.close()

    # Her own files are hers to use.
    from dataclasses import replace

    from epfiot.service import Manifests, load_for

    (tmp_path / "alice" / "evil.yaml").unlink()
    (tmp_path / "alice" / "pw").write_text("hers\n")
    mine = write_stack(tmp_path / "alice", "alice", vms=[vm("a1", **credentials({"file": "pw"}))])
    confined = replace(Manifests.from_paths([tmp_path / "alice"]), env={}, secret_dirs=(tmp_path / "alice",))
    assert load_for(Caller("alice", "alice"), confined).vms[0].credentials is not None
    assert mine.exists()
