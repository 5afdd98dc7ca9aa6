"""The terminal side of a reconcile Reporter: the plan, then one line per action as it finishes."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from epfiot import render
from epfiot.eventlog import EventLog, EventRecorder
from epfiot.wording import counted

if TYPE_CHECKING:
    from epfiot.apply import Outcome
    from epfiot.plan import Action
    from epfiot.reconcile import CreatePool, Result


class Terminal(EventRecorder):
    """Prints the plan (unless the output is JSON), then one numbered line per action as it finishes, and
    records it all in the event log. On a terminal, a status line below them shows what is running now
    (long plans: starting many VMs takes a while)."""

    def __init__(self, out: TextIO, events: EventLog, source: str, *, uri: str, show_plan: bool, verbose: bool) -> None:
        super().__init__(events, source)
        self.out, self.uri, self.show_plan, self.verbose = out, uri, show_plan, verbose
        self.total = self.done = 0
        self.running: dict[str, float] = {}
        self.live = self.announced = False
        self.lock = threading.Lock()

    def lock_wait(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def pool_created(self, pool: CreatePool, seconds: float) -> None:
        super().pool_created(pool, seconds)
        print(f"Image pool {pool.name} ready (directory {pool.path}, {seconds:.1f}s).", file=self.out, flush=True)

    def planned(self, result: Result, applying: bool) -> None:
        plan = result.plan
        if self.show_plan:
            pool = result.pool if not result.pool_created else None
            print(render.render_plan(plan, verbose=self.verbose, pool=pool), file=self.out, flush=True)
        if applying:
            self.total = len(plan.changes) - len(result.held)
            self.live = self.out.isatty() and self.total > 1

    def action_started(self, action: Action) -> None:
        super().action_started(action)
        with self.lock:
            if not self.announced:  # at the first action, not with the plan: a confirmation may come between
                self.announced = True
                print(f"\nApplying {counted(self.total, 'action')} to {self.uri} ...", file=self.out, flush=True)
            self.running[render.action_title(action)] = time.monotonic()
            self._status()

    def action_finished(self, outcome: Outcome) -> None:
        super().action_finished(outcome)
        action = outcome.action
        title = render.action_title(action)
        with self.lock:
            self.running.pop(title, None)
            self.done += 1
            counter = f"[{self.done:>{len(str(self.total))}}/{self.total}]"
            if outcome.ok:
                line = f"{counter} {title}: {action.verb} done ({outcome.seconds:.1f}s)"
            else:
                line = f"{counter} {title}: {action.verb} FAILED: {outcome.message}"
            if self.live:
                self.out.write("\r\033[K")
            print(line, file=self.out, flush=True)
            self._status()

    def _status(self) -> None:
        if not self.live:
            return
        if not self.running or self.done >= self.total:
            self.out.write("\r\033[K")
        else:
            oldest = sorted(self.running, key=self.running.__getitem__)
            names = ", ".join(oldest[:3]) + (f" and {len(oldest) - 3} more" if len(oldest) > 3 else "")
            elapsed = time.monotonic() - self.running[oldest[0]]
            self.out.write(f"\r\033[K  {self.done}/{self.total} done; running: {names} ({elapsed:.0f}s)")
        self.out.flush()
