"""The reconcile service (epfiot.reconcile.run_once) on the libvirt test driver: what it tells its reporter
and in which order, the image pool as a step of the run, dry runs, held actions, the host lock, the check
that a fresh plan is empty afterwards, and outcomes that keep their typed errors.

`test:///default` lives as long as one connection to it is open: the fixture's, for the test's duration.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from epfiot.apply import AddressTimeout, Outcome, RegistryMissing, execute
from epfiot.desired import load_manifests
from epfiot.errors import HostError, PermanentError, TemporaryError, retry_class
from epfiot.libvirt.host import LibvirtHost
from epfiot.model import Desired, ThingSpec
from epfiot.plan import Action, Kind, Phase, Plan, Verb
from epfiot.plan import steps as s
from epfiot.reconcile import CreatePool, HostLock, Request, Result, run_once
from epfiot.state import host_lock
from tests.faults import FaultyHost
from tests.stacks import vm, write_stack

URI = "test:///default"
CREDENTIALS = {"user": "edge", "ssh_authorized_keys": ["ssh-ed25519 AAAA edge@laptop"]}


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(URI)
    yield conn
    conn.close()


@pytest.fixture
def host(conn: libvirt.virConnect) -> Iterator[LibvirtHost]:
    host = LibvirtHost.open(URI)
    yield host
    host.close()


class Recorder:
    """A Reporter that keeps what it is told, in order."""

    def __init__(self) -> None:
        self.said: list[tuple[str, object]] = []
        self.lock = threading.Lock()
        self.waiting = threading.Event()

    def _say(self, what: str, detail: object) -> None:
        with self.lock:
            self.said.append((what, detail))

    def lock_wait(self, message: str) -> None:
        self._say("lock_wait", message)
        self.waiting.set()

    def pool_created(self, pool: CreatePool, seconds: float) -> None:
        self._say("pool_created", pool.name)

    def planned(self, result: Result, applying: bool) -> None:
        self._say("planned", applying)

    def action_started(self, action: Action) -> None:
        self._say("started", action.address)

    def action_finished(self, outcome: Outcome) -> None:
        self._say("finished", (outcome.action.address, outcome.ok))

    def kinds(self) -> list[str]:
        return [what for what, _ in self.said]


def desired_of(tmp_path: Path, **stack: object) -> Desired:
    return load_manifests([str(write_stack(tmp_path, "alice", **stack))])  # type: ignore[arg-type]


def domains(conn: libvirt.virConnect) -> set[str]:
    return {d.name() for d in conn.listAllDomains()}


def pools(conn: libvirt.virConnect) -> dict[str, bool]:
    return {p.name(): bool(p.isActive()) for p in conn.listAllStoragePools()}


def test_a_run_reports_its_plan_before_any_action_then_each_action(tmp_path: Path, host: LibvirtHost, conn: libvirt.virConnect) -> None:
    desired = desired_of(tmp_path, vms=[vm("one"), vm("two", state="shutoff")])
    said = Recorder()
    result = run_once(Request(host, desired, reporter=said))

    assert said.said[0] == ("planned", True)
    assert sorted(d for w, d in said.said if w == "started") == ["vm/alice/one", "vm/alice/two"]
    assert sorted(d for w, d in said.said if w == "finished") == [("vm/alice/one", True), ("vm/alice/two", True)]
    assert [o.ok for o in result.outcomes] == [True, True] and result.remaining == ()
    assert {"alice.one", "alice.two"} <= domains(conn)

    again = Recorder()
    result = run_once(Request(host, desired, reporter=again))
    assert again.said == [("planned", False)] and result.outcomes == () and not result.plan.changes


def test_a_dry_run_changes_nothing(tmp_path: Path, host: LibvirtHost, conn: libvirt.virConnect) -> None:
    desired = desired_of(tmp_path, networks=[{"name": "iot", "mode": "route", "cidr": "10.140.0.0/24"}], vms=[vm("one", network="iot")])
    before = (domains(conn), {n.name() for n in conn.listAllNetworks()})
    said = Recorder()
    result = run_once(Request(host, desired, dry_run=True, reporter=said))
    assert [a.address for a in result.plan.changes] == ["network/alice/iot", "vm/alice/one"]
    assert said.said == [("planned", False)] and result.outcomes == ()
    assert (domains(conn), {n.name() for n in conn.listAllNetworks()}) == before


def test_the_image_pool_is_planned_by_a_dry_run_and_made_by_a_real_one(tmp_path: Path, host: LibvirtHost, conn: libvirt.virConnect) -> None:
    desired = desired_of(tmp_path, vms=[vm("one", credentials=CREDENTIALS)])  # its seed needs the pool
    pool = CreatePool("epfiot-images", str(tmp_path / "images"))
    assert "epfiot-images" not in pools(conn)

    dry = run_once(Request(host, desired, dry_run=True, pool=pool))
    assert dry.pool == pool and not dry.pool_created
    assert "epfiot-images" not in pools(conn) and "alice.one" not in domains(conn)

    said = Recorder()
    result = run_once(Request(host, desired, pool=pool, reporter=said))
    assert said.kinds()[:2] == ["pool_created", "planned"]
    assert result.pool_created and pools(conn)["epfiot-images"]
    assert [o.ok for o in result.outcomes] == [True] and result.remaining == ()
    assert result.observed.image_pool == "epfiot-images"

    # Now that it exists, no run plans it again, and one without a pool to offer never makes it.
    assert run_once(Request(host, desired, pool=pool)).pool is None


def test_a_stopped_image_pool_is_started_by_a_real_run_only(tmp_path: Path, host: LibvirtHost, conn: libvirt.virConnect) -> None:
    conn.storagePoolDefineXML(f"<pool type='dir'><name>epfiot-images</name><target><path>{tmp_path}</path></target></pool>")
    desired = desired_of(tmp_path, vms=[vm("one", credentials=CREDENTIALS)])
    pool = CreatePool("epfiot-images", str(tmp_path))
    assert run_once(Request(host, desired, dry_run=True, pool=pool)).pool == pool
    assert pools(conn)["epfiot-images"] is False
    assert run_once(Request(host, desired, pool=pool)).pool_created
    assert pools(conn)["epfiot-images"] is True


def test_deletion_never_makes_the_pool(tmp_path: Path, host: LibvirtHost, conn: libvirt.virConnect) -> None:
    desired = desired_of(tmp_path, vms=[vm("one", credentials=CREDENTIALS)])
    result = run_once(Request(host, desired, deletion=True, pool=CreatePool("epfiot-images", str(tmp_path))))
    assert result.pool is None and "epfiot-images" not in pools(conn)


def test_held_actions_are_not_run_and_the_rest_is(tmp_path: Path, host: LibvirtHost, conn: libvirt.virConnect) -> None:
    desired = desired_of(tmp_path, vms=[vm("one"), vm("two")])
    result = run_once(Request(host, desired, skip=lambda a: a.name == "one"))
    assert [a.address for a in result.held] == ["vm/alice/one"]
    assert [o.action.address for o in result.outcomes] == ["vm/alice/two"]
    assert "alice.one" not in domains(conn) and "alice.two" in domains(conn)
    assert result.remaining == ()  # a held action is no surprise

    nothing = Recorder()
    result = run_once(Request(host, desired, skip=lambda a: True, reporter=nothing))
    assert nothing.said == [("planned", False)] and result.outcomes == ()


def test_a_host_that_did_not_do_what_it_said_leaves_remaining_changes(tmp_path: Path, host: LibvirtHost) -> None:
    desired = desired_of(tmp_path, vms=[vm("one")])
    faulty = FaultyHost(lambda: host)
    faulty.ignore("start_vm", "alice.one")
    result = run_once(Request(faulty, desired))  # type: ignore[arg-type]
    assert [o.ok for o in result.outcomes] == [True]
    assert [(a.address, a.verb) for a in result.remaining] == [("vm/alice/one", Verb.UPDATE)]


def test_a_run_waits_for_the_host_lock(tmp_path: Path, host: LibvirtHost, conn: libvirt.virConnect) -> None:
    desired = desired_of(tmp_path, vms=[vm("one")])
    state = tmp_path / "state"
    said = Recorder()
    results: list[Result] = []
    request = Request(host, desired, lock=HostLock(state, URI), reporter=said)
    with host_lock(state, URI, on_wait=lambda _m: None):
        worker = threading.Thread(target=lambda: results.append(run_once(request)))
        worker.start()
        assert said.waiting.wait(10.0), "the run never said it waits for the lock"
        assert said.kinds() == ["lock_wait"] and "alice.one" not in domains(conn)
    worker.join(10.0)
    assert not worker.is_alive() and [o.ok for o in results[0].outcomes] == [True]


def test_a_failed_outcome_keeps_its_typed_error_and_its_step(tmp_path: Path, host: LibvirtHost, conn: libvirt.virConnect) -> None:
    desired = desired_of(tmp_path, vms=[vm("one"), vm("two")])
    faulty = FaultyHost(lambda: host)
    busy = HostError("start alice.one: cannot acquire state change lock", temporary=True)
    faulty.fail("start_vm", "alice.one", busy)
    result = run_once(Request(faulty, desired))  # type: ignore[arg-type]
    failed = {o.action.name: o for o in result.outcomes if not o.ok}
    assert list(failed) == ["one"] and "alice.two" in domains(conn)
    one = failed["one"]
    assert one.error is busy and isinstance(one.step, s.StartVm) and one.retry == "temporary"
    assert one.message == "start: start alice.one: cannot acquire state change lock"
    assert result.remaining == ()  # the failure is reported as such, not as a surprise


def test_a_registry_step_without_a_registry_is_a_permanent_failure(host: LibvirtHost) -> None:
    thing = ThingSpec(owner="alice", stack="s", name="sensor-1")
    action = Action(Kind.THING, "alice", "s", "sensor-1", Verb.CREATE, "declared", Phase.THINGS, steps=(s.UpsertThing(thing, None),))
    [outcome] = execute(Plan((action,)), host, registry=None)
    assert isinstance(outcome.error, RegistryMissing) and outcome.retry == "permanent"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TemporaryError("x"), "temporary"),
        (AddressTimeout("x"), "temporary"),
        (HostError("x", temporary=True), "temporary"),
        (HostError("x"), "failed"),
        (PermanentError("x"), "permanent"),
        (HostError("x", permanent=True), "permanent"),
        (ValueError("x"), "failed"),
    ],
)
def test_retry_classes(error: BaseException, kind: str) -> None:
    assert retry_class(error) == kind
