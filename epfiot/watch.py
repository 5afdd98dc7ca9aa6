"""epfiot watch: keep the host matching the manifests of some directories, for as long as it runs.

Level-based, like controller-runtime and kopf: every trigger runs one full reconcile (load the manifests,
observe the host, plan, apply) under the host lock, never a patch derived from the trigger itself.
The triggers:

- a manifest change under a watched path (watchfiles), once the files have been quiet for --debounce s;
- a libvirt lifecycle event on a domain that watch manages (a VM stopped by hand is running again within
  seconds); the event only says "look again";
- the periodic resync (--resync s), which also catches what no event reports;
- a reconnect to libvirt after the daemon restarted or went away (with exponential backoff, capped);
- a retry after a failed action (with backoff), and the moment a removal becomes stable enough to prune.

Triggers arriving during a reconcile coalesce into one more run. The libvirt work runs in one worker thread
(one connection, one registry handle); the asyncio loop hosts watchfiles, the timers, the signal handlers
and the LwM2M bootstrap server.

Git-safety. Invalid manifests (a half-written file, a YAML or schema error) are logged with file:line and
change nothing: the last valid desired state stays in force and drift keeps being corrected against it.
Pruning follows the removal rule of `RemovalGate` (docs/watch.md): a reconcile prunes only when nothing the
manifests declared has disappeared within the last --prune-after seconds (nor in the first --prune-after
seconds after start). A stack whose file was removed keeps its (owner, stack) scope in the plans, so its
resources do get pruned; the scopes seen under the watched paths are kept in the state directory
(watch-scopes.json), so that this still happens when the file was removed while watch was not running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epfiot.errors import EpfiotError, HostError, ManifestError, UsageError
from epfiot.logs import Format, Log
from epfiot.model import Desired, Observed, StackSpec

if TYPE_CHECKING:
    from epfiot.apply import Outcome
    from epfiot.eventlog import EventLog
    from epfiot.host import Host
    from epfiot.plan import Action, Plan
    from epfiot.policy import UsbPolicy
    from epfiot.registry import Registry

MANIFEST_SUFFIXES = (".yaml", ".yml")
SCOPES_FILE = "watch-scopes.json"
LOAD_REASONS = frozenset({"start", "manifest", "resync"})
STARTUP_KEY = "(watch started)"

# Backoff after a failed reconcile (seconds): connection problems retry fast, failed actions slower.
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


# --- pure parts ---------------------------------------------------------------------------------------------


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

    def due(self, now: float, prune_due: float | None = None) -> float:
        """The time the next run should start (may be in the past: at once)."""
        hold = self._hold(now)

        def after_hold(t: float) -> float:
            return t if hold is None else max(t, hold)

        candidates = [after_hold(self.resync_at)]
        if self.files_due is not None:
            candidates.append(self.files_due)
        if self.pending:
            candidates.append(after_hold(now))
        if prune_due is not None:
            candidates.append(after_hold(prune_due))
        return min(candidates)

    def take(self, now: float, prune_due: float | None = None) -> frozenset[str]:
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
        if self.pending and (free or reasons):
            reasons |= self.pending
        if reasons:
            self.pending.clear()
            self.retry_at = None
        return frozenset(reasons)

    def finished(self, now: float, outcome: str) -> float | None:
        """After a run: "ok", "drift" (ok, and corrected drift), "failed" or "disconnected".
        Returns the delay before the retry, if any."""
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


def is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class ScopeMemory:
    """The (owner, stack) scopes seen in the manifests under the watched paths, kept in the state directory.

    A stack whose file is gone is still planned, as an empty stack, so that its resources get pruned; a
    scope is forgotten once nothing managed is left in it. Only scopes declared in files under the current
    watched paths are retained: the entries of other watch processes (or of other directories watched
    earlier) are kept in the file untouched and never pruned by this one.
    """

    def __init__(self, path: Path, roots: Iterable[Path]) -> None:
        self.path = path
        self.roots = tuple(roots)
        self.mine: dict[tuple[str, str], str] = {}
        self.others: list[dict[str, str]] = []
        self.dirty = False

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            entries = data.get("scopes", []) if isinstance(data, dict) else []
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            entries = []  # unreadable: start afresh (it is rewritten at the next change)
        for entry in entries:
            if not (isinstance(entry, dict) and {"owner", "stack", "file"} <= entry.keys()):
                continue
            if any(is_under(Path(entry["file"]), root) for root in self.roots):
                self.mine[(entry["owner"], entry["stack"])] = entry["file"]
            else:
                self.others.append({k: str(entry[k]) for k in ("owner", "stack", "file")})

    def remember(self, desired: Desired) -> None:
        for stack in desired.stacks:
            file = stack.source.file
            if not os.path.isabs(file):
                file = str(Path(file).resolve())
            if self.mine.get((stack.owner, stack.name)) != file:
                self.mine[(stack.owner, stack.name)] = file
                self.dirty = True

    def retained(self, desired: Desired) -> tuple[StackSpec, ...]:
        """Scopes remembered but no longer declared: planned as empty stacks (their content is pruned)."""
        declared = desired.scopes()
        return tuple(StackSpec(owner=o, name=s) for (o, s) in sorted(self.mine) if (o, s) not in declared)

    def forget(self, scopes: Iterable[tuple[str, str]]) -> None:
        for scope in scopes:
            if self.mine.pop(scope, None) is not None:
                self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        entries = [*self.others, *({"owner": o, "stack": s, "file": f} for (o, s), f in sorted(self.mine.items()))]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "scopes": entries}, indent=1) + "\n")
        os.replace(tmp, self.path)
        self.dirty = False


def scope_is_empty(observed: Observed, owner: str, stack: str) -> bool:
    """Nothing managed by epfiot is left in (owner, stack)."""
    ownerships = [v.ownership for v in observed.vms] + [n.ownership for n in observed.networks]
    if any(o is not None and o.owner == owner and o.stack == stack for o in ownerships):
        return False
    return not any(t.owner == owner and t.stack == stack for t in observed.things)


def with_scopes(desired: Desired, extra: tuple[StackSpec, ...]) -> Desired:
    return replace(desired, stacks=desired.stacks + extra) if extra else desired


# --- configuration ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchConfig:
    paths: tuple[Path, ...]
    uri: str
    state_dir: Path
    image_pool: str
    image_dir: str
    virt_type: str | None
    policy: Path | None
    resync: float
    debounce: float
    prune_after: float
    parallel: int
    serve: bool
    bind: str
    port: int
    log_format: Format
    verbose: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WatchConfig:
        from epfiot.state import default_state_dir

        if "-" in args.files:
            raise UsageError("watch needs files or directories to watch; standard input (-) cannot be watched")
        paths = []
        for name in args.files:
            path = Path(name).resolve()
            if not path.exists():
                raise UsageError(f"{name}: no such file or directory (watch needs it to exist)")
            paths.append(path)
        for option in ("resync", "debounce", "prune_after"):
            if getattr(args, option) < 0:
                raise UsageError(f"--{option.replace('_', '-')} must not be negative")
        if args.resync == 0:
            raise UsageError("--resync must be positive")
        return cls(
            paths=tuple(paths),
            uri=str(args.connect or os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system"),
            state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(),
            image_pool=args.image_pool,
            image_dir=args.image_dir,
            virt_type=args.virt_type,
            policy=args.policy,
            resync=args.resync,
            debounce=args.debounce,
            prune_after=args.prune_after,
            parallel=max(1, args.parallel),
            serve=args.serve,
            bind=args.bind,
            port=args.port,
            log_format=args.log_format,
            verbose=bool(getattr(args, "verbose", False)),
        )

    @property
    def watch_roots(self) -> tuple[Path, ...]:
        """Directories to watch: the given directories, and the parent of each given file (an editor's
        atomic save replaces the file: only its directory sees that)."""
        roots: list[Path] = []
        for path in self.paths:
            root = path if path.is_dir() else path.parent
            if not any(is_under(root, r) for r in roots):
                roots = [r for r in roots if not is_under(r, root)] + [root]
        return tuple(roots)


# --- the reconciler (runs in the worker thread) ---------------------------------------------------------------


@dataclass(frozen=True)
class RunReport:
    outcome: str  # "ok" | "drift" | "failed" | "disconnected" | "idle" (no valid manifests yet)
    prune_due: float | None  # when a held removal becomes stable (monotonic)
    managed: frozenset[str]  # libvirt names of the domains whose events matter


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
    ) -> None:
        self.config = config
        self.clock = clock
        self.log = log
        self.events = events
        self.policy = policy
        self.host: Host | None = None
        self.registry: Registry | None = None
        self.desired: Desired | None = None  # the last valid desired state
        self.converged: Desired | None = None  # the desired state the host last matched
        self.gate = RemovalGate(config.prune_after, clock())
        self.scopes = ScopeMemory(config.state_dir / SCOPES_FILE, config.paths)
        self.scopes.load()
        self.managed: frozenset[str] = frozenset()
        self._shown_problems: tuple[str, ...] = ()
        self._shown_plan_problems: tuple[str, ...] = ()
        self._shown_waits: tuple[str, ...] = ()
        self._unavailable = False

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
                self.log("manifest.invalid", f"{len(problems)} problem(s); nothing changes, {kept}", level="error", count=len(problems))
                for problem in error.problems:
                    text = f"{problem.path}: {problem.message}" if problem.path else problem.message
                    self.log("manifest.problem", text, subject=f"{problem.file}:{problem.line}", level="error", file=problem.file, line=problem.line, path=problem.path)
                self.events.record("manifest.invalid", "watch", "; ".join(problems)[:4000], problems=list(problems))
            return
        except (OSError, UnicodeDecodeError) as error:  # a file vanished or is being written: the next change retries
            text = f"cannot read the manifests: {error}"
            if (text,) != self._shown_problems:
                self._shown_problems = (text,)
                self.log("manifest.invalid", text, level="error")
                self.events.record("manifest.invalid", "watch", text)
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
            f"{len(desired.stacks)} stacks, {len(desired.vms)} vms, {len(desired.networks)} networks, {len(desired.things)} things"
            + (" (initial)" if first else ""),
            stacks=len(desired.stacks),
            vms=len(desired.vms),
        )
        for key in gone:
            self.log("removal.pending", f"no longer declared; pruned once it has stayed so for {self.config.prune_after:g}s", subject=key, key=key)
            self.events.record("removal.pending", key, f"no longer declared; pruned after {self.config.prune_after:g}s")

    def _load_manifests(self) -> Desired:
        from epfiot.desired import load_manifests

        files = [p for p in self.config.paths if p.is_file() or any(_manifest_files(p))]
        if not files:
            return Desired()  # every manifest was removed: an empty desired state (the scopes remain)
        return load_manifests([str(p) for p in files])

    # --- one run -----------------------------------------------------------------------------------------

    def run(self, reasons: frozenset[str], *, load: bool | None = None) -> RunReport:
        """One reconcile. `load`: read the manifests first (default: for the reasons that concern them:
        start, a manifest change, the resync); otherwise the last valid ones are used. A lifecycle event
        must not read files that are being written: their change is still being debounced."""
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
                self.events.record("reconcile.failed", "watch", str(error))
                outcome = "failed"
        except EpfiotError as error:
            self.log("reconcile.failed", str(error), level="error")
            self.events.record("reconcile.failed", "watch", str(error))
            outcome = "failed"
        except Exception as error:  # a bug: never fatal for the daemon, but keep the traceback
            self.log("reconcile.failed", f"unexpected error (a bug in epfiot): {error!r}", level="error", traceback=traceback.format_exc())
            self.events.record("reconcile.failed", "watch", f"unexpected error: {error!r}")
            self.drop_host()
            outcome = "failed"
        return RunReport(outcome, self.gate.due(), self.managed)

    def _open(self) -> Host:
        if self.host is None:
            from epfiot.libvirt.host import LibvirtHost

            self.host = LibvirtHost.open(self.config.uri, image_pool=self.config.image_pool, virt_type=self.config.virt_type)
            self._unavailable = False
            self.log("libvirt.connected", f"connected to {self.config.uri}", uri=self.config.uri)
        if self.registry is None:
            from epfiot.registry import Registry

            self.registry = Registry(self.config.state_dir / "registry.db")
        return self.host

    def _reconcile(self, desired: Desired, reasons: frozenset[str]) -> str:
        from epfiot.plan import Options, Verb
        from epfiot.reconcile import apply_plan, observe, plan_changes
        from epfiot.state import host_lock

        started = time.monotonic()
        host = self._open()
        with host_lock(self.config.state_dir, self.config.uri, on_wait=lambda m: self.log("lock.wait", m, level="warning")):
            retained = self.scopes.retained(desired)
            if any(vm.image or vm.credentials for vm in desired.vms):
                host.ensure_image_pool(self.config.image_dir)
            observed = observe(host, self.registry, with_scopes(desired, retained))
            empty = [(s.owner, s.name) for s in retained if scope_is_empty(observed, s.owner, s.name)]
            if empty:
                self.scopes.forget(empty)
                for owner, stack in empty:
                    self.log("scope.forgotten", "stack removed from the manifests and nothing of it is left", subject=f"stack/{owner}/{stack}")
                retained = tuple(s for s in retained if (s.owner, s.name) not in empty)
            planning = with_scopes(desired, retained)
            self.managed = frozenset(v.libvirt_name for v in desired.vms) | frozenset(
                v.libvirt_name
                for v in observed.vms
                if v.ownership is not None and (v.ownership.owner, v.ownership.stack) in planning.scopes()
            )
            now = self.clock()
            prune = self.gate.prune_allowed(now)
            plan = plan_changes(planning, observed, Options(prune=prune), self.policy)
            released = self.gate.pruned(now) if prune else []
            for key in released:
                if key != STARTUP_KEY:
                    self.log("removal.stable", f"still not declared after {self.config.prune_after:g}s: pruned", subject=key, key=key)
            waiting = self.gate.waiting(now)
            if waiting and not prune:
                held = ", ".join(sorted(k for k in waiting if k != STARTUP_KEY)) or "start-up"
                self.log("prune.held", f"pruning held for {max(waiting.values()):.1f}s more ({held})", level="debug")
            self.scopes.save()
            if plan.problems:
                return self._plan_problems(plan)
            self._shown_plan_problems = ()
            self._show_waits(plan)
            if not plan.changes:
                self.converged = desired
                self.log("reconcile.done", f"in sync ({time.monotonic() - started:.2f}s)", level="info" if reasons & {"start", "manifest", "reconnect"} else "debug", reasons=sorted(reasons), changes=0)
                return "ok"
            # Drift: the host no longer matches what it matched, the manifests being the same (pruning that
            # was held until now is no drift).
            drift = [
                a for a in plan.changes if self.converged == desired and not (released and a.verb is Verb.DESTROY)
            ]
            self.converged = None
            self.log(
                "plan",
                f"{plan.count(Verb.CREATE)} to create, {plan.count(Verb.UPDATE)} to change, {plan.count(Verb.DESTROY)} to destroy"
                + (" (drift)" if drift else ""),
                reasons=sorted(reasons),
                changes=len(plan.changes),
                prune=prune,
            )
            if drift:
                for action in drift:
                    self.log("drift", action.reason, subject=action.address, level="warning")
                    self.events.record("drift", action.address, action.reason, source="watch")
            result = apply_plan(
                plan, planning, host, self.registry, Options(prune=prune), self.policy, parallel=self.config.parallel, progress=self._progress
            )
        failed = result.failed
        elapsed = time.monotonic() - started
        if failed:
            self.log("reconcile.done", f"{len(result.outcomes) - len(failed)} done, {len(failed)} failed ({elapsed:.2f}s); retrying later", level="warning", reasons=sorted(reasons), changes=len(result.outcomes), failed=len(failed))
            # A connection the daemon dropped mid-apply fails every action: open a fresh one next time.
            self.drop_host()
            return "failed"
        self.converged = desired
        self.log("reconcile.done", f"{len(result.outcomes)} done ({elapsed:.2f}s)", reasons=sorted(reasons), changes=len(result.outcomes), failed=0)
        return "drift" if drift else "ok"

    def _plan_problems(self, plan: Plan) -> str:
        if plan.problems != self._shown_plan_problems:
            self._shown_plan_problems = plan.problems
            self.log("plan.invalid", f"{len(plan.problems)} problem(s) in the plan; nothing is changed", level="error")
            for problem in plan.problems:
                self.log("plan.problem", problem, level="error")
            self.events.record("plan.invalid", "watch", "; ".join(plan.problems)[:4000], problems=list(plan.problems))
        return "failed"

    def _show_waits(self, plan: Plan) -> None:
        from epfiot.plan import Verb

        waits = tuple(f"{a.address}: {a.reason}" for a in plan.actions if a.verb is Verb.WAIT)
        if waits != self._shown_waits:
            self._shown_waits = waits
            for action in plan.actions:
                if action.verb is Verb.WAIT:
                    self.log("action.wait", action.reason, subject=action.address, level="warning")

    def _progress(self, phase: str, action: Action, outcome: Outcome | None) -> None:
        if phase == "start" or outcome is None:
            self.log("action.start", f"{action.verb}: {action.reason}", subject=action.address, action=str(action.verb))
            return
        if outcome.ok:
            self.log("action.done", f"{action.verb} done ({outcome.seconds:.2f}s)", subject=action.address, action=str(action.verb), seconds=round(outcome.seconds, 3))
            self.events.record("action.done", action.address, f"{action.verb}: {action.reason}", seconds=round(outcome.seconds, 3), steps=[s.describe() for s in action.steps], source="watch")
        else:
            self.log("action.failed", f"{action.verb} failed: {outcome.error}", subject=action.address, level="error", action=str(action.verb), error=outcome.error)
            self.events.record("action.failed", action.address, f"{action.verb} failed: {outcome.error}", error=outcome.error, source="watch")

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


def _manifest_files(root: Path) -> Iterable[Path]:
    """The files the loader reads under a directory (hidden files and directories are skipped)."""
    if root.is_file():
        return [root]
    return (p for p in root.rglob("*") if is_manifest_path(p, root) and p.is_file())


def is_manifest_path(path: Path, root: Path) -> bool:
    if path.suffix not in MANIFEST_SUFFIXES:
        return False
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return False
    return not any(part.startswith(".") for part in parts)


# --- the asyncio side ---------------------------------------------------------------------------------------


class Watcher:
    def __init__(self, config: WatchConfig, log: Log) -> None:
        self.config = config
        self.log = log
        self.schedule = Schedule(config.debounce, config.resync, time.monotonic())
        self.schedule.trigger("start")
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.prune_due: float | None = None
        self.managed: frozenset[str] = frozenset()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="epfiot-reconcile")
        self.events_conn: Any = None
        self.events_lost = asyncio.Event()
        self.reconciler: Reconciler | None = None

    # --- triggers -----------------------------------------------------------------------------------------

    def _trigger(self, reason: str) -> None:
        self.schedule.trigger(reason)
        self.wake.set()

    def _files_changed(self, changes: set[tuple[Any, str]]) -> None:
        paths = sorted({path for _, path in changes})
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        self.log("manifest.changed", shown, level="debug", files=paths[:50])
        self.schedule.files_changed(time.monotonic())
        self.wake.set()

    def _libvirt_event(self, domain: str, event: str) -> None:  # in the loop thread
        # The reconciler publishes the names before it acts: the events of a VM it is creating count.
        managed = self.reconciler.managed if self.reconciler is not None else self.managed
        if domain not in managed:
            return
        crash = event.startswith(CRASH_EVENTS)
        self.log("libvirt.event", event, subject=domain, level="warning" if crash else "info", domain=domain)
        if crash and (delay := self.schedule.crashed(time.monotonic())) is not None:
            self.log("crash.backoff", f"crashes again and again: restarted in {delay:g}s", subject=domain, level="warning", delay=delay)
        self._trigger("event")

    def _libvirt_closed(self, reason: str) -> None:  # in the loop thread
        self.log("libvirt.disconnected", f"connection to {self.config.uri} lost: {reason}", level="warning", reason=reason)
        self.events_lost.set()

    def _stop(self, signame: str) -> None:
        if self.stopping.is_set():
            self.log("watch.stopping", f"{signame} again: still finishing the reconcile in progress", level="warning")
            return
        self.log("watch.stopping", f"{signame}: finishing the reconcile in progress, then exiting")
        self.stopping.set()
        self.wake.set()

    # --- tasks --------------------------------------------------------------------------------------------

    async def _watch_files(self) -> None:
        from watchfiles import DefaultFilter, awatch

        roots = self.config.watch_roots
        dirs = tuple(p for p in self.config.paths if p.is_dir())
        files = frozenset(p for p in self.config.paths if not p.is_dir())
        default = DefaultFilter()

        def accept(change: Any, path: str) -> bool:
            if not default(change, path):
                return False
            p = Path(path)
            if p in files:
                return True
            root = next((d for d in dirs if is_under(p, d)), None)
            if root is None:
                return False
            # A manifest, or something without a suffix that is no file: a directory moved or removed.
            return is_manifest_path(p, root) or (p.suffix == "" and not p.is_file() and not p.name.startswith("."))

        async for changes in awatch(*roots, watch_filter=accept, step=50, debounce=int(max(MAX_DEBOUNCE, self.config.debounce) * 1000), stop_event=self.stopping):
            self._files_changed(changes)

    async def _libvirt_events(self) -> None:
        """Keep an event connection open; reconnect with backoff when it breaks, then trigger a reconcile."""
        from epfiot.libvirt.events import DomainEvents

        loop = asyncio.get_running_loop()
        backoff = Backoff(*CONNECT_BACKOFF)
        connected_once = False

        def on_event(domain: str, event: str) -> None:
            loop.call_soon_threadsafe(self._libvirt_event, domain, event)

        def on_closed(reason: str) -> None:
            loop.call_soon_threadsafe(self._libvirt_closed, reason)

        while not self.stopping.is_set():
            conn = DomainEvents(self.config.uri, on_event, on_closed)
            try:
                await loop.run_in_executor(None, conn.open)
            except HostError as error:
                delay = backoff.next()  # the reconcile reports the outage (once); this is the detail
                self.log("libvirt.unavailable", f"event connection: {error}; again in {delay:g}s", level="debug")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                continue
            self.events_conn = conn
            if connected_once or backoff.failures:
                self.log("libvirt.reconnected", f"connected to {self.config.uri} again", uri=self.config.uri)
                self._trigger("reconnect")
            connected_once = True
            backoff.reset()
            self.events_lost.clear()
            stop = asyncio.ensure_future(self.stopping.wait())
            lost = asyncio.ensure_future(self.events_lost.wait())
            await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            lost.cancel()
            self.events_conn = None
            await loop.run_in_executor(None, conn.close)
            if not self.stopping.is_set():
                self._trigger("reconnect")  # the host connection most likely died too: reopen it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), backoff.next())

    async def _reconcile_loop(self, reconciler: Reconciler) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            now = time.monotonic()
            due = self.schedule.due(now, self.prune_due)
            if due > now:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), due - now)
                continue
            reasons = self.schedule.take(now, self.prune_due)
            if not reasons:  # pragma: no cover - due() and take() agree; never spin if they do not
                await asyncio.sleep(0.05)
                continue
            if "prune" in reasons:
                self.prune_due = None
            self.log("reconcile.start", ", ".join(sorted(reasons)), level="debug", reasons=sorted(reasons))
            # The resync reloads the manifests too (a change watchfiles missed), unless one is being debounced.
            load = bool(reasons & {"start", "manifest"}) or ("resync" in reasons and self.schedule.files_due is None)
            report = await loop.run_in_executor(self.worker, functools.partial(reconciler.run, reasons, load=load))
            self.managed = report.managed
            self.prune_due = report.prune_due
            if report.outcome == "idle":
                self.schedule.finished(time.monotonic(), "ok")
                continue
            delay = self.schedule.finished(time.monotonic(), report.outcome)
            if delay is not None and report.outcome in ("failed", "disconnected"):
                self.log("retry.scheduled", f"next attempt in {delay:g}s", level="debug", delay=delay)

    async def run(self, events: EventLog, policy: UsbPolicy | None) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig.name)

        from epfiot.libvirt.events import ensure_event_loop

        ensure_event_loop()  # before any libvirt connection: keepalive and close callbacks need it
        reconciler = self.reconciler = Reconciler(self.config, self.log, events, policy)
        server: Any = None
        if self.config.serve:
            server = await self._start_server(events)
            if server is None:
                await loop.run_in_executor(self.worker, reconciler.close)
                self.worker.shutdown()
                return 1
        paths = ", ".join(str(p) for p in self.config.paths)
        self.log(
            "watch.started",
            f"watching {paths} for {self.config.uri} (resync {self.config.resync:g}s, debounce {self.config.debounce:g}s, prune after {self.config.prune_after:g}s)",
            pid=os.getpid(),
            paths=[str(p) for p in self.config.paths],
            uri=self.config.uri,
        )
        tasks = [
            asyncio.create_task(self._watch_files(), name="files"),
            asyncio.create_task(self._libvirt_events(), name="libvirt-events"),
        ]
        main = asyncio.create_task(self._reconcile_loop(reconciler), name="reconcile")
        watched = [main, *tasks]
        code = 0
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    error = task.exception()
                    self.log("watch.failed", f"{task.get_name()}: {error!r}", level="error")
                    code = 1
                    self.stopping.set()
                    self.wake.set()
        finally:
            self.stopping.set()
            self.wake.set()
            with contextlib.suppress(Exception):
                await main  # the reconcile in progress finishes
            for task in tasks:
                if not task.done():
                    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                        await asyncio.wait_for(asyncio.shield(task), 2.0)
                    task.cancel()
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.stop()
            if self.events_conn is not None:
                await loop.run_in_executor(None, self.events_conn.close)
            await loop.run_in_executor(self.worker, reconciler.close)
            self.worker.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        self.log("watch.stopped", "stopped", code=code)
        return code

    async def _start_server(self, events: EventLog) -> Any:
        from epfiot.eventlog import describe_bootstrap
        from epfiot.lwm2m.server import BootstrapServer
        from epfiot.registry import Registry

        Registry(self.config.state_dir / "registry.db").close()  # created with its schema before serving

        def on_event(kind: str, fields: dict[str, object]) -> None:
            subject, message = describe_bootstrap(kind, fields)
            level = "warning" if kind.endswith(("failed", "refused")) else "info"
            extra = {k: v for k, v in fields.items() if k not in ("message", "subject", "level", "event")}
            self.log(kind, message, subject=subject, level=level, **extra)
            events.record(kind, subject, message, **fields)

        server = BootstrapServer(self.config.state_dir / "registry.db", self.config.bind, self.config.port, on_event=on_event)
        try:
            await server.start()
        except OSError as error:
            self.log("serve.failed", f"cannot serve LwM2M bootstrap on [{self.config.bind}]:{self.config.port}: {error}", level="error")
            return None
        self.log("serve.listening", f"LwM2M bootstrap server on [{self.config.bind}]:{server.port}", bind=self.config.bind, port=server.port)
        return server


def run_watch(args: argparse.Namespace) -> int:
    """epfiot watch: runs until SIGTERM or SIGINT; exit code 0 after a clean stop."""
    from epfiot.eventlog import EventLog
    from epfiot.policy import load_policy
    from epfiot.state import ensure_state_dir

    config = WatchConfig.from_args(args)
    log = Log(sys.stderr, config.log_format, verbose=config.verbose)
    handler = log.bridge_logging("epfiot", "aiocoap", level=10 if config.verbose else 30)
    ensure_state_dir(config.state_dir)
    policy = load_policy(config.policy)
    events = EventLog.in_state_dir(config.state_dir)
    try:
        return asyncio.run(Watcher(config, log).run(events, policy))
    finally:
        events.close()
        for name in ("epfiot", "aiocoap"):
            import logging

            logging.getLogger(name).removeHandler(handler)
