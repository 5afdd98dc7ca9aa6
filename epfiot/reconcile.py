"""The reconcile service: one run of host lock -> image pool -> observe -> plan -> apply -> check.

`run_once(Request) -> Result` is the one entry point: `epfiot plan`, `apply` and `delete`, watch, and any
later API call it alike, and learn what happens as it happens through one `Reporter`.

Reading (observe), deciding (plan) and acting (apply.execute) stay apart; this module only wires them and
adds what needs all three: USB claims resolved against the devices present, seed digests, the image pool,
a second pass for things whose VM got its address during the first, and the check that a fresh plan is
empty afterwards.

The image pool is a step of the run, not of the planner's plan: the planner plans against the pool it
observes, and a pool that does not exist yet holds no base images to plan with. So when a VM needs the
pool (for its disk or its seed) and the host has none, a dry run reports `Result.pool` as planned and
changes nothing, while a real run creates the pool first and observes again before planning (base images
already copied into its directory then show up).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from epfiot.apply import ActionReporter, Outcome, execute
from epfiot.desired.sources import unread_manifests
from epfiot.errors import PlanError
from epfiot.host import Host
from epfiot.model import (
    Desired,
    Observed,
    ObservedThing,
    ResourceWriteSpec,
    credentials_digest,
    libvirt_name,
)
from epfiot.plan import Action, HostRules, Kind, Options, Plan, UsbResolution, Verb, make_plan, plan_deletion
from epfiot.plan.steps import RemoveNetwork
from epfiot.psk import ThingKeys, key_file_path, read_key_file
from epfiot.wording import counted

if TYPE_CHECKING:
    from epfiot.policy import UsbPolicy
    from epfiot.registry import Registry, ThingRecord


@dataclass(frozen=True)
class CreatePool:
    """The image pool, a directory pool at `path`: created (or started) when the host has none running
    and a VM needs it."""

    name: str
    path: str

    @property
    def address(self) -> str:
        return f"pool/{self.name}"

    def describe(self) -> str:
        return f"create image pool (or start it), directory {self.path}"


@dataclass(frozen=True)
class HostLock:
    """The lock a run holds (epfiot.state.host_lock): one per libvirt URI, in the state directory."""

    state_dir: Path
    uri: str


@dataclass(frozen=True)
class Result:
    """What a run planned and did."""

    plan: Plan
    observed: Observed  # the host as last read: after applying, when anything was applied
    pool: CreatePool | None = None  # the image pool step: planned (a dry run) or done (pool_created)
    pool_created: bool = False
    outcomes: tuple[Outcome, ...] = ()
    held: tuple[Action, ...] = ()  # changes not run this time (Request.skip)
    remaining: tuple[Action, ...] = ()  # changes a fresh plan still has after applying: should be none

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)


class Reporter(ActionReporter, Protocol):
    """What a run tells its caller as it goes: the CLI prints it, watch logs it, both record it."""

    def lock_wait(self, message: str) -> None:
        """Another epfiot holds the host lock: the run waits for it."""
        ...

    def pool_created(self, pool: CreatePool, seconds: float) -> None: ...

    def planned(self, result: Result, applying: bool) -> None:
        """The plan, before anything of it is applied (also for dry runs and plans with problems);
        `applying`: the run goes on to apply it."""
        ...


class Silent:
    """A Reporter that says nothing."""

    def lock_wait(self, message: str) -> None:
        pass

    def pool_created(self, pool: CreatePool, seconds: float) -> None:
        pass

    def planned(self, result: Result, applying: bool) -> None:
        pass

    def action_started(self, action: Action) -> None:
        pass

    def action_finished(self, outcome: Outcome) -> None:
        pass


Verify = Callable[[Observed, Plan, CreatePool | None], None]


@dataclass(frozen=True)
class Request:
    """One run: what to make true of which host, and how."""

    host: Host
    desired: Desired
    options: Options = field(default_factory=Options)
    registry: Registry | None = None
    policy: UsbPolicy | None = None
    deletion: bool = False  # destroy exactly what `desired` declares (epfiot delete)
    dry_run: bool = False  # observe and plan only: nothing on the host changes
    pool: CreatePool | None = None  # the image pool to create when the host has none (None: never)
    lock: HostLock | None = None  # held for the whole run (None: no lock, as for epfiot plan)
    parallel: int = 8
    skip: Callable[[Action], bool] | None = None  # changes not to run this time (watch: waiting to retry)
    reporter: Reporter = field(default_factory=Silent)
    # Asked once the plan is reported, before any of it is applied; raises to stop the run with nothing
    # applied (epfiot.approval: a plan that destroys anything needs a yes). None: never asked (watch).
    approve: Callable[[Plan], None] | None = None
    # Given the first observation, the plan made from it and the image pool it needs, before anything is
    # done (the pool included); raises to stop the run with nothing changed (a saved plan that no longer
    # matches the host: epfiot.savedplan).
    verify: Verify | None = None
    # The host's rules for the one asking (HostRules.of(host config, caller)): with them the plan is checked
    # against the whole host, every tenant's resources included. None: only within this run's scopes.
    rules: HostRules | None = None


def run_once(request: Request) -> Result:
    """One reconcile. Raises HostError when the host cannot be read (or the pool not created); a failed
    action is an outcome, never an exception. A plan with problems is reported and not applied."""
    if request.lock is None:
        return _run(request)
    from epfiot.state import host_lock

    with host_lock(request.lock.state_dir, request.lock.uri, on_wait=request.reporter.lock_wait):
        return _run(request)


def _run(request: Request) -> Result:
    host, reporter = request.host, request.reporter
    observed = observe(host, request.registry, request.desired)
    pool = _pool_needed(request, observed)
    if request.verify is not None:
        request.verify(observed, _plan(request, observed), pool)
    if pool is not None and not request.dry_run:
        started = time.monotonic()
        host.ensure_image_pool(pool.path)
        reporter.pool_created(pool, time.monotonic() - started)
        observed = observe(host, request.registry, request.desired)
    plan = _plan(request, observed)
    skip = request.skip
    held = tuple(a for a in plan.changes if skip(a)) if skip is not None else ()
    planned = Result(plan, observed, pool, pool is not None and not request.dry_run, held=held)
    applying = not (request.dry_run or plan.problems or len(plan.changes) == len(held))
    reporter.planned(planned, applying)
    if not applying:
        return planned
    if held:
        held_ids = {id(a) for a in held}
        plan = replace(plan, actions=tuple(a for a in plan.actions if id(a) not in held_ids))
    if request.approve is not None:
        request.approve(plan)
    outcomes, observed, remaining = _apply(request, plan, held)
    _forget_salts(request, outcomes)
    return replace(planned, observed=observed, outcomes=outcomes, remaining=remaining)


def _forget_salts(request: Request, outcomes: tuple[Outcome, ...]) -> None:
    """The password salts of the VMs this run destroyed and that are not declared (any more) go from the state
    directory (the lock's: a run without a lock has none). A declared VM destroyed to be made anew keeps its
    salt, or its next seed would differ from the one just made."""
    if request.lock is None:
        return
    declared = set() if request.deletion else {(v.owner, v.stack, v.name) for v in request.desired.vms}
    gone = {
        (a.owner, a.stack, a.name) for o in outcomes
        if o.ok and (a := o.action).kind is Kind.VM and a.verb is Verb.DESTROY
    } - declared  # fmt: skip
    if gone:
        from epfiot.salts import SaltStore

        SaltStore.in_state_dir(request.lock.state_dir).forget("/".join(key) for key in sorted(gone))


def _pool_needed(request: Request, observed: Observed) -> CreatePool | None:
    if request.pool is None or request.deletion or observed.image_pool is not None:
        return None
    return request.pool if any(vm.image or vm.credentials for vm in request.desired.vms) else None


def _plan(request: Request, observed: Observed, *, removed_networks: bool = False) -> Plan:
    if request.deletion:
        plan = plan_deletion(request.desired, observed, request.options)
    else:
        plan = plan_changes(request.desired, observed, request.options, request.policy, request.rules)
    from epfiot.firewall.guard import with_firewall  # host-wide: the table follows every tenant's networks

    return with_firewall(request.host.uri, plan, observed.networks, tidy=removed_networks)


def _apply(
    request: Request, plan: Plan, held: tuple[Action, ...]
) -> tuple[tuple[Outcome, ...], Observed, tuple[Action, ...]]:
    """Execute `plan`, then plan afresh. A VM that came up (or got its lease) meanwhile has an address for
    its things now: their registrations are applied at once rather than at the next run, and so is the
    firewall table's tidying (it names the networks removed until they are gone). Whatever else the fresh
    plan changes is `remaining`."""
    host, registry, reporter = request.host, request.registry, request.reporter
    outcomes = execute(plan, host, registry=registry, parallel=request.parallel, reporter=reporter)
    observed = observe(host, registry, request.desired)
    fresh = _plan(request, observed, removed_networks=_removes_networks(plan))
    excused = {a.address for a in held} | {o.action.address for o in outcomes if not o.ok}
    # The firewall too: it still names the networks just removed (or another run defined some meanwhile).
    things = request.desired.things and not request.deletion
    if not fresh.problems:
        again = (Kind.THING, Kind.FIREWALL) if things else (Kind.FIREWALL,)
        second = Plan(tuple(a for a in fresh.changes if a.kind in again and a.address not in excused))
        outcomes += execute(second, host, registry=registry, parallel=1, reporter=reporter)
        excused |= {a.address for a in second.actions}
    remaining = tuple(a for a in fresh.changes if a.address not in excused)
    return tuple(outcomes), observed, remaining


def _removes_networks(plan: Plan) -> bool:
    return any(a.kind is Kind.NETWORK and any(isinstance(st, RemoveNetwork) for st in a.steps) for a in plan.changes)


def apply_plan(
    plan: Plan,
    desired: Desired,
    host: Host,
    registry: Registry | None,
    options: Options,
    policy: UsbPolicy | None,
    *,
    parallel: int,
    reporter: Reporter | None = None,
) -> Result:
    """Apply a plan made by hand (tests, benchmarks) as run_once would apply its own."""
    check(plan)
    request = Request(host, desired, options, registry, policy, parallel=parallel, reporter=reporter or Silent())
    outcomes, observed, remaining = _apply(request, plan, ())
    return Result(plan, observed, outcomes=outcomes, remaining=remaining)


def observe(host: Host, registry: Registry | None, desired: Desired) -> Observed:
    wanted = {libvirt_name(t.owner, t.vm) for t in desired.things if t.vm}
    observed = host.observe(addresses_of=wanted)
    if registry is None:
        return replace(observed, things=())
    keys = read_key_file(key_file_path(registry.path))
    return replace(observed, things=tuple(observed_thing(r, keys.get(r.config.name)) for r in registry.things()))


def observed_thing(record: ThingRecord, keys: ThingKeys | None = None) -> ObservedThing:
    c = record.config
    return ObservedThing(
        name=c.name,
        owner=c.owner,
        stack=c.stack,
        vm=c.vm,
        server_uri=c.server_uri,
        lifetime=c.lifetime,
        binding=c.binding,
        deletes=tuple(c.deletes),
        writes=tuple(ResourceWriteSpec(w.path, w.value) for w in c.writes),
        status=record.status,
        credentials_digest=None if keys is None else credentials_digest(keys.bootstrap, keys.server),
        manifest=c.manifest,
    )


def resolve_usb(desired: Desired, observed: Observed, policy: UsbPolicy | None) -> UsbResolution:
    claims = [(vm.owner, vm.name, selector) for vm in desired.vms for selector in vm.devices]
    if not claims:
        return UsbResolution()
    from epfiot import usb

    assignments, problems = usb.resolve_claims(claims, observed.usb, policy)
    return UsbResolution(assignments, tuple(problems))


def plan_changes(
    desired: Desired, observed: Observed, options: Options, policy: UsbPolicy | None, rules: HostRules | None = None
) -> Plan:
    digests = {}
    if any(vm.credentials for vm in desired.vms):
        from epfiot import cloudinit  # only stacks with credentials need it (and its imports)

        digests = {vm.libvirt_name: cloudinit.seed_digest(vm) for vm in desired.vms if vm.credentials}
    usb = resolve_usb(desired, observed, policy)
    return make_plan(
        desired, observed, options, usb=usb, seed_digests=digests, unread_manifests=unread(desired, observed), rules=rules
    )


def unread(desired: Desired, observed: Observed) -> frozenset[str]:
    """The declaring files recorded in the managed resources of the desired scopes that exist below a root of
    this load but were not read by it."""
    scopes = desired.scopes()
    ownerships = [v.ownership for v in observed.vms] + [n.ownership for n in observed.networks]
    recorded = {o.manifest for o in ownerships if o is not None and (o.owner, o.stack) in scopes}
    recorded |= {t.manifest for t in observed.things if (t.owner, t.stack) in scopes}
    origin = desired.origin
    return unread_manifests(origin.roots, origin.files, recorded) if recorded - {""} else frozenset()


def check(plan: Plan) -> None:
    if plan.problems:
        lines = [f"{counted(len(plan.problems), 'problem')} in the plan; nothing was changed:"]
        raise PlanError("\n".join(lines + [f"  {p}" for p in plan.problems]), plan.problems)
