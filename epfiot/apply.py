"""Executes a plan through a Host and the bootstrap registry, one outcome per action.

Phases run in order; the actions of one phase are independent and run concurrently (bounded), because on
a real host starting and stopping QEMU processes dominates and libvirt handles several at once. The steps
of one action run in order. A failed action does not stop the others: each failure is reported, and the
next apply (or watch) converges from whatever state it left, since every step is re-planned from the
live state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from epfiot.errors import EpfiotError, PermanentError, RetryClass, TemporaryError, retry_class
from epfiot.host import Host
from epfiot.model import ThingSpec
from epfiot.plan import Action, Phase, Plan
from epfiot.plan import steps as s
from epfiot.psk import ThingKeys, set_thing_keys

if TYPE_CHECKING:
    from epfiot.registry import Registry, ThingConfig


@dataclass(frozen=True)
class Outcome:
    """What became of one action. A failure keeps its exception, typed, and the step that raised it: watch
    retries a temporary failure soon and holds a permanent one (epfiot.errors.retry_class)."""

    action: Action
    ok: bool
    seconds: float
    error: EpfiotError | None = None
    step: s.Step | None = None  # the step that failed

    @property
    def message(self) -> str | None:
        """The failure as one line: the step, then the error."""
        if self.error is None:
            return None
        return f"{self.step.describe()}: {self.error}" if self.step is not None else str(self.error)

    @property
    def retry(self) -> RetryClass | None:
        return retry_class(self.error) if self.error is not None else None


class ActionReporter(Protocol):
    """Told of each action as it starts and ends; called from apply's worker threads."""

    def action_started(self, action: Action) -> None: ...

    def action_finished(self, outcome: Outcome) -> None: ...


class AddressTimeout(TemporaryError):
    """A started VM got no address in time: it may get one later (its DHCP is slow, its OS still boots)."""


class RegistryMissing(PermanentError):
    """A registry step without a registry: nothing retried will open one."""


def execute(
    plan: Plan,
    host: Host,
    *,
    registry: Registry | None = None,
    parallel: int = 8,
    reporter: ActionReporter | None = None,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for actions in plan.phases():
        # The registry is one SQLite connection: things are registered one after another (it is fast).
        workers = 1 if actions[0].phase in (Phase.THINGS, Phase.UNREGISTER_THINGS) else max(1, parallel)
        if workers == 1 or len(actions) == 1:
            outcomes += [_run(action, host, registry, reporter) for action in actions]
        else:
            from concurrent.futures import ThreadPoolExecutor  # with logging: not for a run of one action

            with ThreadPoolExecutor(max_workers=min(workers, len(actions))) as pool:
                outcomes += list(pool.map(lambda a: _run(a, host, registry, reporter), actions))
    return outcomes


def _run(action: Action, host: Host, registry: Registry | None, reporter: ActionReporter | None) -> Outcome:
    if reporter:
        reporter.action_started(action)
    started = time.monotonic()
    step: s.Step | None = None
    try:
        for step in action.steps:
            run_step(step, host, registry)
    except EpfiotError as error:
        outcome = Outcome(action, False, time.monotonic() - started, error, step)
    else:
        outcome = Outcome(action, True, time.monotonic() - started)
    if reporter:
        reporter.action_finished(outcome)
    return outcome


def run_step(step: s.Step, host: Host, registry: Registry | None) -> None:
    match step:
        case s.DefineVm(spec, usb, uuid, seed_digest):
            host.define_vm(spec, usb, uuid=uuid, seed_digest=seed_digest)
        case s.StartVm(name, paused):
            host.start_vm(name, paused=paused)
        case s.ShutdownVm(name, timeout):
            host.shutdown_vm(name, timeout=timeout)
        case s.DestroyVm(name):
            host.destroy_vm(name)
        case s.SuspendVm(name):
            host.suspend_vm(name)
        case s.ResumeVm(name):
            host.resume_vm(name)
        case s.UndefineVm(name):
            host.undefine_vm(name)
        case s.SetVcpus(name, count, live):
            host.set_vcpus(name, count, live=live)
        case s.SetMemory(name, mib, live):
            host.set_memory(name, mib, live=live)
        case s.AttachUsb(name, device, required, live):
            host.attach_usb(name, device, required=required, live=live)
        case s.DetachUsb(name, attached, live):
            host.detach_usb(name, attached, live=live)
        case s.WaitForAddress(name, timeout):
            _wait_for_address(host, name, timeout)
        case s.CreateOverlay(spec):
            host.create_overlay(spec)
        case s.WriteSeed(spec):
            from epfiot import cloudinit  # pycdlib is imported only when a seed is written

            host.write_seed(spec.libvirt_name, cloudinit.build_seed_iso(cloudinit.seed_files(spec)))
        case s.DeleteVolume(volume):
            host.delete_volume(volume)
        case s.DefineNetwork(spec):
            host.define_network(spec)
        case s.StartNetwork(name):
            host.start_network(name)
        case s.RemoveNetwork(name):
            host.remove_network(name)
        case s.SetDhcpHost(network, mac, ip, hostname):
            host.set_dhcp_host(network, mac, ip, hostname)
        case s.RemoveDhcpHost(network, mac, ip):
            host.remove_dhcp_host(network, mac, ip)
        case s.UpsertThing(spec, server_uri):
            # keys first: a thing registered with credentials is never served without them
            set_thing_keys(_require(registry).path, spec.name, ThingKeys(spec.security, spec.server_security))
            _require(registry).upsert(thing_config(spec, server_uri))
        case s.DeleteThing(name):
            _require(registry).delete(name)
            set_thing_keys(_require(registry).path, name, None)
        case s.SyncFirewall(adding):
            from epfiot.firewall.sync import sync_firewall

            sync_firewall(host, adding)
        case _:  # pragma: no cover - the Step union is closed; mypy checks exhaustiveness
            raise AssertionError(f"no executor for {step!r}")


def _require(registry: Registry | None) -> Registry:
    if registry is None:
        raise RegistryMissing("the bootstrap registry is not open")
    return registry


def _wait_for_address(host: Host, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        if host.vm_addresses(name):
            return
        if time.monotonic() >= deadline:
            raise AddressTimeout(f"{name} got no address within {timeout:g}s (is its network's DHCP serving it?)")
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 2.0)


def thing_config(spec: ThingSpec, server_uri: str | None) -> ThingConfig:
    """What the registry stores for a thing: its declaration with the server URI resolved."""
    from epfiot.registry import ResourceWrite, ThingConfig

    return ThingConfig(
        name=spec.name,
        owner=spec.owner,
        stack=spec.stack,
        vm=spec.vm,
        server_uri=server_uri,
        lifetime=spec.lifetime,
        binding=spec.binding,
        deletes=spec.deletes,
        writes=tuple(ResourceWrite(w.path, w.value) for w in spec.writes),
        manifest=spec.source.manifest,
    )
