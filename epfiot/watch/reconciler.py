"""The reconcile of watch: the last valid manifests, the removal rule and the scopes of removed stacks,
each failed action requeued on its own; one run is one epfiot.reconcile.run_once. Runs in watch's worker
thread (one connection, one registry handle)."""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from epfiot.errors import EpfiotError, HostError, ManifestError, ManifestProblem
from epfiot.eventlog import EventLog
from epfiot.hostconfig import ADMIN, Caller, HostConfig
from epfiot.logs import Log
from epfiot.model import Desired
from epfiot.plan.host_rules import HostRules
from epfiot.salts import SaltStore
from epfiot.watch.config import WatchConfig, manifest_files
from epfiot.watch.reporter import PlannedRun, RunReport, WatchReporter
from epfiot.watch.runs import Observer, record_run
from epfiot.watch.schedule import STARTUP_KEY, RemovalGate, Requeue, desired_keys
from epfiot.watch.scopes import SCOPES_FILE, ScopeMemory, is_under, scope_is_empty, with_scopes
from epfiot.wording import counted

if TYPE_CHECKING:
    from epfiot.api.backend import Live
    from epfiot.apply import Outcome
    from epfiot.host import Host
    from epfiot.model import Observed
    from epfiot.plan import Plan
    from epfiot.policy import UsbPolicy
    from epfiot.reconcile import Result
    from epfiot.registry import Registry

# The reasons that read the manifests again.
LOAD_REASONS = frozenset({"start", "manifest", "resync"})


