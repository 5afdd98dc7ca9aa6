"""epfiot watch on the libvirt test driver: the reconciler (the last valid manifests, pruning, failed actions
requeued by the kind of their error) and the asyncio loop in process. Its pure parts are tested in
test_watch_schedule.py, the daemon as a subprocess on the real libvirt daemon in test_watch_daemon.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt
import pytest
from aiocoap.numbers.codes import Code

from epfiot.errors import HostError, PermanentError
from epfiot.eventlog import EventLog
from epfiot.libvirt.host import LibvirtHost
from epfiot.logs import Log
from epfiot.registry import Registry
from epfiot.watch.config import WatchConfig
from epfiot.watch.daemon import Watcher
from epfiot.watch.reconciler import Reconciler
from epfiot.watch.scopes import SCOPES_FILE
from tests.faults import FaultyHost
from tests.lwm2m_client import Lwm2mTestClient
from tests.stacks import vm, write_stack

# --- the reconciler, on the libvirt test driver -------------------------------------------------------------

TEST_URI = "test:///default"


@pytest.fixture
def testhost() -> Iterator[libvirt.virConnect]:
    """test:///default lives as long as one connection to it is open: this one, for the test's duration."""
    conn = libvirt.open(TEST_URI)
    yield conn
    conn.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def config_for(tmp_path: Path, paths: list[Path], *, uri: str = TEST_URI, prune_after: float = 5.0) -> WatchConfig:
    return WatchConfig(
        paths=tuple(paths),
        uri=uri,
        state_dir=tmp_path / "state",
        image_pool="epfiot-images",
        image_dir=str(tmp_path / "images"),
        virt_type=None,
        policy=None,
        resync=60.0,
        debounce=0.05,
        prune_after=prune_after,
        parallel=4,
        serve=False,
        bind="::",
        port=0,
        log_format="json",
        verbose=True,
    )


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def names(conn: libvirt.virConnect) -> set[str]:
    return {d.name() for d in conn.listAllDomains()}


def test_reconciler_keeps_the_last_valid_manifests_and_prunes_stable_removals(tmp_path: Path, testhost: libvirt.virConnect) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    clock = Clock()
    out = io.StringIO()
    config = config_for(tmp_path, [stacks])
    (tmp_path / "state").mkdir()
    events = EventLog.in_state_dir(config.state_dir)
    rec = Reconciler(config, Log(out, "json", verbose=True), events, None, clock=clock)
    try:
        main = write_stack(stacks, "alice", vms=[vm("one"), vm("two")])
        extra = write_stack(stacks, "alice", stack="extra", vms=[vm("three")])
        assert rec.run(frozenset({"start"})).outcome == "ok"
        assert {"alice.one", "alice.two", "alice.three", "test"} <= names(testhost)
        report = rec.run(frozenset({"event"}))
        assert report.outcome == "ok" and report.managed == {"alice.one", "alice.two", "alice.three"}

        # Broken YAML: every problem logged with file:line, nothing changes, drift is still corrected.
        main.write_text("version: 1\nstack: alice-stack\nowner: alice\nvms: [\n")
        out.truncate(0), out.seek(0)
        assert rec.run(frozenset({"manifest"})).outcome == "ok"
        logged = records(out)
        problems = [r for r in logged if r["event"] == "manifest.problem"]
        assert problems and problems[0]["subject"].startswith(f"{main}:")
        assert not [r for r in logged if r["event"].startswith("action.")]
        testhost.lookupByName("alice.one").destroy()
        assert rec.run(frozenset({"event"})).outcome == "drift"
        assert testhost.lookupByName("alice.one").isActive()
        assert {"alice.one", "alice.two", "alice.three"} <= names(testhost)

        # A VM removed from its stack: kept while the removal is recent, pruned once it is stable.
        clock.now = 10.0
        write_stack(stacks, "alice", vms=[vm("one")])
        report = rec.run(frozenset({"manifest"}))
        assert report.outcome == "ok" and report.prune_due == 15.0
        assert "alice.two" in names(testhost)
        clock.now = 15.0
        assert rec.run(frozenset({"prune"})).outcome == "ok", out.getvalue()
        assert "alice.two" not in names(testhost)

        # A whole stack file removed: its scope stays in the plans, so its VM is pruned too.
        extra.unlink()
        clock.now = 20.0
        assert rec.run(frozenset({"manifest"})).prune_due == 25.0
        assert "alice.three" in names(testhost)
        clock.now = 25.0
        rec.run(frozenset({"prune"}))
        assert "alice.three" not in names(testhost)
        rec.run(frozenset({"resync"}))
        scopes = json.loads((config.state_dir / SCOPES_FILE).read_text())["scopes"]
        assert [(s["owner"], s["stack"]) for s in scopes] == [("alice", "alice-stack")]  # "extra" is forgotten

        # A file removed while watch is down: the scope was remembered, the stack is pruned after a restart.
        gone = write_stack(stacks, "alice", stack="gone", vms=[vm("four")])
        rec.run(frozenset({"manifest"}))
        assert "alice.four" in names(testhost)
    finally:
        rec.close()
    gone.unlink()
    clock.now = 40.0
    rec = Reconciler(config, Log(out, "json", verbose=True), events, None, clock=clock)
    try:
        rec.run(frozenset({"start"}))
        assert "alice.four" in names(testhost)  # nothing is pruned in the first prune_after seconds
        clock.now = 45.0
        rec.run(frozenset({"prune"}))
        assert "alice.four" not in names(testhost)
        assert {"alice.one", "test"} <= names(testhost)  # the unmanaged "test" domain is never touched
    finally:
        rec.close()

    kinds = {e.kind for e in events.since()}
    events.close()
    assert {"action.done", "drift", "manifest.invalid", "removal.pending"} <= kinds


