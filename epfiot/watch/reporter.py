"""What one reconcile of watch reports: its RunReport to the loop, and its steps to the log and the event log
(WatchReporter, the reconcile Reporter of watch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from epfiot.eventlog import EventLog, EventRecorder
from epfiot.logs import Log
from epfiot.model import Desired, StackSpec
from epfiot.watch.runs import Observer

if TYPE_CHECKING:
    from epfiot.apply import Outcome
    from epfiot.plan import Action
    from epfiot.reconcile import CreatePool, Result


@dataclass(frozen=True)
class RunReport:
    outcome: str  # "ok" | "drift" | "requeued" | "failed" | "disconnected" | "idle" (no valid manifests yet)
    prune_due: float | None  # when a held removal becomes stable (monotonic)
    managed: frozenset[str]  # libvirt names of the domains whose events matter
    retry_due: float | None = None  # when a failed action may be retried (monotonic)


@dataclass
class PlannedRun:
    """What one reconcile decided before planning, for the reporter's `planned`."""

    desired: Desired
    planning: Desired  # with the scopes of removed stacks
    retained: tuple[StackSpec, ...]
    reasons: frozenset[str]
    now: float
    prune: bool
    drift: list[Action] = field(default_factory=list)


class WatchReporter(EventRecorder):
    """The reconcile Reporter of watch: one log line per step, and the event log."""

    def __init__(self, log: Log, events: EventLog, on_planned: Callable[[Result, bool], None]) -> None:
        super().__init__(events, "watch")
        self.log = log
        self.on_planned = on_planned
        self.observer: Observer | None = None

    def lock_wait(self, message: str) -> None:
        self.log("lock.wait", message, level="warning")

    def pool_created(self, pool: CreatePool, seconds: float) -> None:
        super().pool_created(pool, seconds)
        self.log("pool.created", f"{pool.describe()} ({seconds:.2f}s)", subject=pool.address, seconds=round(seconds, 3))

    def planned(self, result: Result, applying: bool) -> None:
        self.on_planned(result, applying)

    def action_started(self, action: Action) -> None:
        super().action_started(action)
        self.log("action.start", f"{action.verb}: {action.reason}", subject=action.address, action=str(action.verb))

    def action_finished(self, outcome: Outcome) -> None:
        super().action_finished(outcome)
        action = outcome.action
        if self.observer is not None:
            self.observer.action(action.kind.value, action.verb.value, outcome.ok)
        if outcome.ok:
            self.log("action.done", f"{action.verb} done ({outcome.seconds:.2f}s)", subject=action.address, action=str(action.verb), seconds=round(outcome.seconds, 3))
        else:
            message = outcome.message
            self.log("action.failed", f"{action.verb} failed: {message}", subject=action.address, level="error", action=str(action.verb), error=message, retry=outcome.retry)
