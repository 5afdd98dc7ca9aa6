"""An apply stopped dead at any point leaves nothing the next apply cannot see.

The sweep runs an apply on the libvirt test driver and stops it before its Nth call to the host, for every N
the plan has: the stop is an exception no step catches (as a kill, nothing after it runs, no clean-up). Then
the next apply runs, with the same manifest or with the VM removed from it, and the host must hold nothing
of the VM that a plan no longer sees: no domain, no volume of the VM's name, no DHCP reservation; and the
plan after it is empty. The same for a destroy. tests/test_killsafe_daemon.py kills a real `epfiot apply`
process with SIGKILL on the real daemon.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from hosts.testdriver import CREDENTIALS, POOL, open_test_driver, vm

from epfiot.apply import execute
from epfiot.host import Host
from epfiot.libvirt.host import LibvirtHost
from epfiot.model import Desired, NetworkMode, NetworkSpec, StackSpec, is_epfiot_volume
from epfiot.plan import Options, Plan, Verb
from epfiot.reconcile import plan_changes

READS = frozenset({"observe", "observe_vms", "vm_addresses", "render_vm", "virt_type", "image_pool", "close"})
LAN = NetworkSpec(owner="o", stack="s", name="lan", mode=NetworkMode.ISOLATED, cidr="10.9.7.0/24")
VM = vm("vm1", image="base.qcow2", network="lan", address="10.9.7.10", credentials=CREDENTIALS, shutdown_timeout=0.0)
WITH_VM = Desired(stacks=(StackSpec("o", "s"),), networks=(LAN,), vms=(VM,))
WITHOUT_VM = Desired(stacks=(StackSpec("o", "s"),), networks=(LAN,))


class Killed(BaseException):
    """Not an EpfiotError, nor an Exception: no step and no executor catches it."""


class StopsAtCall:
    """The host, stopping dead before its `limit`-th changing call."""

    def __init__(self, host: LibvirtHost, limit: int) -> None:
        self._host, self._limit, self.calls = host, limit, 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._host, name)
        if name in READS or not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls >= self._limit:
                raise Killed(f"stopped before call {self.calls}: {name}")
            return attribute(*args, **kwargs)

        return call


@contextmanager
def fresh_host(directory: Path) -> Iterator[LibvirtHost]:
    """A new test-driver host (each connection has its own copy of the host file) with a base image."""
    with open_test_driver(directory) as h:
        h.connection.storagePoolLookupByName(POOL).createXML(
            "<volume><name>base.qcow2</name><capacity unit='MiB'>16</capacity>"
            "<target><format type='qcow2'/></target></volume>"
        )
        yield h


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LibvirtHost]:
    with fresh_host(tmp_path) as h:
        yield h


def plan(host: Host, desired: Desired) -> Plan:
    return plan_changes(desired, host.observe(), Options(), None)


def apply(host: Host, desired: Desired) -> int:
    """Apply `desired` to `host`; the number of changing calls it made."""
    counting = StopsAtCall(cast(LibvirtHost, host), limit=10**9)
    p = plan(cast(Host, counting), desired)
    assert p.problems == (), p.problems
    outcomes = execute(p, cast(Host, counting), parallel=1)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    return counting.calls


def apply_stopped(host: LibvirtHost, desired: Desired, limit: int) -> bool:
    """Apply `desired`, stopped dead before the `limit`-th changing call; True when it was stopped."""
    stopping = StopsAtCall(host, limit)
    p = plan(cast(Host, stopping), desired)
    try:
        execute(p, cast(Host, stopping), parallel=1)
    except Killed:
        return True
    return False


def leftovers(host: LibvirtHost) -> list[str]:
    """What of vm1 the host holds: its domain, its volumes, its reservation."""
    observed = host.observe()
    found = [f"domain {v.libvirt_name}" for v in observed.vms if v.libvirt_name == VM.libvirt_name]
    found += [f"volume {v.name}" for v in observed.volumes if is_epfiot_volume(v.name)]
    found += [f"reservation {h} on {n.libvirt_name}" for n in observed.networks for h in n.dhcp_hosts]
    return found


def assert_converged(host: LibvirtHost, desired: Desired) -> None:
    p = plan(host, desired)
    assert not p.has_changes, [(a.address, a.verb, a.reason) for a in p.actions if a.verb is not Verb.NOOP]
    if not desired.vms:
        assert leftovers(host) == []


def sweep(directory: Path, before: Desired | None, during: Desired, after: Desired) -> int:
    """For every point of applying `during` (from `before`): stop there, apply `after`, check. The points."""
    points = 0
    limit = 1
    while True:
        with fresh_host(directory) as h:
            if before is not None:
                apply(h, before)
            stopped = apply_stopped(h, during, limit)
            apply(h, after)
            assert_converged(h, after)
        if not stopped:
            return points
        points += 1
        limit += 1


@pytest.mark.parametrize("after", [WITH_VM, WITHOUT_VM], ids=["same manifest", "vm removed"])
def test_a_create_stopped_at_any_call_leaves_nothing_behind(tmp_path: Path, after: Desired) -> None:
    points = sweep(tmp_path, None, WITH_VM, after)
    assert points >= 6  # network, definition, reservation, overlay, seed, start: each a point


@pytest.mark.parametrize("after", [WITHOUT_VM, WITH_VM], ids=["same manifest", "vm declared again"])
def test_a_destroy_stopped_at_any_call_leaves_nothing_behind(tmp_path: Path, after: Desired) -> None:
    points = sweep(tmp_path, WITH_VM, WITHOUT_VM, after)
    assert points >= 4  # stop, reservation, two volumes, definition


def test_the_stopped_points_are_between_steps_of_the_vm(host: LibvirtHost) -> None:
    """The sweep reaches the points that matter: a create stopped after its definition leaves a domain whose
    volumes are missing, and the next plan makes them; a destroy stopped after the volumes leaves the domain."""
    assert apply_stopped(host, WITH_VM, 4)  # network, definition, reservation: stopped before the overlay
    assert leftovers(host) == [f"domain {VM.libvirt_name}", f"reservation ('{VM.mac}', '10.9.7.10') on o.lan"]
    steps = [type(s).__name__ for a in plan(host, WITHOUT_VM).changes for s in a.steps]
    assert steps == ["RemoveDhcpHost", "UndefineVm"]
    apply(host, WITH_VM)
    assert apply_stopped(host, WITHOUT_VM, 5)  # stop, reservation, overlay, seed: stopped before the undefine
    assert leftovers(host) == [f"domain {VM.libvirt_name}"]
    apply(host, WITHOUT_VM)
    assert leftovers(host) == []