def test_every_manifest_removed_prunes_every_watched_stack(tmp_path: Path, testhost: libvirt.virConnect) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    clock = Clock()
    out = io.StringIO()
    config = config_for(tmp_path, [stacks], prune_after=0.0)
    (tmp_path / "state").mkdir()
    events = EventLog.in_state_dir(config.state_dir)
    rec = Reconciler(config, Log(out, "json"), events, None, clock=clock)
    try:
        path = write_stack(stacks, "bob", vms=[vm("one")])
        rec.run(frozenset({"start"}))
        assert "bob.one" in names(testhost)
        path.unlink()  # the directory is empty now: an empty desired state, not an error
        assert rec.run(frozenset({"manifest"})).outcome == "ok"
        assert "bob.one" not in names(testhost)
        assert not [r for r in records(out) if r["level"] == "error"]
    finally:
        rec.close()
        events.close()


def test_each_failed_action_is_requeued_by_the_kind_of_its_error(tmp_path: Path, testhost: libvirt.virConnect) -> None:
    """One VM fails to start (temporary), one to be defined (permanent): each waits on its own while the
    third converges and later triggers run; the temporary one is retried with backoff until it succeeds,
    the permanent one only once its declaration changes."""
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    clock = Clock()
    out = io.StringIO()
    config = config_for(tmp_path, [stacks], prune_after=0.0)
    (tmp_path / "state").mkdir()
    events = EventLog.in_state_dir(config.state_dir)
    host = FaultyHost(lambda: LibvirtHost.open(TEST_URI))
    busy = HostError("start alice.one: cannot acquire state change lock", temporary=True)
    host.fail("start_vm", "alice.one", busy)
    host.fail("define_vm", "alice.three", PermanentError("unsupported configuration: the host cannot run alice.three"))
    rec = Reconciler(config, Log(out, "json", verbose=True), events, None, clock=clock, open_host=lambda _config: host)  # type: ignore[arg-type,return-value]

    def attempts() -> tuple[int, int]:
        return host.calls[("start_vm", "alice.one")], host.calls[("define_vm", "alice.three")]

    try:
        path = write_stack(stacks, "alice", vms=[vm("one"), vm("two"), vm("three")])
        report = rec.run(frozenset({"start"}))
        assert report.outcome == "requeued" and report.retry_due == 0.2
        assert testhost.lookupByName("alice.two").isActive()
        assert not testhost.lookupByName("alice.one").isActive() and "alice.three" not in names(testhost)
        assert attempts() == (1, 1)
        failed = {r["subject"]: r["retry"] for r in records(out) if r["event"] == "action.failed"}
        assert failed == {"vm/alice/one": "temporary", "vm/alice/three": "permanent"}

        # Another trigger before the retry is due: both wait, nothing is attempted again.
        clock.now = 0.1
        testhost.lookupByName("alice.two").destroy()
        assert rec.run(frozenset({"event"})).outcome == "requeued"
        assert testhost.lookupByName("alice.two").isActive() and attempts() == (1, 1)

        # The retry: only the temporary failure is tried again, and backs off further.
        clock.now = 0.2
        report = rec.run(frozenset({"retry"}))
        assert attempts() == (2, 1) and report.retry_due == pytest.approx(0.6)
        host.heal("start_vm", "alice.one")
        clock.now = report.retry_due
        report = rec.run(frozenset({"retry"}))
        assert testhost.lookupByName("alice.one").isActive() and report.retry_due is None
        assert attempts() == (3, 1)

        # A saved file that leaves alice.three as it was does not retry it; one that changes it does.
        clock.now = 5.0
        assert rec.run(frozenset({"manifest", "resync"})).outcome == "requeued" and attempts() == (3, 1)
        host.heal("define_vm", "alice.three")
        path = write_stack(stacks, "alice", vms=[vm("one"), vm("two"), vm("three", memory="96MiB")])
        assert rec.run(frozenset({"manifest"})).outcome == "ok"
        assert attempts() == (3, 2) and testhost.lookupByName("alice.three").isActive()
        assert rec.run(frozenset({"resync"})).outcome == "ok"
    finally:
        rec.close()
    kinds = [(e.kind, e.subject, e.fields.get("retry")) for e in events.since() if e.kind == "action.failed"]
    events.close()
    assert ("action.failed", "vm/alice/three", "permanent") in kinds and ("action.failed", "vm/alice/one", "temporary") in kinds
    assert path.exists()


