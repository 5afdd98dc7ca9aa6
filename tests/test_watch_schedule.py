"""The pure parts of epfiot watch: the removal rule, the scheduling, each failed action's requeue, the scope
memory and the log format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from epfiot.apply import Outcome
from epfiot.errors import HostError, PermanentError, TemporaryError
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
from epfiot.plan import Action, Change, Kind, Phase, Plan, Verb
from epfiot.watch.schedule import STARTUP_KEY, RemovalGate, Requeue, Schedule, desired_keys
from epfiot.watch.scopes import ScopeMemory, scope_is_empty

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


def test_a_failed_actions_retry_is_a_run_of_its_own_that_other_triggers_do_not_wait_for() -> None:
    sched = Schedule(debounce=0.2, resync=60.0, start=0.0)
    assert sched.finished(0.0, "requeued") is None  # the run worked; only some actions failed
    assert sched.due(0.0, retry_due=0.4) == 0.4
    assert sched.take(0.3, retry_due=0.4) == frozenset()
    sched.trigger("event")
    assert sched.take(0.3, retry_due=0.4) == {"event"}  # not held back by the failed action
    assert sched.take(0.4, retry_due=0.4) == {"retry"}
    sched.finished(0.5, "failed")  # a failed run holds back every trigger, the retries of actions too
    assert sched.due(0.5, retry_due=0.6) == 1.5


# --- each failed action requeued on its own -------------------------------------------------------------------


def action(name: str, memory: int = 128) -> Action:
    return Action(Kind.VM, "a", "s", name, Verb.UPDATE, "differs in memory_mib", Phase.VMS, changes=(Change("memory_mib", 64, memory),))


def failure(action: Action, error: Exception) -> Outcome:
    return Outcome(action, False, 0.1, error)


def test_a_temporary_failure_is_retried_soon_and_only_its_action_waits() -> None:
    requeue = Requeue()
    one, two = action("one"), action("two")
    busy = HostError("cannot acquire state change lock", temporary=True)
    assert requeue.failed(failure(one, busy), 0.0) == 0.2
    assert requeue.held(one, 0.1) and not requeue.held(two, 0.1)
    assert requeue.due() == 0.2 and not requeue.held(one, 0.2)
    assert requeue.failed(failure(one, busy), 0.2) == 0.4
    assert requeue.held(one, 0.3) and not requeue.held(one, 0.3, urgent=True)  # a saved file does not wait
    requeue.succeeded(one)
    assert requeue.due() is None and not requeue.held(one, 0.3)


def test_other_failures_back_off_longer_and_a_temporary_error_may_name_its_delay() -> None:
    requeue = Requeue()
    one, two = action("one"), action("two")
    delays = [requeue.failed(failure(one, HostError("internal error")), float(t)) for t in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert requeue.failed(failure(one, HostError("busy", temporary=True)), 7.0) == 0.2  # another kind: its own backoff
    assert requeue.failed(failure(two, TemporaryError("the guest is booting", retry_after=7.5)), 0.0) == 7.5
    assert requeue.due() == 7.2


def test_a_permanent_failure_is_held_until_its_action_changes() -> None:
    requeue = Requeue()
    one = action("one")
    assert requeue.failed(failure(one, PermanentError("the host cannot do it")), 0.0) is None
    assert requeue.due() is None  # no time to wake up for
    assert requeue.held(one, 1e6) and requeue.held(one, 1e6, urgent=True)
    assert not requeue.held(action("one", memory=256), 1e6)  # changed (its manifest was edited)


def test_failures_of_actions_a_plan_no_longer_runs_are_forgotten() -> None:
    requeue = Requeue()
    one, two = action("one"), action("two")
    requeue.failed(failure(one, HostError("x")), 0.0)
    requeue.failed(failure(two, PermanentError("y")), 0.0)
    noop = one._replace(verb=Verb.NOOP)  # converged meanwhile (by hand)
    requeue.settle(Plan((noop, two)))
    assert not requeue.held(one, 0.5) and requeue.held(two, 0.5)
    requeue.settle(Plan(()))  # no longer declared
    assert not requeue.held(two, 0.5) and requeue.due() is None


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
