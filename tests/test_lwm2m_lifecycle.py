"""The bootstrap server's lifecycle: stopping while exchanges are in progress (SIGTERM included),
restarting after a crash, serving until cancelled, load. Real aiocoap servers and clients on loopback,
and `epfiot serve` as a process where the process is the point; no fixed sleeps. Floods:
tests/test_lwm2m_flood.py; clients that bootstrap again: tests/test_lwm2m_rebootstrap.py."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import pytest
from aiocoap.numbers.codes import Code

from epfiot.lwm2m.server import BootstrapServer, run_bootstrap_server
from epfiot.registry import (
    STATUS_BOOTSTRAPPED,
    STATUS_BOOTSTRAPPING,
    STATUS_FAILED,
    STATUS_TIMEOUT,
    Registry,
    StatusUpdate,
)
from tests.lwm2m_client import Lwm2mTestClient
from tests.lwm2m_support import (
    Events,
    Serve,
    epfiot_serve,
    eventually,
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


# ---------------------------------------------------------------------------------------------
# stopping
# ---------------------------------------------------------------------------------------------


def test_stop_lets_the_exchanges_in_progress_finish_and_turns_new_ones_away(db: Path) -> None:
    seed(db, thing("sensor-1"), thing("sensor-2"))
    events = Events()

    async def scenario() -> tuple[Lwm2mTestClient, Code, Lwm2mTestClient]:
        async with (
            server(db, events) as bs,
            Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port, hold={"PUT /0/1"}) as busy,
            Lwm2mTestClient("sensor-2", "127.0.0.1", bs.port) as late,
        ):
            assert await busy.request_bootstrap() == Code.CHANGED
            await busy.wait_for(lambda: "PUT /0/1" in busy.operations())
            stopping = asyncio.create_task(bs.stop())
            await asyncio.sleep(0)  # stop() has begun: it turns new bootstraps away from its first step
            code = await late.request_bootstrap()
            assert not stopping.done() and bs.running
            busy.release()
            await busy.wait_finished()
            await asyncio.wait_for(stopping, 10)
            assert not bs.running
            return busy, code, late

    busy, code, late = run(scenario())
    assert code == Code.SERVICE_UNAVAILABLE and late.received == []
    assert busy.operations() == ["DELETE /0", "DELETE /1", "PUT /0/1", "PUT /1/1", "POST /bs"]
    assert busy.violations == []
    assert record(db, "sensor-1").status == STATUS_BOOTSTRAPPED
    assert events.kinds("sensor-1") == ["bootstrap.started", "bootstrap.finished"]


def test_stop_cancels_the_exchanges_still_running_at_its_deadline(db: Path) -> None:
    seed(db, thing())

    async def scenario() -> float:
        bs = server(db, stop_timeout=0.3)
        await bs.start()
        try:
            async with Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port, swallow={"DELETE /1"}) as client:
                assert await client.request_bootstrap() == Code.CHANGED
                await client.wait_for(lambda: "DELETE /1" in client.operations())
                started = time.monotonic()
                await bs.stop()
                return time.monotonic() - started
        finally:
            await bs.stop()

    took = run(scenario())
    assert 0.3 <= took < 5
    rec = record(db, "sensor-1")
    assert rec.status == STATUS_FAILED and rec.error == "the bootstrap server stopped during the exchange"


def test_cancelling_stop_cancels_the_exchanges_at_once(db: Path) -> None:
    """A second SIGTERM while `epfiot serve` waits for the exchanges in progress."""
    seed(db, thing())

    async def scenario() -> None:
        bs = server(db)
        await bs.start()
        async with Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port, swallow={"DELETE /1"}) as client:
            assert await client.request_bootstrap() == Code.CHANGED
            await client.wait_for(lambda: "DELETE /1" in client.operations())
            stopping = asyncio.create_task(bs.stop())
            await asyncio.sleep(0)  # stop() is waiting for the exchange (for up to 10 s)
            stopping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(stopping, 5)
            assert not bs.running

    run(scenario())
    rec = record(db, "sensor-1")
    assert rec.status == STATUS_FAILED and rec.error == "the bootstrap server stopped during the exchange"


def test_sigterm_lets_the_bootstrap_in_progress_finish(db: Path) -> None:
    seed(db, thing("sensor-1"), thing("sensor-2"))
    with epfiot_serve(db.parent) as child:
        busy, code = run(bootstrap_across_sigterm(child))
        returncode, out = child.finish()
    assert returncode == 0 and "stopped" in out, out
    assert code == Code.SERVICE_UNAVAILABLE
    assert busy.operations()[-1] == "POST /bs" and busy.finishes == 1
    assert record(db, "sensor-1").status == STATUS_BOOTSTRAPPED


async def bootstrap_across_sigterm(child: Serve) -> tuple[Lwm2mTestClient, Code]:
    """A bootstrap in progress when `epfiot serve` gets SIGTERM, and one that starts after."""
    async with (
        Lwm2mTestClient("sensor-1", "127.0.0.1", child.port, hold={"PUT /0/1"}) as busy,
        Lwm2mTestClient("sensor-2", "127.0.0.1", child.port) as late,
    ):
        assert await busy.request_bootstrap() == Code.CHANGED
        await busy.wait_for(lambda: "PUT /0/1" in busy.operations())
        child.proc.send_signal(signal.SIGTERM)
        await child.line(lambda line: "stopping: waiting" in line)
        code = await late.request_bootstrap()
        busy.release()
        await busy.wait_finished()
        return busy, code


# ---------------------------------------------------------------------------------------------
# restarting after a crash
# ---------------------------------------------------------------------------------------------


def test_a_restarted_server_times_out_the_exchanges_a_killed_one_left(db: Path) -> None:
    seed(db, thing("sensor-1"), thing("sensor-2"), thing("sensor-3"))

    async def crash(child: Serve) -> None:
        async with Lwm2mTestClient("sensor-1", "127.0.0.1", child.port, swallow={"PUT /0/1"}) as client:
            assert await client.request_bootstrap() == Code.CHANGED
            await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPING)
            child.kill()  # SIGKILL in the middle of the exchange: no outcome is recorded

    with epfiot_serve(db.parent) as child:
        run(crash(child))
    assert record(db, "sensor-1").status == STATUS_BOOTSTRAPPING
    with Registry(db) as reg:  # and one a server killed an hour ago left
        revision = reg.bootstrap_target("sensor-2").revision  # type: ignore[union-attr]
        reg.apply_status([StatusUpdate("sensor-2", revision, STATUS_BOOTSTRAPPING, at=time.time() - 3600)])
    events = Events()

    async def restart() -> None:
        async with server(db, events, exchange_timeout=1.0) as bs:
            # older than the exchange timeout: expired as the server starts
            assert record(db, "sensor-2").status == STATUS_TIMEOUT
            # younger: its exchange would have had until one timeout after this start
            assert record(db, "sensor-1").status == STATUS_BOOTSTRAPPING
            rec = await status_becomes(db, "sensor-1", STATUS_TIMEOUT, timeout=10)
            assert rec.error is not None and "stopped during the exchange" in rec.error
            async with Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port) as client:
                await client.bootstrap()
            await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED)
            bs.flush()

    run(restart())
    assert record(db, "sensor-3").status == "pending"
    timeouts = [fields for kind, fields in events.items if kind == "bootstrap.timeout"]
    assert [t["endpoint"] for t in timeouts] == ["sensor-2", "sensor-1"]
    assert timeouts[1]["owner"] == "alice" and str(timeouts[1]["client"]).startswith("127.0.0.1:")


# ---------------------------------------------------------------------------------------------
# floods
# ---------------------------------------------------------------------------------------------


# load, lifecycle
# ---------------------------------------------------------------------------------------------


def test_200_clients_with_their_own_ports_bootstrap_concurrently(db: Path) -> None:
    count = 200
    seed(
        db,
        *(
            thing(f"dev-{i:03d}", server_uri=f"coap://10.0.{i // 250}.{i % 250 + 1}:5683")
            for i in range(count)
        ),
    )
    events = Events()

    async def scenario() -> list[Lwm2mTestClient]:
        async with server(db, events) as bs:
            clients = [
                Lwm2mTestClient(f"dev-{i:03d}", "127.0.0.1", bs.port, version="1.1" if i % 2 else "1.0")
                for i in range(count)
            ]
            await asyncio.gather(*(c.start() for c in clients))
            try:
                await asyncio.wait_for(asyncio.gather(*(c.bootstrap(timeout=60) for c in clients)), 120)
                with Registry(db) as reg:
                    await eventually(
                        lambda: all(t.status == STATUS_BOOTSTRAPPED for t in reg.things()),
                        10,
                        "all bootstrapped",
                    )
            finally:
                await asyncio.gather(*(c.close() for c in clients))
            return clients

    clients = run(scenario())
    assert len({c.port for c in clients}) == count
    # each bootstrap went to the client that asked for it
    assert {_client_address(db, c.endpoint) for c in clients} == {f"127.0.0.1:{c.port}" for c in clients}
    for i, client in enumerate(clients):
        assert client.violations == [] and client.finishes == 1
        assert client.value("/0/1/0", "str") == f"coap://10.0.{i // 250}.{i % 250 + 1}:5683"
    assert events.kinds().count("bootstrap.finished") == count
    assert "bootstrap.failed" not in events.kinds()


def _client_address(db: Path, name: str) -> str:
    address = record(db, name).client_address
    assert address is not None
    return address


def test_run_bootstrap_server_serves_until_cancelled(db: Path) -> None:
    seed(db, thing())

    async def scenario() -> None:
        ready: asyncio.Future[BootstrapServer] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run_bootstrap_server(db, "::", 0, ready=ready.set_result))
        bs = await asyncio.wait_for(ready, 10)
        async with Lwm2mTestClient("sensor-1", "::1", bs.port, bind="::1") as client:
            await client.bootstrap()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not bs.running
        # the port is free again
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::", bs.port))

    run(scenario())
    assert record(db, "sensor-1").status == STATUS_BOOTSTRAPPED


def test_a_second_server_on_the_same_port_is_refused(db: Path) -> None:
    seed(db, thing())

    async def scenario() -> None:
        async with server(db) as first:
            second = BootstrapServer(db, "::", first.port)
            with pytest.raises(OSError, match="cannot listen"):
                await second.start()
            assert not second.running

    run(scenario())