def test_the_watch_loop_on_the_test_driver(tmp_path: Path, testhost: libvirt.virConnect) -> None:
    """The asyncio side in process: a saved file, a bootstrap, a domain destroyed by hand, a removed file,
    SIGTERM."""
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    config = replace(config_for(tmp_path, [stacks], prune_after=0.3), serve=True, bind="127.0.0.1")
    out = io.StringIO()
    (tmp_path / "state").mkdir()
    events = EventLog.in_state_dir(config.state_dir)

    def active(name: str) -> bool:
        return name in names(testhost) and bool(testhost.lookupByName(name).isActive())

    def logged(event: str) -> int:
        return sum(1 for r in records(out) if r["event"] == event)

    async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log:\n{out.getvalue()}")
            await asyncio.sleep(0.01)

    def registered(name: str) -> bool:
        path = config.state_dir / "registry.db"
        if not path.exists():
            return False
        with Registry(path) as registry:
            return registry.get(name) is not None

    async def scenario() -> int:
        watcher = Watcher(config, Log(out, "json", verbose=True))
        task = asyncio.create_task(watcher.run(events, None))
        await until(lambda: logged("watch.started") == 1 and logged("reconcile.done") >= 1, "the first reconcile")
        path = write_stack(stacks, "carol", vms=[vm("one")], things=[{"name": "sensor-7", "server": "coap://192.0.2.10:5683"}])
        await until(lambda: active("carol.one"), "the VM of a saved manifest")
        # Things are registered after VMs, in the same reconcile: wait for the registration, not the VM.
        await until(lambda: registered("sensor-7"), "the thing's registration")
        # The bootstrap server runs in the same process, with the things reconcile registered.
        port = next(r["port"] for r in records(out) if r["event"] == "serve.listening")
        async with Lwm2mTestClient("sensor-7", "127.0.0.1", port, version="1.0") as client:
            await client.bootstrap()
        async with Lwm2mTestClient("nobody", "127.0.0.1", port) as stranger:
            assert await stranger.request_bootstrap() != Code.CHANGED
        await until(lambda: logged("bootstrap.finished") == 1 and logged("bootstrap.refused") == 1, "the bootstrap events")
        testhost.lookupByName("carol.one").destroy()
        await until(lambda: logged("drift") == 1 and active("carol.one"), "the destroyed VM to run again")
        path.unlink()
        await until(lambda: "carol.one" not in names(testhost), "the removed stack to be pruned")
        registry = Registry(config.state_dir / "registry.db")
        try:
            await until(lambda: registry.things() == [], "the removed thing to leave the registry")
        finally:
            registry.close()
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(task, 10.0)

    try:
        assert asyncio.run(scenario()) == 0
    finally:
        events.close()
    log = records(out)
    assert log[-1]["event"] == "watch.stopped"
    removed = {"stack/carol/carol-stack", "vm/carol/one", "thing/carol/sensor-7"}
    assert {r["subject"] for r in log if r["event"] == "removal.pending"} == removed
    assert {r["subject"] for r in log if r["event"] == "removal.stable"} == removed
    pending = min(r["ts"] for r in log if r["event"] == "removal.pending")
    destroy = next(r for r in log if r["event"] == "action.start" and r["action"] == "destroy")
    assert destroy["ts"] - pending >= config.prune_after
    assert not [r for r in log if r["level"] == "error"]
    finished = next(r for r in log if r["event"] == "bootstrap.finished")
    assert finished["subject"] == "thing/carol/sensor-7" and finished["server_uri"] == "coap://192.0.2.10:5683"
    refused = next(r for r in log if r["event"] == "bootstrap.refused")
    assert refused["subject"] == "thing/nobody" and refused["level"] == "warning"


def test_a_restarted_watch_keeps_password_salts_and_reads_the_secrets_dir(tmp_path: Path, testhost: libvirt.virConnect) -> None:
    stacks, vault = tmp_path / "stacks", tmp_path / "vault"
    stacks.mkdir()
    vault.mkdir()
    (vault / "pw").write_text("Zebra-Quokka-417\n")
    credentials = {"user": "edge", "password": {"file": str(vault / "pw")}}
    write_stack(stacks, "alice", vms=[vm("one", credentials=credentials)])
    config = replace(config_for(tmp_path, [stacks]), secrets_dirs=(vault,))
    (tmp_path / "state").mkdir()
    events = EventLog.in_state_dir(config.state_dir)
    try:
        for run in ("first", "restarted"):
            out = io.StringIO()
            rec = Reconciler(config, Log(out, "json", verbose=True), events, None, clock=Clock())
            try:
                assert rec.run(frozenset({"start"})).outcome == "ok", out.getvalue()
            finally:
                rec.close()
            done = [r["subject"] for r in records(out) if r["event"] == "action.done"]
            assert done == (["vm/alice/one"] if run == "first" else []), out.getvalue()  # the same seed again
        assert "alice.one" in names(testhost)
    finally:
        events.close()
