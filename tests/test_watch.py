"""epfiot watch.

Fast tests of its pure parts (the removal rule, the scheduling, the scope memory, the log format), one of
the reconciler on the libvirt test driver, and the whole daemon as a subprocess against the real libvirt
daemon: manifests written, edited, broken and removed, a VM destroyed by hand, libvirtd restarted, SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import libvirt
import pytest
from aiocoap.numbers.codes import Code

from epfiot.eventlog import EventLog
from epfiot.logs import Log
from epfiot.model import (
    Desired,
    NetworkMode,
    NetworkSpec,
    Observed,
    ObservedVm,
    Ownership,
    PowerState,
    Source,
    StackSpec,
    VmSpec,
)
from epfiot.registry import Registry
from epfiot.watch.config import WatchConfig
from epfiot.watch.daemon import Watcher
from epfiot.watch.reconciler import Reconciler
from epfiot.watch.schedule import STARTUP_KEY, RemovalGate, Schedule, desired_keys
from epfiot.watch.scopes import SCOPES_FILE, ScopeMemory, scope_is_empty
from tests.lwm2m_client import Lwm2mTestClient
from tests.stacks import vm, write_stack

ROOT = Path(__file__).resolve().parent.parent


# --- the removal rule --------------------------------------------------------------------------------------


def keys(*names: str) -> frozenset[str]:
    return frozenset(names)


def test_removal_is_pruned_only_once_it_has_lasted_prune_after() -> None:
    gate = RemovalGate(5.0, now=0.0, hold_at_start=False)
    assert gate.update(keys("stack/a/s", "vm/a/one", "vm/a/two"), 0.0) == []
    assert gate.prune_allowed(0.0)

    assert gate.update(keys("stack/a/s", "vm/a/one"), 10.0) == ["vm/a/two"]
    assert not gate.prune_allowed(10.0)
    assert not gate.prune_allowed(14.9)
    assert gate.waiting(12.0) == {"vm/a/two": pytest.approx(3.0)}
    assert gate.due() == 15.0
    # Still missing in a later load: the clock is not reset.
    assert gate.update(keys("stack/a/s", "vm/a/one"), 13.0) == []
    assert gate.prune_allowed(15.0)
    assert gate.pruned(15.0) == ["vm/a/two"]
    assert gate.due() is None
    assert gate.prune_allowed(15.0)


def test_a_removal_undone_within_the_window_prunes_nothing() -> None:
    gate = RemovalGate(5.0, now=0.0, hold_at_start=False)
    gate.update(keys("stack/a/s", "vm/a/one"), 0.0)
    gate.update(keys(), 1.0)  # a checkout: every file is gone for a moment
    assert not gate.prune_allowed(1.5)
    gate.update(keys("stack/a/s", "vm/a/one"), 1.6)  # ... and back
    assert gate.prune_allowed(1.6)
    assert gate.due() is None


def test_pruning_waits_for_the_latest_removal() -> None:
    gate = RemovalGate(5.0, now=0.0, hold_at_start=False)
    gate.update(keys("vm/a/one", "vm/a/two", "vm/a/three"), 0.0)
    gate.update(keys("vm/a/two", "vm/a/three"), 1.0)
    gate.update(keys("vm/a/three"), 4.0)
    assert not gate.prune_allowed(7.0)  # "one" is stable, "two" is not: nothing is pruned yet
    assert gate.due() == 9.0
    assert gate.prune_allowed(9.0)
    assert gate.pruned(9.0) == ["vm/a/one", "vm/a/two"]


def test_nothing_is_pruned_in_the_first_prune_after_seconds() -> None:
    gate = RemovalGate(2.0, now=100.0)
    gate.update(keys("vm/a/one"), 100.1)
    assert not gate.prune_allowed(101.0)
    assert gate.due() == 102.0
    assert gate.prune_allowed(102.0)
    assert gate.pruned(102.0) == [STARTUP_KEY]
    assert RemovalGate(0.0, now=5.0).prune_allowed(5.0)


def test_desired_keys_name_stacks_and_resources() -> None:
    desired = Desired(
        stacks=(StackSpec("a", "s"),),
        vms=(VmSpec("a", "s", "one", 64, 1, 64, 1),),
        networks=(NetworkSpec("a", "s", "edge", NetworkMode.ROUTE, "10.0.0.0/24"),),
    )
    assert desired_keys(desired) == {"stack/a/s", "vm/a/one", "network/a/edge"}


# --- scheduling ---------------------------------------------------------------------------------------------


def test_file_changes_are_debounced_and_coalesced() -> None:
    sched = Schedule(debounce=0.2, resync=60.0, start=0.0)
    assert sched.due(0.0) == 60.0
    sched.files_changed(1.0)
    sched.files_changed(1.1)
    assert sched.due(1.1) == pytest.approx(1.3)
    assert sched.take(1.2) == frozenset()
    assert sched.take(1.3) == {"manifest"}
    # Triggers during the run coalesce into one more run.
    sched.trigger("event")
    sched.trigger("event")
    sched.files_changed(1.35)
    sched.finished(1.4, "ok")
    assert sched.due(1.4) == 1.4
    assert sched.take(1.4) == {"event"}  # the file change is still being debounced: its own run follows
    assert sched.take(1.55) == {"manifest"}
    assert sched.due(2.0) == pytest.approx(61.4)  # next resync


def test_endless_changes_still_get_a_run() -> None:
    sched = Schedule(debounce=0.2, resync=60.0, start=0.0)
    t = 0.0
    while t < 10.0 and not sched.take(t):
        sched.files_changed(t)
        t += 0.1
    assert 4.9 <= t <= 5.2


def test_failures_back_off_but_a_saved_file_runs_at_once() -> None:
    sched = Schedule(debounce=0.2, resync=60.0, start=0.0)
    assert sched.take(0.0) == frozenset()
    assert sched.finished(0.0, "failed") == 1.0
    sched.trigger("event")
    assert sched.due(0.5) == 1.0
    assert sched.take(0.5) == frozenset()
    assert sched.take(1.0) == {"retry", "event"}
    assert sched.finished(1.0, "failed") == 2.0
    sched.files_changed(1.1)
    assert sched.take(1.3) == {"manifest", "retry"}
    assert sched.finished(1.5, "failed") == 4.0
    assert sched.take(5.4) == frozenset()
    assert sched.take(5.5) == {"retry"}
    assert sched.finished(5.6, "ok") is None
    assert sched.take(5.7) == frozenset()
    assert sched.finished(6.0, "failed") == 1.0  # the backoff starts over after a success


def test_lost_connections_retry_fast_with_a_cap() -> None:
    sched = Schedule(debounce=0.2, resync=60.0, start=0.0)
    delays = [sched.finished(float(i), "disconnected") for i in range(8)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert sched.finished(9.0, "ok") is None
    assert sched.finished(9.5, "disconnected") == 0.2


def test_a_crash_loop_slows_down_but_drift_by_hand_does_not() -> None:
    sched = Schedule(debounce=0.2, resync=60.0, start=0.0)
    for t in (1.0, 2.0, 3.0, 4.0):  # someone destroys the VM again and again: corrected at once each time
        sched.finished(t, "drift")
        sched.trigger("event")
        assert sched.take(t) == {"event"}
    assert sched.crashed(10.0) is None
    assert sched.crashed(11.0) is None
    assert sched.crashed(12.0) == 1.0
    sched.trigger("event")
    assert sched.due(12.0) == 13.0
    assert sched.take(12.5) == frozenset()
    assert sched.take(13.0) == {"event"}
    assert sched.crashed(14.0) == 2.0
    sched.files_changed(14.0)
    assert sched.take(14.2) == {"manifest"}  # a saved file does not wait
    assert sched.crashed(200.0) is None  # the earlier crashes are out of the window


def test_due_and_take_agree_under_backoff() -> None:
    """Whatever is pending, the loop never wakes up for a run that take() then refuses."""
    sched = Schedule(debounce=0.2, resync=5.0, start=0.0)
    sched.finished(0.0, "failed")
    for _ in range(5):  # backoff 1, 2, 4, 8, 16 s: longer than the resync period
        now = sched.due(0.0, prune_due=0.5)
        assert now is not None
        assert sched.take(now, prune_due=0.5)
        sched.finished(now, "failed")
    assert sched.retry_at is not None and sched.resync_at < sched.retry_at
    now = sched.due(sched.resync_at - 1.0)
    assert now is not None and sched.take(now)


def test_prune_due_triggers_a_run() -> None:
    sched = Schedule(debounce=0.2, resync=60.0, start=0.0)
    assert sched.due(1.0, prune_due=3.0) == 3.0
    assert sched.take(2.0, prune_due=3.0) == frozenset()
    assert sched.take(3.0, prune_due=3.0) == {"prune"}


# --- the scope memory ---------------------------------------------------------------------------------------


def stack(owner: str, name: str, file: Path) -> StackSpec:
    return StackSpec(owner, name, source=Source(str(file), 1))


def test_scopes_of_removed_stacks_are_remembered_across_restarts(tmp_path: Path) -> None:
    watched, elsewhere = tmp_path / "stacks", tmp_path / "other"
    state = tmp_path / "state.json"
    memory = ScopeMemory(state, [watched])
    memory.load()
    memory.remember(Desired(stacks=(stack("a", "s1", watched / "s1.yaml"), stack("a", "s2", watched / "sub" / "s2.yaml"))))
    memory.save()

    again = ScopeMemory(state, [watched])
    again.load()
    assert again.retained(Desired(stacks=(stack("a", "s1", watched / "s1.yaml"),))) == (StackSpec("a", "s2"),)
    again.forget([("a", "s2")])
    again.save()

    # Another watcher, on other directories, keeps its own scopes and never sees these.
    other = ScopeMemory(state, [elsewhere])
    other.load()
    assert other.retained(Desired()) == ()
    other.remember(Desired(stacks=(stack("b", "x", elsewhere / "x.yaml"),)))
    other.save()
    third = ScopeMemory(state, [watched])
    third.load()
    assert third.retained(Desired()) == (StackSpec("a", "s1"),)
    data = json.loads(state.read_text())
    assert {(e["owner"], e["stack"]) for e in data["scopes"]} == {("a", "s1"), ("b", "x")}


def test_an_unreadable_scope_file_starts_afresh(tmp_path: Path) -> None:
    state = tmp_path / "watch-scopes.json"
    state.write_text("{not json")
    memory = ScopeMemory(state, [tmp_path])
    memory.load()
    assert memory.retained(Desired()) == ()


def test_a_scope_is_empty_when_nothing_managed_is_left() -> None:
    def domain(name: str, ownership: Ownership | None) -> ObservedVm:
        return ObservedVm(name, "uuid", ownership, PowerState.RUNNING, 1, 1, 64, 64)

    observed = Observed(vms=(domain("a.x", Ownership("a", "s", "x")), domain("a.hand", None)))
    assert not scope_is_empty(observed, "a", "s")
    assert scope_is_empty(observed, "a", "other")
    assert scope_is_empty(Observed(vms=(domain("a.hand", None),)), "a", "s")


# --- the log format -----------------------------------------------------------------------------------------


def test_log_lines_json_and_human() -> None:
    out = io.StringIO()
    log = Log(out, "json", clock=lambda: 1_800_000_000.25)
    log("action.start", "create: not defined", subject="vm/a/one", action="create")
    log("reconcile.start", "resync", level="debug")  # hidden unless verbose
    record = json.loads(out.getvalue())
    assert record == {
        "ts": 1_800_000_000.25,
        "time": "2027-01-15T08:00:00.250Z",
        "level": "info",
        "event": "action.start",
        "subject": "vm/a/one",
        "message": "create: not defined",
        "action": "create",
    }
    human = io.StringIO()
    Log(human, "human", clock=lambda: 1_800_000_000.25)("drift", "is shut off", subject="vm/a/one", level="warning")
    line = human.getvalue()
    assert line.count("\n") == 1 and "WARNING drift" in line and line.rstrip().endswith("vm/a/one: is shut off")


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


# --- the daemon, as a subprocess, against the real libvirt daemon -------------------------------------------


class WatchProcess:
    """`epfiot watch --log-format json` in a subprocess; its log lines are read in a thread."""

    def __init__(self, *argv: str) -> None:
        # Warnings are shown (PYTHONWARNINGS=default): any would be a line that is not JSON, and fail the test.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "default"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "epfiot", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[dict[str, Any]] = []
        self.eof = False
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"event": "(not json)", "level": "error", "message": line.rstrip("\n")}
            with self.cond:
                self.lines.append(record)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def since(self, mark: int) -> list[dict[str, Any]]:
        with self.cond:
            return list(self.lines[mark:])

    def wait_for(self, what: str, predicate: Callable[[dict[str, Any]], bool], *, after: int = 0, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for record in self.lines[after:]:
                    if predicate(record):
                        return record
                remaining = deadline - time.monotonic()
                if self.eof or remaining <= 0:
                    tail = "\n".join(json.dumps(r) for r in self.lines[-40:])
                    state = "exited" if self.eof else "timed out"
                    raise AssertionError(f"watch {state} before {what}; last lines:\n{tail}")
                self.cond.wait(remaining)

    def event(self, name: str, *, after: int = 0, timeout: float = 30.0, **fields: object) -> dict[str, Any]:
        def matches(r: dict[str, Any]) -> bool:
            return r.get("event") == name and all(r.get(k) == v for k, v in fields.items())

        return self.wait_for(f"{name} {fields or ''}", matches, after=after, timeout=timeout)

    def stop(self, timeout: float = 30.0, *, signalled: bool = False) -> int:
        if not signalled and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Libvirt:
    """The test's own view of the daemon, reconnecting after a daemon restart."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.conn: libvirt.virConnect | None = None

    def connection(self) -> libvirt.virConnect:
        if self.conn is None or not self.conn.isAlive():
            if self.conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self.conn.close()
            self.conn = libvirt.open(self.uri)
        return self.conn

    def domain(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.connection().lookupByName(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            self.conn = None  # the daemon is restarting: ask again
            raise

    def state(self, name: str) -> str | None:
        """running, shutoff, paused..., None (no such domain), "unknown" (the daemon does not answer)."""
        try:
            dom = self.domain(name)
            if dom is None:
                return None
            code = dom.state()[0]
        except libvirt.libvirtError:
            self.conn = None
            return "unknown"
        return {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff", libvirt.VIR_DOMAIN_PAUSED: "paused"}.get(code, str(code))

    def config_memory_mib(self, name: str) -> int | None:
        try:
            dom = self.domain(name)
            if dom is None:
                return None
            xml = ElementTree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        except libvirt.libvirtError:
            self.conn = None
            return None
        node = xml.find("currentMemory")
        assert node is not None and node.get("unit", "KiB") == "KiB"
        return int(node.text or 0) // 1024

    def config_vcpus(self, name: str) -> int | None:
        try:
            dom = self.domain(name)
            return None if dom is None else int(dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG))
        except libvirt.libvirtError:
            self.conn = None
            return None

    def uuid(self, name: str) -> str | None:
        dom = self.domain(name)
        return None if dom is None else str(dom.UUIDString())

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    """Poll until `condition` holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def virsh(uri: str, *argv: str) -> None:
    subprocess.run(["virsh", "-q", "-c", uri, *argv], check=True, capture_output=True, text=True, timeout=60)


@pytest.mark.daemon
def test_watch_on_the_real_daemon(system_uri: str, tenant: str, tmp_path: Path) -> None:
    stacks, state = tmp_path / "stacks", tmp_path / "state"
    stacks.mkdir()
    prune_after = 1.5
    name = f"{tenant}.example1"
    byhand = f"{tenant}.byhand"
    host = Libvirt(system_uri)

    def stack(**fields: Any) -> Path:
        settings = {"memory": "64MiB", "max_memory": "128MiB", "vcpu": 1, "max_vcpu": 2, **fields}
        return write_stack(stacks, tenant, vms=[vm("example1", **settings)])

    watch = WatchProcess(
        "--connect", system_uri, "--state-dir", str(state), "-v",
        "watch", "-f", str(stacks), "--bind", "127.0.0.1", "--port", "0", "--log-format", "json",
        "--prune-after", str(prune_after), "--resync", "30",
    )  # fmt: skip
    try:
        watch.event("serve.listening")
        watch.event("watch.started")
        watch.event("reconcile.done")

        # A manifest appears: the VM is created and running.
        mark = watch.mark()
        path = stack()
        saved = time.time()
        wait_until(lambda: host.state(name) == "running", "the VM to run")
        first_call = watch.event("action.start", after=mark, subject=f"vm/{tenant}/example1")
        print(f"\nsave -> first libvirt call of the action: {first_call['ts'] - saved:.3f}s")
        uuid = host.uuid(name)
        assert host.config_memory_mib(name) == 64

        # Memory edited: it changes.
        mark = watch.mark()
        stack(memory="96MiB")
        wait_until(lambda: host.config_memory_mib(name) == 96, "memory 96 MiB")
        watch.event("action.done", after=mark, subject=f"vm/{tenant}/example1", action="update")
        assert host.state(name) == "running"

        # A domain defined by hand, without epfiot's metadata, in the tenant's namespace: left alone.
        host.connection().defineXML(
            f"<domain type='qemu'><name>{byhand}</name><memory unit='MiB'>32</memory><os><type arch='x86_64'>hvm</type></os></domain>"
        )

        # Broken YAML: logged with file:line, nothing changes, and drift is still corrected with the last
        # valid manifests.
        mark = watch.mark()
        path.write_text(f"version: 1\nstack: {tenant}-stack\nowner: {tenant}\nvms:\n  - name: example1\n    memory: [96MiB\n")
        problem = watch.event("manifest.problem", after=mark)
        assert problem["subject"].startswith(f"{path}:") and problem["level"] == "error"
        virsh(system_uri, "destroy", name)
        wait_until(lambda: watch.mark() > mark and host.state(name) == "running", "the destroyed VM to run again")
        watch.event("drift", after=mark, subject=f"vm/{tenant}/example1")
        assert host.config_memory_mib(name) == 96
        assert host.uuid(name) == uuid
        assert not [r for r in watch.since(mark) if r.get("event") == "action.start" and r.get("action") != "update"]

        # Fixed: converges to it.
        mark = watch.mark()
        stack(memory="128MiB")
        watch.event("manifest.valid", after=mark)
        wait_until(lambda: host.config_memory_mib(name) == 128, "memory 128 MiB")

        # Out-of-band destroy, manifests valid: running again within seconds.
        mark = watch.mark()
        virsh(system_uri, "destroy", name)
        destroyed = time.monotonic()
        wait_until(lambda: host.state(name) == "running", "the VM to run again", timeout=10)
        print(f"virsh destroy -> running again: {time.monotonic() - destroyed:.3f}s")
        watch.event("drift", after=mark, subject=f"vm/{tenant}/example1")

        # A checkout that removes and re-adds the file within the debounce window: nothing to prune.
        mark = watch.mark()
        text = path.read_text()
        path.unlink()
        path.write_text(text)
        watch.wait_for("a reconcile for the change", lambda r: r.get("event") == "reconcile.done" and "manifest" in r.get("reasons", ()), after=mark)
        assert not [r for r in watch.since(mark) if r.get("event") == "removal.pending"]
        # ... and one that takes longer: the removal is pending, undone before it is stable.
        mark = watch.mark()
        path.unlink()
        watch.event("removal.pending", after=mark, subject=f"vm/{tenant}/example1")
        mark = watch.mark()
        path.write_text(text)
        watch.event("manifest.loaded", after=mark)
        assert host.uuid(name) == uuid

        # libvirtd restarted: watch reconnects and keeps working.
        mark = watch.mark()
        subprocess.run([str(ROOT / "scripts" / "libvirtd.sh"), "restart"], check=True, capture_output=True, timeout=120)
        watch.event("libvirt.reconnected", after=mark, timeout=60)
        stack(memory="128MiB", vcpu=2)
        wait_until(lambda: host.config_vcpus(name) == 2, "2 vCPUs after the daemon restart", timeout=60)
        assert host.state(name) == "running"
        assert host.uuid(name) == uuid  # never pruned, never re-created

        # The file removed: pruned once the removal has lasted --prune-after; the hand-made domain stays.
        mark = watch.mark()
        path.unlink()
        pending = watch.event("removal.pending", after=mark, subject=f"vm/{tenant}/example1")
        destroy = watch.event("action.start", after=mark, subject=f"vm/{tenant}/example1", action="destroy")
        assert destroy["ts"] - pending["ts"] >= prune_after

        # SIGTERM in the middle of that action: it is finished, then watch exits with 0. (A pruned VM's
        # manifest, and its shutdown_timeout, is gone: the planner gives its graceful shutdown the default,
        # 60 s, and this guest has no OS to answer ACPI.)
        watch.proc.send_signal(signal.SIGTERM)
        watch.event("watch.stopping", after=mark)
        assert watch.stop(timeout=120, signalled=True) == 0
        events = [r.get("event") for r in watch.since(mark)]
        assert events.index("action.done") < events.index("watch.stopped") == len(events) - 1
        assert events.count("watch.stopping") == 1
        assert host.state(name) is None
        assert host.state(byhand) == "shutoff"
        assert not [r for r in watch.lines if r.get("event") == "libvirt.event" and r.get("domain") == byhand]
        strays = [r for r in watch.lines if r.get("event") == "(not json)"]
        assert strays == [], "every line is a JSON log line"
        errors = {r["event"] for r in watch.lines if r.get("level") == "error"}
        assert errors <= {"manifest.invalid", "manifest.problem"}, errors
    except BaseException:
        print("watch's last log lines:", *(json.dumps(r) for r in watch.since(max(0, watch.mark() - 60))), sep="\n")
        raise
    finally:
        watch.kill()
        with contextlib.suppress(libvirt.libvirtError, TypeError):
            dom = host.domain(byhand)
            if dom is not None:
                dom.undefine()
        host.close()

    # The event log keeps it all: epfiot events shows what watch did and saw.
    out = subprocess.run(
        [sys.executable, "-m", "epfiot", "--state-dir", str(state), "events", "-o", "json"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    kinds = {e["kind"] for e in json.loads(out.stdout)}
    assert {"action.done", "drift", "manifest.invalid", "removal.pending"} <= kinds
