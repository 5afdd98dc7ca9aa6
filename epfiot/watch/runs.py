"""What the service tells of each reconcile of watch: the last run as JSON (GET /api/v1/plan) and what its
metrics learn (an Observer: epfiot.api.metrics.Metrics)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from epfiot.reconcile import Result
    from epfiot.registry import Registry


class Observer(Protocol):
    def reconciled(self, seconds: float, outcome: str, at: float) -> None: ...
    def action(self, kind: str, verb: str, ok: bool) -> None: ...
    def drift_corrected(self, kind: str) -> None: ...
    def vm_states(self, states: Iterable[str]) -> None: ...
    def thing_statuses(self, statuses: Iterable[str]) -> None: ...


def record_run(result: Result, seconds: float, reasons: frozenset[str], outcome: str, observer: Observer | None, registry: Registry | None) -> dict[str, Any]:
    """The run as JSON: when, why, how it ended, its plan and its outcomes (as `apply -o json` has them);
    the observer, if any, learns its duration and what it observed."""
    from epfiot import render
    from epfiot.render import outcome_as_dict

    at = time.time()
    if observer is not None:
        observer.reconciled(seconds, outcome, at)
        observer.vm_states(v.condition for v in result.observed.vms if v.ownership is not None)
        if registry is not None:
            observer.thing_statuses(r.status for r in registry.things())
    return {
        "at": at,
        "reasons": sorted(reasons),
        "outcome": outcome,
        "seconds": round(seconds, 3),
        "plan": render.plan_as_dict(result.plan, pool=result.pool, pool_created=result.pool_created),
        "outcomes": [outcome_as_dict(o) for o in result.outcomes],
    }
