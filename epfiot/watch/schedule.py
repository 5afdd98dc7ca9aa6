"""When watch runs a reconcile: the pure scheduling parts (times are passed in, monotonic seconds).

- `Schedule`: coalescing, debounce, the resync, and the backoff after a failed run or a lost connection;
- `Requeue`: each failed action retried on its own, by the kind of its error;
- `RemovalGate`: when pruning is allowed (the removal rule of docs/watch.md).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from epfiot.model import Desired

if TYPE_CHECKING:
    from epfiot.apply import Outcome
    from epfiot.errors import RetryClass
    from epfiot.plan import Action, Plan

STARTUP_KEY = "(watch started)"

# Backoff after a failed reconcile (seconds): connection problems retry fast, failed runs slower.
CONNECT_BACKOFF = (0.2, 5.0)
FAILURE_BACKOFF = (1.0, 30.0)
# A VM that crashes again and again (QEMU fails right after each start) is restarted with growing delays:
# from the CRASH_BURST-th crash within CRASH_WINDOW s, 1, 2, 4 ... up to CRASH_BACKOFF_CAP s. Only
# crashes count: stopping a VM by hand, however often, is corrected at once.
CRASH_BURST = 3
CRASH_WINDOW = 60.0
CRASH_BACKOFF_CAP = 30.0
CRASH_EVENTS = ("stopped/crashed", "stopped/failed", "crashed/")
# Changes that never stop (a long checkout) still get a run after this long.
MAX_DEBOUNCE = 5.0


def desired_keys(desired: Desired) -> frozenset[str]:
    """What a desired state declares, as keys: "stack/OWNER/STACK", "vm/OWNER/NAME", ..."""
    keys = {f"stack/{s.owner}/{s.name}" for s in desired.stacks}
    keys.update(f"vm/{v.owner}/{v.name}" for v in desired.vms)
    keys.update(f"network/{n.owner}/{n.name}" for n in desired.networks)
    keys.update(f"thing/{t.owner}/{t.name}" for t in desired.things)
    return frozenset(keys)


class RemovalGate:
    """When pruning is allowed: the removal rule, as a small pure class (times are monotonic seconds).

    Every valid desired state is compared with the previous one. A key (stack or resource) that was
    declared and no longer is becomes "missing since now"; one declared again stops being missing. A
    reconcile may prune only when every missing key has been missing for at least `prune_after` seconds;
    until then watch reconciles with pruning off. Start-up counts as a removal of everything (the files may
    have changed while watch was not running, or be half checked out), so nothing is pruned in the first
    `prune_after` seconds either. Removals become stable at `due()`: watch schedules a run then.
    """

    def __init__(self, prune_after: float, now: float, *, hold_at_start: bool = True) -> None:
        self.prune_after = prune_after
        self._known: frozenset[str] | None = None
        self._missing: dict[str, float] = {STARTUP_KEY: now} if hold_at_start else {}

    def update(self, keys: frozenset[str], now: float) -> list[str]:
        """A new valid desired state. Returns the keys that have just gone missing."""
        gone: list[str] = []
        if self._known is not None:
            for key in sorted(self._known - keys):
                if key not in self._missing:
                    self._missing[key] = now
                    gone.append(key)
        for key in keys:
            self._missing.pop(key, None)
        self._known = keys
        return gone

    def prune_allowed(self, now: float) -> bool:
        return all(now - since >= self.prune_after for since in self._missing.values())

    def waiting(self, now: float) -> dict[str, float]:
        """Missing keys that are not stable yet, with the seconds each still has to wait."""
        return {k: self.prune_after - (now - t) for k, t in self._missing.items() if now - t < self.prune_after}

    def due(self) -> float | None:
        """When pruning becomes allowed (None: nothing is waiting)."""
        if not self._missing:
            return None
        return max(self._missing.values()) + self.prune_after

    def pruned(self, now: float) -> list[str]:
        """A reconcile with pruning on was planned: forget the stable removals it took care of."""
        done = sorted(k for k, t in self._missing.items() if now - t >= self.prune_after)
        for key in done:
            del self._missing[key]
        return done


class Backoff:
    """Exponential: base, 2*base, 4*base ... capped."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap = base, cap
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return float(min(self.cap, self.base * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0


@dataclass
class Schedule:
    """When the next reconcile runs, and why: coalescing, debounce, resync, retry and crash-loop backoff.

    Pure (times are passed in, monotonic seconds); the watch loop asks `due()` how long to sleep and `take()`
    which reasons the run starting now covers. A manifest change bypasses the backoffs (someone just
    saved a file: act now); every other trigger waits for them.
    """

    debounce: float
    resync: float
    start: float
    pending: set[str] = field(default_factory=set)
    files_first: float | None = None  # first change of the current burst of file changes
    files_due: float | None = None
    retry_at: float | None = None  # after a failed run
    crash_hold: float | None = None  # after repeated crashes
    resync_at: float = 0.0
    connect: Backoff = field(default_factory=lambda: Backoff(*CONNECT_BACKOFF))
    failure: Backoff = field(default_factory=lambda: Backoff(*FAILURE_BACKOFF))
    crashes: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.resync_at = self.start + self.resync

    def trigger(self, reason: str) -> None:
        self.pending.add(reason)

    def files_changed(self, now: float) -> None:
        if self.files_first is None:
            self.files_first = now
        self.files_due = min(now + self.debounce, self.files_first + max(MAX_DEBOUNCE, self.debounce))

    def crashed(self, now: float) -> float | None:
        """A managed VM crashed (or its QEMU failed). From the CRASH_BURST-th crash within CRASH_WINDOW s,
        the runs that would restart it wait 1, 2, 4 ... CRASH_BACKOFF_CAP s. Returns that delay, if any."""
        self.crashes.append(now)
        while now - self.crashes[0] > CRASH_WINDOW:
            self.crashes.popleft()
        if len(self.crashes) < CRASH_BURST:
            return None
        delay = float(min(CRASH_BACKOFF_CAP, 2.0 ** (len(self.crashes) - CRASH_BURST)))
        self.crash_hold = now + delay
        return delay

    def _hold(self, now: float) -> float | None:
        holds = [t for t in (self.retry_at, self.crash_hold) if t is not None and t > now]
        return max(holds) if holds else None

    def due(self, now: float, prune_due: float | None = None, retry_due: float | None = None) -> float:
        """The time the next run should start (may be in the past: at once). `prune_due`: when a removal
        becomes stable; `retry_due`: when a failed action may be retried (Requeue.due)."""
        hold = self._hold(now)

        def after_hold(t: float) -> float:
            return t if hold is None else max(t, hold)

        candidates = [after_hold(self.resync_at)]
        if self.files_due is not None:
            candidates.append(self.files_due)
        if self.pending:
            candidates.append(after_hold(now))
        candidates += [after_hold(t) for t in (prune_due, retry_due) if t is not None]
        return min(candidates)

    def take(self, now: float, prune_due: float | None = None, retry_due: float | None = None) -> frozenset[str]:
        """The reasons for a run starting now (empty: not yet)."""
        reasons: set[str] = set()
        if self.files_due is not None and now >= self.files_due:
            reasons.add("manifest")
            self.files_first = self.files_due = None
        free = self._hold(now) is None
        if now >= self.resync_at and free:
            reasons.add("resync")
        if prune_due is not None and now >= prune_due and free:
            reasons.add("prune")
        if retry_due is not None and now >= retry_due and free:
            reasons.add("retry")
        if self.pending and (free or reasons):
            reasons |= self.pending
        if reasons:
            self.pending.clear()
            self.retry_at = None
        return frozenset(reasons)

    def finished(self, now: float, outcome: str) -> float | None:
        """After a run: "ok", "drift" (ok, and corrected drift), "requeued" (ok, but some actions failed:
        Requeue retries each), "failed" (the run as a whole) or "disconnected". Returns the delay before the
        retry of a failed run, if any."""
        self.resync_at = now + self.resync
        delay: float | None = None
        if outcome == "disconnected":
            self.failure.reset()
            delay = self.connect.next()
        elif outcome == "failed":
            self.connect.reset()
            delay = self.failure.next()
        else:
            self.connect.reset()
            self.failure.reset()
        if delay is not None:
            self.pending.add("retry")
        self.retry_at = now + delay if delay is not None else None
        return delay


@dataclass
class _Failure:
    action: Action
    retry: RetryClass
    backoff: Backoff
    at: float  # when it may run again (unless permanent)

    @property
    def permanent(self) -> bool:
        return self.retry == "permanent"


class Requeue:
    """Failed actions, each requeued on its own, as controller-runtime's per-item rate limiter does: one
    failing VM neither delays the rest of a run nor is hammered by every run that other triggers start.

    By the kind of its error (epfiot.errors.retry_class, after kopf): a temporary failure is retried soon
    (CONNECT_BACKOFF, or the delay the error asks for), any other with a growing delay (FAILURE_BACKOFF); a
    permanent one not until the action changes (its declaration, or the state it starts from, make the
    planner plan another action). A saved file (`urgent`) overrides a backoff, never a permanent hold. An
    action that succeeds, or that a plan no longer has to run (converged, or no longer declared), is forgotten.
    """

    def __init__(self) -> None:
        self._failures: dict[str, _Failure] = {}

    def held(self, action: Action, now: float, *, urgent: bool = False) -> bool:
        """Whether `action` waits rather than runs now."""
        failure = self._failures.get(action.address)
        if failure is None:
            return False
        if failure.permanent:
            return failure.action == action
        return not urgent and now < failure.at

    def failed(self, outcome: Outcome, now: float) -> float | None:
        """A failed outcome: the delay before its action is retried (None: held until it changes)."""
        address = outcome.action.address
        retry = outcome.retry or "failed"
        failure = self._failures.get(address)
        if failure is None or failure.retry != retry:  # a new kind of failure starts its own backoff
            backoff = Backoff(*(CONNECT_BACKOFF if retry == "temporary" else FAILURE_BACKOFF))
            failure = self._failures[address] = _Failure(outcome.action, retry, backoff, now)
        failure.action = outcome.action
        if failure.permanent:
            return None
        asked = getattr(outcome.error, "retry_after", None)
        delay = float(asked) if asked is not None else failure.backoff.next()
        failure.at = now + delay
        return delay

    def succeeded(self, action: Action) -> None:
        self._failures.pop(action.address, None)

    def settle(self, plan: Plan) -> None:
        """Forget the failures of actions that `plan` no longer has to run."""
        pending = {a.address for a in plan.changes}
        for address in [a for a in self._failures if a not in pending]:
            del self._failures[address]

    def due(self) -> float | None:
        """When the first backoff ends (None: no failed action waits for a time)."""
        times = [f.at for f in self._failures.values() if not f.permanent]
        return min(times) if times else None
