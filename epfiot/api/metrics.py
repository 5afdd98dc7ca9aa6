"""The service's Prometheus metrics, in a CollectorRegistry of their own (GET /metrics, text format).

Counters and the histogram are fed as things happen (watch's reconciles and actions, the bootstrap server);
the gauges of VMs by state and things by bootstrap status are set from what each reconcile observed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics
from prometheus_client import Counter as PromCounter
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series: when a process started counting, noise here


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconcile_seconds = Histogram(
            "epfiot_reconcile_duration_seconds", "Duration of one full reconcile (load, observe, plan, apply)",
            ["outcome"], registry=r, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.actions = PromCounter("epfiot_actions", "Actions applied, by resource kind, verb and outcome", ["kind", "verb", "outcome"], registry=r)
        self.drift = PromCounter("epfiot_drift_corrected", "Changes made because the host drifted from the manifests", ["kind"], registry=r)
        self.vms = Gauge("epfiot_vms", "Managed VMs by state, as last observed", ["state"], registry=r)
        self.things = Gauge("epfiot_things", "Registered things by bootstrap status, as last read", ["status"], registry=r)
        self.bootstraps = PromCounter("epfiot_bootstrap_requests", "Bootstrap requests by result", ["result"], registry=r)
        self.last_success = Gauge("epfiot_last_successful_reconcile_timestamp_seconds", "When the last reconcile that succeeded ended (Unix time)", registry=r)
        self.api_requests = PromCounter("epfiot_api_requests", "API requests by route and status", ["route", "status"], registry=r)
        self._vm_states: set[str] = set()
        self._thing_statuses: set[str] = set()

    def reconciled(self, seconds: float, outcome: str, at: float) -> None:
        self.reconcile_seconds.labels(outcome).observe(seconds)
        if outcome in ("ok", "drift"):
            self.last_success.set(at)

    def action(self, kind: str, verb: str, ok: bool) -> None:
        self.actions.labels(kind, verb, "ok" if ok else "failed").inc()

    def drift_corrected(self, kind: str) -> None:
        self.drift.labels(kind).inc()

    def bootstrap(self, result: str) -> None:
        self.bootstraps.labels(result).inc()

    def vm_states(self, states: Iterable[str]) -> None:
        self._vm_states = _set_counts(self.vms, Counter(states), self._vm_states)

    def thing_statuses(self, statuses: Iterable[str]) -> None:
        self._thing_statuses = _set_counts(self.things, Counter(statuses), self._thing_statuses)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _set_counts(gauge: Gauge, counts: Counter[str], previous: set[str]) -> set[str]:
    for label in previous - counts.keys():
        gauge.labels(label).set(0)  # a state no VM is in any more reads 0, not its last count
    for label, count in counts.items():
        gauge.labels(label).set(count)
    return previous | set(counts)
