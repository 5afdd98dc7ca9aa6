"""The caller-scoped operations of epfiot: what every way in (the CLI, `epfiot watch`, the API) asks of a host,
each on behalf of a Caller (epfiot.hostconfig) and through the one authorization layer (epfiot.authz).

    service = Service.from_host_config(load_host_config(), uri="qemu:///system")
    caller = service.local_caller()                 # or config.caller_for_token / caller_for_uid (API)
    service.vms(caller, service.observe())          # == `epfiot get vms -o json`
    service.plan(caller, Manifests.from_text(body, "stack.yaml"))   # == `epfiot plan -o json`
    service.apply(caller, Manifests.from_paths(["stacks/"]), approve=True)   # == `epfiot apply -o json -y`

Every query returns the plain data (lists and dicts of JSON values) that the matching `-o json` prints:
`vms`, `vm`, `usb`, `things`, `networks`, `images` (`epfiot get ...`), `events` (`epfiot events`), `plan`
(`epfiot plan`), `apply` (`epfiot apply`), `delete` and `delete_vm` (`epfiot delete -f` / `delete vm`;
these print no JSON today and return the apply form). The `*_run` forms return the reconcile Result for
front ends that render it themselves (the CLI's text output). The reads are epfiot.queries.HostQueries';
those of the host render an Observed they are given: `observe()` (a fresh one, as `epfiot get` reads), or
watch's latest snapshot (the API: epfiot.snapshot).

What a caller is allowed (epfiot.authz): the administrator everything; a tenant only its own. A tenant's
manifests that name another owner are refused whole (ManifestError, file:line, nothing applied); another
tenant's VM asked for by name "does not exist" (NotFound), exactly as a missing one; lists, events and USB
holders show only what is the tenant's own. Images (the base images of the pool) are the host's, seen by
all.

Everything is synchronous and opens what it needs per call (the libvirt connection, the registry, the event
log), so a server may run each call in a worker thread. Runs that change the host take the host lock in the
state directory, which is the host configuration's: one registry, one event log and one lock per host.

Errors are EpfiotErrors: ManifestError (exit_code 2: the manifests, with every problem), UsageError (2),
NotFound / NotAllowed (1), NotApproved (1: a plan that destroys something and approve=False), PlanError (1:
the plan has problems), HostError (1: libvirt).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epfiot import authz
from epfiot.authz import event_owner
from epfiot.errors import EpfiotError, ManifestError
from epfiot.hostconfig import ADMIN, Caller, HostConfig
from epfiot.manifests import Manifests, load_for
from epfiot.queries import HostQueries, NotFound

if TYPE_CHECKING:
    from epfiot.apply import Outcome
    from epfiot.eventlog import EventLog
    from epfiot.host import Host
    from epfiot.model import Desired
    from epfiot.plan import Options, Plan
    from epfiot.plan.host_rules import HostRules
    from epfiot.policy import UsbPolicy
    from epfiot.reconcile import Reporter, Result, Verify
    from epfiot.registry import Registry

DEFAULT_IMAGE_POOL = "epfiot-images"
DEFAULT_IMAGE_DIR = "/var/lib/epfiot/images"
HOST_STATE_DIR = Path("/var/lib/epfiot")  # a host configuration's state_dir when it names none

Approval = bool | Callable[["Plan"], None]


@dataclass(frozen=True)
class Service(HostQueries):
    """One host's operations. Built by `from_host_config` (which applies the host configuration's
    settings); `host`: an open Host to use instead of opening `uri` per call (tests, the test driver)."""

    config: HostConfig
    uri: str
    state_dir: Path
    image_pool: str = DEFAULT_IMAGE_POOL
    image_dir: str = DEFAULT_IMAGE_DIR
    virt_type: str | None = None
    policy_path: Path | None = None
    parallel: int = 8
    host: Host | None = field(default=None, compare=False)

    @classmethod
    def from_host_config(
        cls,
        config: HostConfig,
        *,
        uri: str,
        state_dir: Path | None = None,
        image_pool: str | None = None,
        image_dir: str | None = None,
        virt_type: str | None = None,
        policy_path: Path | None = None,
        host: Host | None = None,
    ) -> Service:
        """With a host configuration, its state_dir, image_pool, image_dir and usb_policy win over the arguments
        (the front end decides whether a differing argument is an error: epfiot.cli.common); without one,
        the arguments or their defaults."""
        from epfiot.state import default_state_dir

        if config.has_tenants:
            state_dir = config.state_dir or HOST_STATE_DIR
            # The host's, not the options' nor $EPFIOT_IMAGE_*: a tenant may set those.
            image_pool = config.image_pool or DEFAULT_IMAGE_POOL
            image_dir = str(config.image_dir or DEFAULT_IMAGE_DIR)
            policy_path = config.usb_policy  # None: /etc/epfiot/policy.yaml if present (policy())
        return cls(
            config,
            uri,
            state_dir if state_dir is not None else default_state_dir(),
            image_pool or DEFAULT_IMAGE_POOL,
            image_dir or DEFAULT_IMAGE_DIR,
            virt_type,
            policy_path,
            host=host,
        )

    # --- who is asking ---------------------------------------------------------------------------------

    def local_caller(self, uid: int | None = None) -> Caller:
        """The caller a local Unix user (default: this process's) acts as; NotAllowed for nobody."""
        return authz.local_caller(self.config, uid)

    # --- changes (epfiot plan, apply, delete) ------------------------------------------------------------

    def plan_run(self, caller: Caller, manifests: Manifests | Desired, options: Options | None = None) -> Result:
        """A dry run: observe and plan, nothing changed, no lock."""
        from epfiot.reconcile import Request, run_once

        desired = self._desired(caller, manifests)
        with self._session(desired) as (host, registry, policy):
            return run_once(
                Request(host, desired, _options(options), registry, policy, dry_run=True, pool=self._pool(), rules=self.rules(caller))
            )

    def plan(self, caller: Caller, manifests: Manifests | Desired, options: Options | None = None) -> dict[str, Any]:
        from epfiot import render

        result = self.plan_run(caller, manifests, options)
        return render.plan_as_dict(result.plan, pool=result.pool)

    def apply_run(
        self,
        caller: Caller,
        manifests: Manifests | Desired,
        *,
        approve: Approval = False,
        options: Options | None = None,
        dry_run: bool = False,
        deletion: bool = False,
        parallel: int | None = None,
        reporter: Callable[[EventLog], Reporter] | None = None,
        source: str | None = None,
        verify: Verify | None = None,
    ) -> Result:
        """One reconcile under the host lock; its events go to the state directory's event log (`reporter`
        builds the Reporter on it; default: events only, marked `source`, default "apply"/"delete").
        `approve`: True applies a plan that destroys anything, False refuses it (NotApproved, nothing
        applied), a callable decides (epfiot.approval.approve asks on a terminal). `verify`: as
        reconcile.Request's (a saved plan checked against the host before anything is done)."""
        from epfiot.eventlog import EventLog, EventRecorder
        from epfiot.reconcile import HostLock, Request, run_once

        desired = self._desired(caller, manifests)
        with self._session(desired) as (host, registry, policy):
            events = EventLog.in_state_dir(self.state_dir)
            try:
                recorder = reporter(events) if reporter is not None else EventRecorder(events, source or ("delete" if deletion else "apply"))
                request = Request(
                    host,
                    desired,
                    _options(options),
                    registry,
                    policy,
                    deletion=deletion,
                    dry_run=dry_run,
                    pool=self._pool(),
                    lock=HostLock(self.state_dir, self.uri),
                    parallel=parallel or self.parallel,
                    reporter=recorder,
                    approve=_approval(approve),
                    verify=verify,
                    rules=self.rules(caller),
                )
                return run_once(request)
            finally:
                events.close()

    def apply(self, caller: Caller, manifests: Manifests | Desired, *, approve: Approval = False, options: Options | None = None, dry_run: bool = False) -> dict[str, Any]:
        """`epfiot apply -o json`: {"plan", "outcomes"[, "remaining"]}; PlanError when the plan has problems."""
        from epfiot.reconcile import check

        result = self.apply_run(caller, manifests, approve=approve, options=options, dry_run=dry_run)
        check(result.plan)
        return apply_as_dict(result, dry_run=dry_run)

    def delete(self, caller: Caller, manifests: Manifests | Desired, *, approve: Approval = False, options: Options | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Destroy what the manifests declare (the caller's own only)."""
        from epfiot.reconcile import check

        result = self.apply_run(caller, manifests, approve=approve, options=options, dry_run=dry_run, deletion=True)
        check(result.plan)
        return apply_as_dict(result, dry_run=dry_run)

    def vm_deletion(self, caller: Caller, owner: str, name: str) -> Desired:
        """What `delete vm OWNER/NAME` destroys, as a desired state for apply_run(deletion=True). NotFound
        for a VM that is not there or not the caller's; NotFound too (administrator: EpfiotError saying
        so) for a domain epfiot does not manage."""
        from epfiot.model import Desired, StackSpec, VmSpec

        what = f"vm {owner}/{name}"
        try:
            authz.require(caller, owner, what)
        except authz.NotAllowed as refused:
            raise NotFound(str(refused)) from None
        with self._host() as host:
            vm = next((v for v in host.observe().vms if v.libvirt_name == f"{owner}.{name}"), None)
        if vm is None or (vm.ownership is None and not caller.is_admin):
            raise NotFound(f"{what} does not exist")
        if vm.ownership is None:
            raise EpfiotError(f"{what}: not managed by epfiot; nothing to delete")
        stack = StackSpec(owner=owner, name=vm.ownership.stack)
        placeholder = VmSpec(owner=owner, stack=stack.name, name=name, memory_mib=1, vcpu=1, max_memory_mib=1, max_vcpu=1)
        return Desired(stacks=(stack,), vms=(placeholder,))

    def delete_vm(self, caller: Caller, owner: str, name: str, *, approve: Approval = False, options: Options | None = None, dry_run: bool = False) -> dict[str, Any]:
        return self.delete(caller, self.vm_deletion(caller, owner, name), approve=approve, options=options, dry_run=dry_run)

    # --- what the operations share ----------------------------------------------------------------------

    def load(self, caller: Caller, manifests: Manifests) -> Desired:
        """The manifests' desired state for `caller` (load_for). Passwords hash with the salts recorded in the
        state directory, so that the same password makes the same seed from one run to the next; new salts
        are recorded once the manifests load (and none when they do not)."""
        from epfiot.salts import SaltStore

        salts = SaltStore.in_state_dir(self.state_dir) if manifests.read else None
        desired = load_for(caller, manifests, salts)
        if salts is not None:
            try:
                salts.save()
            except OSError as error:
                raise EpfiotError(f"cannot record password salts in {salts.path}: {error.strerror or error}") from None
        return desired

    def rules(self, caller: Caller) -> HostRules:
        """The host's rules for `caller`: its plans are checked against the whole host (epfiot.plan.host_rules)."""
        from epfiot.plan.host_rules import HostRules

        return HostRules.of(self.config, caller)

    def _desired(self, caller: Caller, manifests: Manifests | Desired) -> Desired:
        if isinstance(manifests, Manifests):
            return self.load(caller, manifests)
        if problems := authz.foreign_owners(manifests, caller):
            raise ManifestError(problems)
        return manifests

    def _pool(self) -> Any:
        from epfiot.reconcile import CreatePool

        return CreatePool(self.image_pool, self.image_dir)

    def connection(self) -> contextlib.AbstractContextManager[Host]:
        """The host, open for the length of a `with` (commands that read and change it themselves: adopt)."""
        return self._host()

    @contextlib.contextmanager
    def _host(self) -> Iterator[Host]:
        if self.host is not None:
            yield self.host
            return
        from epfiot.libvirt.host import LibvirtHost

        host = LibvirtHost.open(self.uri, image_pool=self.image_pool, virt_type=self.virt_type)
        try:
            yield host
        finally:
            host.close()

    def _registry(self, *, create: bool) -> Registry | None:
        path = self.state_dir / "registry.db"
        if not create and not path.exists():
            return None
        from epfiot.registry import Registry
        from epfiot.state import ensure_state_dir

        ensure_state_dir(self.state_dir)
        return Registry(path)

    def policy(self) -> UsbPolicy:
        """The host's USB policy. With a host configuration it is the host's alone: its usb_policy, else
        /etc/epfiot/policy.yaml if present; $EPFIOT_POLICY is not asked (a tenant could set it)."""
        from epfiot.policy import DEFAULT_POLICY_PATH, UsbPolicy, load_policy

        if self.policy_path is None and self.config.has_tenants:
            return load_policy(DEFAULT_POLICY_PATH) if DEFAULT_POLICY_PATH.exists() else UsbPolicy()
        return load_policy(self.policy_path)

    @contextlib.contextmanager
    def _session(self, desired: Desired) -> Iterator[tuple[Host, Registry | None, UsbPolicy | None]]:
        """The host, and the registry and USB policy when the manifests need them (start-up time counts)."""
        from epfiot.state import ensure_state_dir

        ensure_state_dir(self.state_dir)
        policy = None
        if any(vm.devices for vm in desired.vms):
            policy = self.policy()
        registry = self._registry(create=bool(desired.things))
        try:
            with self._host() as host:
                yield host, registry, policy
        finally:
            if registry is not None:
                registry.close()


def _options(options: Options | None) -> Options:
    from epfiot.plan import Options

    return options if options is not None else Options()


def _approval(approve: Approval) -> Callable[[Plan], None] | None:
    if approve is True:
        return None
    if approve is False:
        return _refuse_destroys
    return approve


def _refuse_destroys(plan: Plan) -> None:
    from epfiot.approval import NotApproved, destroys, what_is_lost

    if lost := destroys(plan):
        raise NotApproved(f"this plan destroys {what_is_lost(lost)}; it needs approval to be applied. Nothing of it was applied.")


def apply_as_dict(result: Result, *, dry_run: bool = False) -> dict[str, Any]:
    """What `epfiot apply -o json` prints (epfiot.render.apply_as_dict)."""
    from epfiot import render

    return render.apply_as_dict(result, dry_run=dry_run)


def outcome_as_dict(outcome: Outcome) -> dict[str, object]:
    from epfiot import render

    return render.outcome_as_dict(outcome)


__all__ = ["ADMIN", "Approval", "Manifests", "NotFound", "Service", "apply_as_dict", "event_owner", "load_for", "outcome_as_dict"]
