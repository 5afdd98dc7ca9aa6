"""Watch on a host with tenants: each tenant's manifest directories reconciled as that tenant.

With a host configuration (epfiot.hostconfig), the administrator's `epfiot watch` reconciles the manifest
directories of every tenant, each by a Reconciler of its own acting as that tenant: a document under alice's
directory saying `owner: bob` is a manifest problem at its file and line, and alice's manifests stay as they
last were valid (nothing of her new load is applied), while bob's and everyone else's runs go on. Watch
reads what alice cannot (it runs as root): her manifests' `{file: PATH}` secrets are read only from under
her own directories, and `{env: NAME}` ones never from watch's environment. Each has
its own removal rule, retries and remembered scopes (watch-scopes.<tenant>.json), so a tenant's broken
manifests, plan problems or failing actions never hold back another's. The administrator's own -f paths, if
any, are one more member, acting as the administrator. A tenant running watch itself reconciles its -f
paths as that tenant, and nothing else.

The members run one after another in watch's worker thread, each run_once under the host lock; a run of
all of them reports the worst outcome (a failed member makes watch retry sooner) and the earliest prune and
retry times.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epfiot.errors import EpfiotError
from epfiot.hostconfig import ADMIN, Caller, HostConfig
from epfiot.plan.host_rules import HostRules
from epfiot.snapshot import Snapshots
from epfiot.watch.reconciler import Reconciler
from epfiot.watch.reporter import RunReport
from epfiot.watch.runs import Observer
from epfiot.watch.scopes import SCOPES_FILE

if TYPE_CHECKING:
    from epfiot.api.backend import Live
    from epfiot.eventlog import EventLog
    from epfiot.host import Host
    from epfiot.logs import Log
    from epfiot.policy import UsbPolicy
    from epfiot.watch.config import WatchConfig

# From the outcome that matters most to the least: the run of all members reports the first one any has.
OUTCOMES = ("disconnected", "failed", "requeued", "drift", "ok", "idle")


@dataclass(frozen=True)
class Member:
    """Whose manifests: the caller they act for, its paths (in `config`) and its scopes file."""

    caller: Caller
    config: WatchConfig
    scopes_file: str = SCOPES_FILE
    confined: bool = False  # its secrets only from its own paths, none from watch's environment
    rules: HostRules | None = None  # the host's rules for `caller` (None: those of a host without a configuration)


def members(config: WatchConfig, host: HostConfig, caller: Caller) -> list[Member]:
    """The members of one watch: without tenants (or run by a tenant), the -f paths as `caller`; run by the
    administrator on a host with tenants, one per tenant with manifest directories, then its -f paths."""
    if not host.has_tenants or not caller.is_admin:
        return [Member(caller, config, rules=HostRules.of(host, caller))]
    found = []
    for t in sorted(host.tenants.values(), key=lambda t: t.name):
        if t.manifests:
            tenant = Caller(f"watch for {t.name}", t.name)
            paths = replace(config, paths=t.manifests)
            found.append(Member(tenant, paths, f"watch-scopes.{t.name}.json", confined=True, rules=HostRules.of(host, tenant)))
    own = tuple(p for p in config.paths if host.tenant_of_directory(p) is None)
    if own:
        found.append(Member(ADMIN, replace(config, paths=own), rules=HostRules.of(host, ADMIN)))
    return found


def watched_paths(group: Sequence[Member]) -> tuple[Path, ...]:
    """Every path of every member that exists now (watchfiles needs them; a directory made later is read
    at the next resync, and watched from the next start)."""
    return tuple(dict.fromkeys(p for m in group for p in m.config.paths if p.exists()))


class Reconcilers:
    """The Reconcilers of a watch, run one after another; used as one Reconciler is (run, managed, close)."""

    def __init__(
        self,
        group: Sequence[Member],
        log: Log,
        events: EventLog,
        policy: UsbPolicy | None,
        *,
        open_host: Callable[[WatchConfig], Host] | None = None,
    ) -> None:
        self.members = [
            Reconciler(m.config, log, events, policy, open_host=open_host, caller=m.caller, scopes_file=m.scopes_file, confined=m.confined, rules=m.rules)
            for m in group
        ]
        # The host as the last run observed it, for the API's reads (None: no API, nothing to publish to).
        self.snapshots: Snapshots | None = None

    @property
    def managed(self) -> frozenset[str]:
        return frozenset().union(*(r.managed for r in self.members))

    def run(self, reasons: frozenset[str], *, load: bool | None = None) -> RunReport:
        started = time.time()
        reports = [r.run(reasons, load=load) for r in self.members]
        self._publish(started)
        if not reports:
            return RunReport("idle", None, frozenset())
        outcome = min((r.outcome for r in reports), key=OUTCOMES.index)
        prunes = [r.prune_due for r in reports if r.prune_due is not None]
        retries = [r.retry_due for r in reports if r.retry_due is not None]
        return RunReport(outcome, min(prunes, default=None), self.managed, min(retries, default=None))

    def _publish(self, started: float) -> None:
        """The host as the run left it becomes the API's snapshot: the first member's observation, that of
        the host the API reads (on the libvirt test driver every connection has a private host). With one
        member, that member's reconcile observed it last; with more, the others ran after it, so it is
        observed again."""
        if not self.members or self.snapshots is None:
            return
        first = self.members[0]
        host = first.host
        if host is None:
            return  # libvirt out of reach: the last snapshot stays, with its time
        with contextlib.suppress(EpfiotError):
            if len(self.members) == 1 and first.observed is not None:
                self.snapshots.publish(host, first.observed, started)
            else:
                self.snapshots.observe(host)

    # --- for the API (epfiot.api): the host, readiness, the last run, metrics --------------------------------

    def live(self) -> Live:
        """The first member's host connection (in the worker thread): on the libvirt test driver, whose
        every connection has a private host, the API sees what that member applied."""
        return replace(self.members[0].live(), snapshots=self.snapshots)

    @property
    def ready(self) -> tuple[bool, str]:
        for r in self.members:
            ready, why = r.ready
            if not ready:
                return ready, why
        return True, "reconciled, libvirt reachable"

    @property
    def last_run(self) -> dict[str, Any] | None:
        """The members' last runs as one: their actions, outcomes and summaries together."""
        runs = [r.last_run for r in self.members if r.last_run is not None]
        if not runs:
            return None
        if len(runs) == 1:
            return runs[0]
        plans = [run["plan"] for run in runs]
        summary: dict[str, int] = {}
        for plan in plans:
            for verb, count in plan["summary"].items():
                summary[verb] = summary.get(verb, 0) + count
        return {
            "at": max(run["at"] for run in runs),
            "reasons": sorted({reason for run in runs for reason in run["reasons"]}),
            "outcome": min((run["outcome"] for run in runs), key=OUTCOMES.index),
            "seconds": round(sum(run["seconds"] for run in runs), 3),
            "plan": {
                "actions": [a for plan in plans for a in plan["actions"]],
                "problems": [p for plan in plans for p in plan["problems"]],
                "summary": summary,
            },
            "outcomes": [o for run in runs for o in run["outcomes"]],
        }

    def observe_with(self, observer: Observer) -> None:
        for r in self.members:
            r.observe_with(observer)

    def drop_host(self) -> None:
        for r in self.members:
            r.drop_host()

    def close(self) -> None:
        for r in self.members:
            r.close()
