"""Clients that bootstrap again: a device that reboots is bootstrapped, a re-bootstrap loop (a client
that does not take what it is written, docs/things.md) is failed; the rule comes from the constructor
or `epfiot serve`'s flags. Real aiocoap server and clients on loopback."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from epfiot.cli import main
from epfiot.lwm2m.rebootstrap import FinishHistory, RebootstrapRule
from epfiot.registry import STATUS_BOOTSTRAPPED, STATUS_FAILED, Registry
from tests.lwm2m_client import Lwm2mTestClient
from tests.lwm2m_support import (
    Events,
    Serve,
    epfiot_serve,
    record,
    run,
    seed,
    server,
    status_becomes,
    thing,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "registry.db"


def test_a_device_that_reboots_and_bootstraps_again_is_bootstrapped(db: Path) -> None:
    seed(db, thing())
    events = Events()

    async def scenario() -> None:
        async with server(db, events) as bs, Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port) as client:
            await client.bootstrap()
            await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED)
            await client.bootstrap()  # seconds later, after a reboot
            bs.flush()

    run(scenario())
    rec = record(db, "sensor-1")
    assert rec.status == STATUS_BOOTSTRAPPED and rec.error is None
    assert events.kinds() == ["bootstrap.started", "bootstrap.finished"] * 2


def test_a_rebootstrap_loop_is_failed_until_a_finish_stands_for_the_window(db: Path) -> None:
    seed(db, thing())
    events = Events()

    async def scenario() -> None:
        async with (
            server(db, events, rebootstrap_count=3, rebootstrap_window=1.0) as bs,
            Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port) as client,
        ):
            for _ in range(2):
                await client.bootstrap()
            bs.flush()
            assert record(db, "sensor-1").status == STATUS_BOOTSTRAPPED
            await client.bootstrap()  # the third within the window: the client does not take what it gets
            rec = await status_becomes(db, "sensor-1", STATUS_FAILED)
            assert rec.error is not None and "3 times within" in rec.error
            await client.bootstrap()
            bs.flush()
            assert record(db, "sensor-1").status == STATUS_FAILED
            rec = await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED, timeout=5)
            assert rec.error is None

    run(scenario())
    assert events.kinds().count("bootstrap.failed") == 2
    assert events.kinds().count("bootstrap.finished") == 4


def test_with_a_count_of_2_bootstrapping_again_soon_after_finish_is_a_failure(db: Path) -> None:
    seed(db, thing())
    events = Events()

    async def scenario() -> None:
        async with (
            server(db, events, rebootstrap_count=2, rebootstrap_window=0.4) as bs,
            Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port) as client,
        ):
            await client.bootstrap()
            await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED)
            await client.bootstrap()  # the client did not take what it got
            rec = await status_becomes(db, "sensor-1", STATUS_FAILED)
            assert rec.error is not None and "bootstrapped again" in rec.error
            # it stays failed while the client keeps coming back ...
            await client.bootstrap()
            assert record(db, "sensor-1").status == STATUS_FAILED
            # ... and counts as bootstrapped once a Finish stood for the whole window
            rec = await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED, timeout=5)
            assert rec.error is None

    run(scenario())
    assert events.kinds().count("bootstrap.failed") == 2
    assert events.kinds().count("bootstrap.finished") == 3


def test_bootstrapping_again_after_the_window_or_a_config_change_is_fine(db: Path) -> None:
    seed(db, thing())

    async def scenario() -> None:
        async with (
            server(db, rebootstrap_count=2, rebootstrap_window=60) as bs,
            Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port, version="1.0") as client,
        ):
            await client.bootstrap()
            await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED)
            with Registry(db) as reg:
                reg.upsert(thing(lifetime=30))
            await client.bootstrap()
            rec = await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED)
            assert rec.error is None
            assert client.value("/1/1/1", "int") == 30
        async with (
            server(db, rebootstrap_window=0) as bs,
            Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port) as client,
        ):
            await client.bootstrap()
            await client.bootstrap()
            bs.flush()
            assert record(db, "sensor-1").status == STATUS_BOOTSTRAPPED

    run(scenario())


def test_serve_takes_the_rule_from_its_flags(db: Path) -> None:
    seed(db, thing())

    async def scenario(child: Serve) -> None:
        async with Lwm2mTestClient("sensor-1", "127.0.0.1", child.port) as client:
            await client.bootstrap()
            await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED)
            await client.bootstrap()
            rec = await status_becomes(db, "sensor-1", STATUS_FAILED)
            assert rec.error is not None and "2 times within" in rec.error

    with epfiot_serve(db.parent, "--rebootstrap-count", "2", "--rebootstrap-window", "600") as child:
        run(scenario(child))
        child.proc.send_signal(signal.SIGTERM)
        assert child.finish()[0] == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rebootstrap-count", "1"], "rebootstrap count must be an integer of at least 2"),
        (["--rebootstrap-window", "-5"], "rebootstrap window must not be negative"),
    ],
)
def test_serve_refuses_a_rule_that_is_no_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["--state-dir", str(tmp_path / "state"), "serve", "--port", "0", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("count", [2, 3, 5])
def test_the_rule_counts_bootstraps_within_the_window_for_one_configuration(count: int) -> None:
    history = FinishHistory(RebootstrapRule(count, 10.0))
    for t in range(count - 1):  # count - 1 Finishes, 1 s apart: the next bootstrap is the count-th
        assert history.loop_error("a", 1, float(t)) is None
        history.finished("a", 1, float(t))
    error = history.loop_error("a", 1, float(count - 1))
    assert error is not None and f"{count} times within {count - 1:.1f} s" in error
    assert history.loop_error("a", 2, float(count - 1)) is None  # another configuration: counted anew
    assert history.loop_error("b", 1, float(count - 1)) is None
    assert history.loop_error("a", 1, 10.5) is None  # the first Finish left the window
    assert history.last("a") == (1, float(count - 2))