class Reconciler:
    """One full reconcile per call of `run`. Lives in (and is only used from) the worker thread."""

    def __init__(
        self,
        config: WatchConfig,
        log: Log,
        events: EventLog,
        policy: UsbPolicy | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        open_host: Callable[[WatchConfig], Host] | None = None,
        caller: Caller = ADMIN,
        scopes_file: str = SCOPES_FILE,
        confined: bool = False,
        rules: HostRules | None = None,
    ) -> None:
        self.config = config
        # The host's rules for the caller: its plans are checked against the whole host (other tenants'
        # networks, USB devices held by any domain, endpoints, quotas). None: a host without a configuration.
        self.rules = rules if rules is not None else HostRules.of(HostConfig(), caller)
        # Whom the manifests under config.paths act for (epfiot.authz): a tenant's may name only itself as
        # owner. Its events carry the tenant, so that it sees them (epfiot.service.event_owner).
        self.caller = caller
        self.tag: dict[str, object] = {} if caller.tenant is None else {"tenant": caller.tenant}
        # Read for someone who cannot read all this process can (watch as root, for a tenant): the
        # manifests' {file:} secrets only from under its own paths, {env:} ones not from this environment.
        self.confined = confined
        self.clock = clock
        self.open_host = open_host or _open_libvirt
        self.log = log
        self.events = events
        self.policy = policy
        self.host: Host | None = None
        self.registry: Registry | None = None
        self.desired: Desired | None = None  # the last valid desired state
        self.converged: Desired | None = None  # the desired state the host last matched
        self.gate = RemovalGate(config.prune_after, clock())
        self.scopes = ScopeMemory(config.state_dir / scopes_file, config.paths)
        self.scopes.load()
        self.salts = SaltStore.in_state_dir(config.state_dir)  # one for the daemon: it checks each hash once
        self.requeue = Requeue()
        self.reporter = WatchReporter(log, events, self._planned)
        self.managed: frozenset[str] = frozenset()
        self._run: PlannedRun | None = None
        self._shown_problems: tuple[str, ...] = ()
        self._shown_plan_problems: tuple[str, ...] = ()
        self._shown_waits: tuple[str, ...] = ()
        self._unavailable = False
        self.observer: Observer | None = None
        self.last_run: dict[str, Any] | None = None  # what the last reconcile planned and did (GET /api/v1/plan)
        self._result: tuple[Result, float] | None = None
        self.observed: Observed | None = None  # what this run last observed of the host (epfiot.snapshot)

    def observe_with(self, observer: Observer) -> None:
        self.observer = self.reporter.observer = observer

    @property
    def ready(self) -> tuple[bool, str]:
        """The first reconcile is done and libvirt answered the last one."""
        if self.last_run is None:
            return False, "the first reconcile has not finished"
        if self.host is None or self._unavailable:
            return False, f"libvirt at {self.config.uri} is not reachable"
        return True, "reconciled, libvirt reachable"

    def live(self) -> Live:
        """The host connection and registry, for an API operation (in the worker thread)."""
        from epfiot.api.backend import Live

        host = self._open()
        return Live(host, self.registry, self.config.state_dir, self.events, self.policy, self.config, self.observer)

    # --- loading -------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the manifests; on success they become the desired state, else the last valid one stays."""
        try:
            desired = self._load_manifests()
        except ManifestError as error:
            problems = tuple(str(p) for p in error.problems)
            if problems != self._shown_problems:
                self._shown_problems = problems
                kept = "the last valid manifests stay in force" if self.desired else "waiting for valid manifests"
                self.log("manifest.invalid", f"{counted(len(problems), 'problem')}; nothing changes, {kept}", level="error", count=len(problems))
                for problem in error.problems:
                    text = f"{problem.path}: {problem.message}" if problem.path else problem.message
                    self.log("manifest.problem", text, subject=f"{problem.file}:{problem.line}", level="error", file=problem.file, line=problem.line, path=problem.path)
                self.events.record("manifest.invalid", "watch", "; ".join(problems)[:4000], problems=list(problems), **self.tag)
            return
        except (OSError, UnicodeDecodeError) as error:  # a file vanished or is being written: the next change retries
            text = f"cannot read the manifests: {error}"
            if (text,) != self._shown_problems:
                self._shown_problems = (text,)
                self.log("manifest.invalid", text, level="error")
                self.events.record("manifest.invalid", "watch", text, **self.tag)
            return
        if self._shown_problems:
            self._shown_problems = ()
            self.log("manifest.valid", "the manifests are valid again")
        if desired == self.desired:
            return
        now = self.clock()
        first = self.desired is None
        self.desired = desired
        self.scopes.remember(desired)
        gone = self.gate.update(desired_keys(desired), now)
        self.log(
            "manifest.loaded",
            f"{counted(len(desired.stacks), 'stack')}, {counted(len(desired.vms), 'vm')}, {counted(len(desired.networks), 'network')}, {counted(len(desired.things), 'thing')}"
            + (" (initial)" if first else ""),
            stacks=len(desired.stacks),
            vms=len(desired.vms),
        )
        for key in gone:
            self.log("removal.pending", f"no longer declared; pruned once it has stayed so for {self.config.prune_after:g}s", subject=key, key=key)
            self.events.record("removal.pending", key, f"no longer declared; pruned after {self.config.prune_after:g}s")

    def _load_manifests(self) -> Desired:
        from epfiot.service import Manifests, load_for

        files = [p for p in self.config.paths if p.is_file() or any(manifest_files(p))]
        if not files:
            return Desired()  # every manifest was removed: an empty desired state (the scopes remain)
        manifests = replace(Manifests.from_paths(files), secrets_dirs=self.config.secrets_dirs)
        if self.confined:
            # A link to a file outside its paths would have this process read it as a manifest.
            roots = self.config.paths
            outside = [f for p in files for f in manifest_files(p) if not any(is_under(f.resolve(), r) for r in roots)]
            if outside:
                raise ManifestError([ManifestProblem(str(f), 0, "", "a link to a file outside the manifest directories: not read") for f in outside])
            manifests = replace(manifests, env={}, secret_dirs=roots)
        self.salts.reload()  # a run of this daemon, or another epfiot, may have dropped or renewed salts
        desired = load_for(self.caller, manifests, self.salts)
        self.salts.save()
        return desired

    # --- one run -----------------------------------------------------------------------------------------

    def run(self, reasons: frozenset[str], *, load: bool | None = None) -> RunReport:
        """One reconcile. `load`: read the manifests first (default: for the reasons that concern them:
        start, a manifest change, the resync); otherwise the last valid ones are used. A lifecycle event
        must not read files that are being written: their change is still being debounced."""
        self.observed = None
        if "reconnect" in reasons:
            self.drop_host()
        if load if load is not None else bool(reasons & LOAD_REASONS) or self.desired is None:
            self.load()
        if self.desired is None:
            return RunReport("idle", None, self.managed)
        try:
            outcome = self._reconcile(self.desired, reasons)
        except HostError as error:
            self.drop_host()  # a fresh connection next time: this one may be the problem
            if error.temporary:
                # Once per outage, then quietly (the retries are debug lines).
                level = "debug" if self._unavailable else "warning"
                self._unavailable = True
                self.log("libvirt.unavailable", f"{error}; retrying", level=level, uri=self.config.uri)
                outcome = "disconnected"
            else:
                self.log("reconcile.failed", str(error), level="error")
                self.events.record("reconcile.failed", "watch", str(error), **self.tag)
                outcome = "failed"
        except EpfiotError as error:
            self.log("reconcile.failed", str(error), level="error")
            self.events.record("reconcile.failed", "watch", str(error), **self.tag)
            outcome = "failed"
        except Exception as error:  # a bug: never fatal for the daemon, but keep the traceback
            self.log("reconcile.failed", f"unexpected error (a bug in epfiot): {error!r}", level="error", traceback=traceback.format_exc())
            self.events.record("reconcile.failed", "watch", f"unexpected error: {error!r}", **self.tag)
            self.drop_host()
            outcome = "failed"
        self._record(reasons, outcome)
        return RunReport(outcome, self.gate.due(), self.managed, self.requeue.due())

    def _record(self, reasons: frozenset[str], outcome: str) -> None:
        taken, self._result = self._result, None
        if taken is not None:
            self.last_run = record_run(taken[0], taken[1], reasons, outcome, self.observer, self.registry)

    def _open(self) -> Host:
        if self.host is None:
            self.host = self.open_host(self.config)
            self._unavailable = False
            self.log("libvirt.connected", f"connected to {self.config.uri}", uri=self.config.uri)
        if self.registry is None:
            from epfiot.registry import Registry

            self.registry = Registry(self.config.state_dir / "registry.db")
        return self.host

    def _reconcile(self, desired: Desired, reasons: frozenset[str]) -> str:
        from epfiot.plan import Options
        from epfiot.reconcile import CreatePool, HostLock, Request, run_once

        started = time.monotonic()
        config = self.config
        host = self._open()
        # Remembered scopes are the caller's own only, whatever the scopes file says (it may predate tenants).
        retained = tuple(s for s in self.scopes.retained(desired) if self.caller.may_touch(s.owner))
        now = self.clock()
        prune = self.gate.prune_allowed(now)
        urgent = "manifest" in reasons  # a saved file does not wait for a failed action's backoff
        run = self._run = PlannedRun(desired, with_scopes(desired, retained), retained, reasons, now, prune)
        request = Request(
            host,
            run.planning,
            Options(prune=prune),
            self.registry,
            self.policy,
            pool=CreatePool(config.image_pool, config.image_dir),
            lock=HostLock(config.state_dir, config.uri),
            parallel=config.parallel,
            skip=lambda action: self.requeue.held(action, now, urgent=urgent),
            reporter=self.reporter,
            rules=self.rules,
        )
        result = run_once(request)
        self.observed = result.observed
        elapsed = time.monotonic() - started
        self._result = (result, elapsed)
        if result.plan.problems:
            return "failed"
        if not result.outcomes:
            if result.held:
                held = ", ".join(a.address for a in result.held)
                self.log("reconcile.done", f"{counted(len(result.held), 'failed action')} waiting to be retried: {held} ({elapsed:.2f}s)", level="debug", reasons=sorted(reasons), changes=0)
                return "requeued"
            self.converged = desired
            self.log("reconcile.done", f"in sync ({elapsed:.2f}s)", level="info" if reasons & {"start", "manifest", "reconnect"} else "debug", reasons=sorted(reasons), changes=0)
            return "ok"
        failed = self._requeue(result.outcomes)
        if failed:
            self.log("reconcile.done", f"{len(result.outcomes) - failed} done, {failed} failed ({elapsed:.2f}s); each failed action is retried on its own", level="warning", reasons=sorted(reasons), changes=len(result.outcomes), failed=failed)
            # A connection the daemon dropped mid-apply fails every action: open a fresh one next time.
            self.drop_host()
            return "requeued"
        if result.remaining:
            for action in result.remaining:
                self.log("reconcile.unconverged", f"still to {action.verb} after applying: {action.reason}", subject=action.address, level="warning")
            return "failed"
        self.log("reconcile.done", f"{len(result.outcomes)} done ({elapsed:.2f}s)", reasons=sorted(reasons), changes=len(result.outcomes), failed=0)
        if result.held:
            return "requeued"
        self.converged = desired
        return "drift" if run.drift else "ok"

    def _planned(self, result: Result, applying: bool) -> None:
        """Between planning and applying (the reporter's `planned`): the scopes, the removal rule, the
        domains whose events matter, and the log of the plan."""
        from epfiot.plan import Verb

        run = self._run
        assert run is not None, "planned outside a run"
        observed, plan = result.observed, result.plan
        empty = [(s.owner, s.name) for s in run.retained if scope_is_empty(observed, s.owner, s.name)]
        if empty:
            self.scopes.forget(empty)
            for owner, stack in empty:
                self.log("scope.forgotten", "stack removed from the manifests and nothing of it is left", subject=f"stack/{owner}/{stack}")
        scopes = run.planning.scopes()
        self.managed = frozenset(v.libvirt_name for v in run.desired.vms) | frozenset(
            v.libvirt_name for v in observed.vms if v.ownership is not None and (v.ownership.owner, v.ownership.stack) in scopes
        )
        released = self.gate.pruned(run.now) if run.prune else []
        for key in released:
            if key != STARTUP_KEY:
                self.log("removal.stable", f"still not declared after {self.config.prune_after:g}s: pruned", subject=key, key=key)
        waiting = self.gate.waiting(run.now)
        if waiting and not run.prune:
            held = ", ".join(sorted(k for k in waiting if k != STARTUP_KEY)) or "start-up"
            self.log("prune.held", f"pruning held for {max(waiting.values()):.1f}s more ({held})", level="debug")
        self.scopes.save()
        self.requeue.settle(plan)
        if plan.problems:
            self._plan_problems(plan)
            return
        self._shown_plan_problems = ()
        self._show_waits(plan)
        for action in result.held:
            self.log("action.held", "failed earlier: waits for its retry", subject=action.address, level="debug")
        if not applying:
            return
        # Drift: the host no longer matches what it matched, the manifests being the same (pruning that
        # was held until now is no drift).
        run.drift = [a for a in plan.changes if self.converged == run.desired and not (released and a.verb is Verb.DESTROY)]
        self.converged = None
        self.log(
            "plan",
            f"{plan.count(Verb.CREATE)} to create, {plan.count(Verb.UPDATE)} to change, {plan.count(Verb.DESTROY)} to destroy"
            + (" (drift)" if run.drift else ""),
            reasons=sorted(run.reasons),
            changes=len(plan.changes),
            prune=run.prune,
        )
        for action in run.drift:
            if self.observer is not None:
                self.observer.drift_corrected(action.kind.value)
            self.log("drift", action.reason, subject=action.address, level="warning")
            self.events.record("drift", action.address, action.reason, source="watch")

    def _requeue(self, outcomes: tuple[Outcome, ...]) -> int:
        """Each failed action is retried on its own (Requeue); returns how many failed."""
        now = self.clock()
        failed = 0
        for outcome in outcomes:
            if outcome.ok:
                self.requeue.succeeded(outcome.action)
                continue
            failed += 1
            delay = self.requeue.failed(outcome, now)
            when = "held until it changes" if delay is None else f"retried in {delay:g}s"
            self.log("retry.scheduled", f"{outcome.retry} failure: {when}", subject=outcome.action.address, level="debug", retry=outcome.retry, delay=delay)
        return failed

    def _plan_problems(self, plan: Plan) -> None:
        if plan.problems != self._shown_plan_problems:
            self._shown_plan_problems = plan.problems
            self.log("plan.invalid", f"{counted(len(plan.problems), 'problem')} in the plan; nothing is changed", level="error")
            for problem in plan.problems:
                self.log("plan.problem", problem, level="error")
            self.events.record("plan.invalid", "watch", "; ".join(plan.problems)[:4000], problems=list(plan.problems), **self.tag)

    def _show_waits(self, plan: Plan) -> None:
        from epfiot.plan import Verb

        waits = tuple(f"{a.address}: {a.reason}" for a in plan.actions if a.verb is Verb.WAIT)
        if waits != self._shown_waits:
            self._shown_waits = waits
            for action in plan.actions:
                if action.verb is Verb.WAIT:
                    self.log("action.wait", action.reason, subject=action.address, level="warning")

    def drop_host(self) -> None:
        host, self.host = self.host, None
        if host is not None:
            with contextlib.suppress(Exception):
                host.close()

    def close(self) -> None:
        self.drop_host()
        registry, self.registry = self.registry, None
        if registry is not None:
            registry.close()
        with contextlib.suppress(OSError):
            self.scopes.save()


def _open_libvirt(config: WatchConfig) -> Host:
    from epfiot.libvirt.host import LibvirtHost

    return LibvirtHost.open(config.uri, image_pool=config.image_pool, virt_type=config.virt_type)
