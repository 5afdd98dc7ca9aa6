"""The bootstrap server end to end: real aiocoap server and clients on loopback (127.0.0.1 and
::1). The test client (tests/lwm2m_client.py) behaves like a LwM2M 1.0 client (no pct, TLV) or
1.1 client (pct=110, SenML-JSON). No fixed sleeps: every wait is a condition with a deadline.
Stopping, restarting, floods and re-bootstrap loops: tests/test_lwm2m_lifecycle.py."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from pathlib import Path

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from epfiot.lwm2m.server import BootstrapServer
from epfiot.registry import (
    STATUS_BOOTSTRAPPED,
    STATUS_FAILED,
    STATUS_WAITING,
    Registry,
    ResourceWrite,
    ThingRecord,
)
from tests.lwm2m_client import Lwm2mTestClient
from tests.lwm2m_support import (
    ACK,
    CON,
    DELETE,
    GET,
    LOOPBACKS,
    NON,
    POST,
    Events,
    coap,
    opt_path_bs,
    opt_queries,
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
# the happy path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", LOOPBACKS)
@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_client_initiated_bootstrap(db: Path, address: str, version: str) -> None:
    seed(db, thing(lifetime=120, binding="UQ", short_server_id=3))
    events = Events()

    async def scenario() -> Lwm2mTestClient:
        async with (
            server(db, events) as bs,
            Lwm2mTestClient("sensor-1", address, bs.port, version=version, bind=address) as client,
        ):
            await client.bootstrap()
            await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED)
            return client

    client = run(scenario())
    assert client.violations == []
    assert client.operations() == ["DELETE /0", "DELETE /1", "PUT /0/1", "PUT /1/1", "POST /bs"]
    writes = [r for r in client.received if r.method == "PUT"]
    assert {r.content_format for r in writes} == {client.expected_format}
    # what the client now holds: its own bootstrap account untouched, our accounts in instance 1
    assert client.objects[0][0][1] is True
    assert client.value("/0/1/0", "str") == "coap://10.0.0.5:5683"
    assert client.value("/0/1/1", "bool") is False
    assert client.value("/0/1/2", "int") == 3
    assert client.value("/0/1/10", "int") == 3
    assert client.value("/1/1/0", "int") == 3
    assert client.value("/1/1/1", "int") == 120
    assert client.value("/1/1/6", "bool") is False
    assert client.value("/1/1/7", "str") == "UQ"
    assert set(client.objects[1]) == {1}

    rec = record(db, "sensor-1")
    assert rec.written_server_uri == "coap://10.0.0.5:5683"
    assert rec.bootstrapped_at is not None and rec.error is None
    assert rec.client_address is not None
    assert rec.client_address.startswith("127.0.0.1:" if address == "127.0.0.1" else "[::1]:")
    assert events.kinds() == ["bootstrap.started", "bootstrap.finished"]
    finished = events.items[1][1]
    assert finished["server_uri"] == "coap://10.0.0.5:5683" and finished["owner"] == "alice"


def test_deletes_and_extra_writes_arrive_in_order(db: Path) -> None:
    writes = (
        ResourceWrite("/31024/0/1", "plant-a"),
        ResourceWrite("/3/0/14", "+02"),
        ResourceWrite("/31024/0/2", 42),
        ResourceWrite("/31024/0/3", 2.5),
        ResourceWrite("/1/1/3", 60),
    )
    seed(db, thing(deletes=("/0", "/1", "/31024/9"), writes=writes))

    async def scenario(version: str) -> Lwm2mTestClient:
        async with server(db, rebootstrap_window=0) as bs:
            client = Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port, version=version)
            client.objects[31024] = {9: {1: "old"}, 10: {1: "keep"}}
            async with client:
                await client.bootstrap()
            return client

    for version in ("1.0", "1.1"):
        client = run(scenario(version))
        assert client.violations == []
        assert client.operations() == [
            "DELETE /0",
            "DELETE /1",
            "DELETE /31024/9",
            "PUT /0/1",
            "PUT /1/1",
            "PUT /31024/0",
            "PUT /3/0",
            "POST /bs",
        ]
        assert set(client.objects[31024]) == {0, 10}
        assert client.value("/31024/0/1", "str") == "plant-a"
        assert client.value("/31024/0/2", "int") == 42
        assert client.value("/31024/0/3", "float") == 2.5
        assert client.value("/3/0/14", "str") == "+02"
        assert client.objects[3][0][0] == "epfiot-test"  # the rest of the Device instance is kept
        assert client.value("/1/1/3", "int") == 60
        assert client.value("/1/1/1", "int") == 300


def test_server_bound_to_any_serves_ipv4_and_ipv6_clients(db: Path) -> None:
    seed(db, thing("v4"), thing("v6"))

    async def scenario() -> None:
        async with server(db) as bs:
            async with (
                Lwm2mTestClient("v4", "127.0.0.1", bs.port, bind="127.0.0.1") as c4,
                Lwm2mTestClient("v6", "::1", bs.port, bind="::1", version="1.0") as c6,
            ):
                await asyncio.gather(c4.bootstrap(), c6.bootstrap())
            await status_becomes(db, "v4", STATUS_BOOTSTRAPPED)
            await status_becomes(db, "v6", STATUS_BOOTSTRAPPED)

    run(scenario())


# ---------------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------------


def test_unknown_endpoint_is_refused_and_logged(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    seed(db, thing("sensor-1"))
    events = Events()
    caplog.set_level(logging.WARNING, logger="epfiot.lwm2m")

    async def scenario() -> tuple[Code, Lwm2mTestClient, int]:
        async with server(db, events) as bs, Lwm2mTestClient("intruder", "127.0.0.1", bs.port) as client:
            code = await client.request_bootstrap()
            return code, client, bs.in_progress

    code, client, active = run(scenario())
    assert code == Code.NOT_FOUND
    assert client.received == [] and active == 0
    assert events.kinds() == ["bootstrap.refused"]
    assert events.items[0][1]["reason"] == "unknown endpoint"
    assert any("intruder" in r.getMessage() and "unknown endpoint" in r.getMessage() for r in caplog.records)
    assert record(db, "sensor-1").status == "pending"


def test_thing_waiting_for_its_server_is_refused(db: Path) -> None:
    seed(db, thing(server_uri=None))
    events = Events()

    async def scenario() -> tuple[Code, bytes, Lwm2mTestClient]:
        async with (
            server(db, events) as bs,
            Lwm2mTestClient("sensor-1", "::1", bs.port, bind="::1") as client,
        ):
            message = aiocoap.Message(code=Code.POST, uri=f"coap://[::1]:{bs.port}/bs")
            message.opt.uri_query = ("ep=sensor-1",)
            response = await client._ctx.request(message).response
            return response.code, response.payload, client

    code, payload, client = run(scenario())
    assert code == Code.FORBIDDEN and payload == b""  # nothing about the thing is revealed
    assert client.received == []
    assert events.kinds() == ["bootstrap.refused"]
    assert record(db, "sensor-1").status == STATUS_WAITING


def test_config_changes_are_picked_up_by_a_running_server(db: Path) -> None:
    seed(db, thing(server_uri=None))

    async def scenario() -> Lwm2mTestClient:
        async with server(db) as bs, Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port) as client:
            assert await client.request_bootstrap() == Code.FORBIDDEN
            with Registry(db) as reg:  # the VM got its address
                reg.upsert(thing(server_uri="coap://10.0.0.9:5683"))
            await client.bootstrap()
            await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED)
            with Registry(db) as reg:  # and then the thing is removed
                reg.delete("sensor-1")
            assert await client.request_bootstrap() == Code.NOT_FOUND
            return client

    client = run(scenario())
    assert client.value("/0/1/0", "str") == "coap://10.0.0.9:5683"


# ---------------------------------------------------------------------------------------------
# malformed input
# ---------------------------------------------------------------------------------------------


# (datagram, expected response code as (class, detail), None = no answer expected / not checked)
MALFORMED: list[tuple[str, bytes, tuple[int, int] | None]] = [
    ("empty datagram", b"", None),
    ("one byte", b"\x40", None),
    ("all ones", b"\xff" * 40, None),
    ("version 0", b"\x00\x02\x00\x01", None),
    ("token length 9", b"\x49\x02\x00\x01" + b"t" * 9, None),
    ("payload marker without payload", b"\x40\x02\x00\x02\xb2bs\xff", None),
    ("reserved option delta", b"\x40\x02\x00\x03\xf0", None),
    ("truncated option", b"\x40\x02\x00\x04\xbd", None),
    ("no ep", coap(CON, POST, 10, b"a", opt_path_bs()), (4, 0)),
    ("empty ep", coap(CON, POST, 11, b"b", opt_path_bs() + opt_queries(b"ep=")), (4, 0)),
    (
        "repeated ep",
        coap(CON, POST, 12, b"c", opt_path_bs() + opt_queries(b"ep=sensor-1", b"ep=sensor-1")),
        (4, 0),
    ),
    ("bad pct", coap(CON, POST, 13, b"d", opt_path_bs() + opt_queries(b"ep=sensor-1", b"pct=json")), (4, 0)),
    (
        "query without =",
        coap(CON, POST, 14, b"e", opt_path_bs() + opt_queries(b"ep=sensor-1", b"junk")),
        (4, 0),
    ),
    ("non-UTF-8 ep", coap(CON, POST, 15, b"f", opt_path_bs() + opt_queries(b"ep=\xff\xfe")), None),
    ("GET /bs", coap(CON, GET, 16, b"g", opt_path_bs() + opt_queries(b"ep=sensor-1")), (4, 5)),
    ("DELETE /bs", coap(CON, DELETE, 17, b"h", opt_path_bs() + opt_queries(b"ep=sensor-1")), (4, 5)),
    ("POST /rd", coap(CON, POST, 18, b"i", b"\xb2rd" + opt_queries(b"ep=sensor-1")), (4, 4)),
    ("POST /", coap(CON, POST, 19, b"j", opt_queries(b"ep=sensor-1")), (4, 4)),
    ("unknown ep", coap(CON, POST, 20, b"k", opt_path_bs() + opt_queries(b"ep=nobody")), (4, 4)),
    ("NON without ep", coap(NON, POST, 21, b"l", opt_path_bs()), (4, 0)),
    ("ping", coap(CON, 0, 22, b""), None),
    ("stray response", coap(ACK, 0x45, 23, b"zz", b"", b"hello"), None),
    ("stray CON response", coap(CON, 0x44, 24, b"zy"), None),
    ("random 1", bytes(random.Random(1).randrange(256) for _ in range(60)), None),
    ("random 2", bytes(random.Random(2).randrange(256) for _ in range(1200)), None),
]


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_malformed_requests_leave_the_server_serving_and_the_registry_unchanged(
    db: Path, family: int, caplog: pytest.LogCaptureFixture
) -> None:
    seed(db, thing("sensor-1"), thing("sensor-2"), thing("waiting", server_uri=None))
    with Registry(db) as reg:
        before = reg.things()
    events = Events()

    async def scenario() -> tuple[dict[str, tuple[int, int] | None], Lwm2mTestClient, list[ThingRecord]]:
        answers: dict[str, tuple[int, int] | None] = {}
        async with server(db, events) as bs:
            host = "127.0.0.1" if family == socket.AF_INET else "::1"
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                loop = asyncio.get_running_loop()
                await loop.sock_connect(sock, (host, bs.port))
                wanted = {
                    datagram[4 : 4 + (datagram[0] & 0x0F)]: name for name, datagram, exp in MALFORMED if exp
                }
                for _name, datagram, _expected in MALFORMED:
                    await loop.sock_sendall(sock, datagram)
                await loop.sock_sendall(sock, coap(CON, 0, 99, b""))  # a ping, answered with RST
                pinged = False
                while not pinged or len(answers) < len(wanted):
                    reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
                    token = reply[4 : 4 + (reply[0] & 0x0F)]
                    if token in wanted:
                        answers[wanted[token]] = (reply[1] >> 5, reply[1] & 0x1F)
                    elif reply[2:4] == (99).to_bytes(2, "big"):
                        assert (reply[0] >> 4) & 3 == 3  # RST
                        pinged = True
            bs.flush()
            with Registry(db) as reg:
                during = reg.things()
            async with Lwm2mTestClient("sensor-1", host, bs.port, bind=host) as client:
                await client.bootstrap()
            return answers, client, during

    answers, client, during = run(scenario())
    assert answers == {name: expected for name, _, expected in MALFORMED if expected is not None}
    assert during == before
    assert client.violations == [] and client.finishes == 1
    assert record(db, "sensor-1").status == STATUS_BOOTSTRAPPED
    assert record(db, "sensor-2") == before[1]
    assert [k for k in events.kinds() if k != "bootstrap.refused"] == [
        "bootstrap.started",
        "bootstrap.finished",
    ]
    # nothing escaped as an error with a traceback (aiocoap raises on options that are not UTF-8)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# ---------------------------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------------------------


def test_error_response_fails_the_bootstrap_and_stops_it(db: Path) -> None:
    seed(db, thing())
    events = Events()

    async def scenario() -> Lwm2mTestClient:
        async with server(db, events) as bs:
            client = Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port, answer={"PUT /1/1": Code.BAD_REQUEST})
            async with client:
                assert await client.request_bootstrap() == Code.CHANGED
                rec = await status_becomes(db, "sensor-1", STATUS_FAILED)
                assert rec.error is not None and "PUT /1/1" in rec.error and "4.00" in rec.error
            return client

    client = run(scenario())
    assert client.operations() == ["DELETE /0", "DELETE /1", "PUT /0/1", "PUT /1/1"]  # no Finish
    assert events.kinds() == ["bootstrap.started", "bootstrap.failed"]


def test_a_client_that_stops_answering_times_out(db: Path) -> None:
    seed(db, thing())

    async def scenario() -> Lwm2mTestClient:
        async with server(db, exchange_timeout=0.5) as bs:
            client = Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port, swallow={"PUT /0/1"})
            async with client:
                started = time.monotonic()
                assert await client.request_bootstrap() == Code.CHANGED
                rec = await status_becomes(db, "sensor-1", STATUS_FAILED)
                assert time.monotonic() - started < 5
                assert rec.error == "no answer to PUT /0/1 within 0.5 s"
            return client

    client = run(scenario())
    assert client.operations() == ["DELETE /0", "DELETE /1", "PUT /0/1"]


def test_a_new_bootstrap_supersedes_an_unfinished_one(db: Path) -> None:
    seed(db, thing())
    events = Events()

    async def scenario() -> None:
        async with server(db, events) as bs:
            stuck = Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port, swallow={"PUT /0/1"})
            async with stuck, Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port) as fresh:
                assert await stuck.request_bootstrap() == Code.CHANGED
                await stuck.wait_for(lambda: "PUT /0/1" in stuck.operations())
                await fresh.bootstrap()
                rec = await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED)
                assert rec.client_address == f"127.0.0.1:{fresh.port}"

    run(scenario())
    assert events.kinds() == [
        "bootstrap.started",
        "bootstrap.failed",
        "bootstrap.started",
        "bootstrap.finished",
    ]
    assert "new bootstrap" in str(events.items[1][1]["error"])


def test_events_and_logs_carry_no_written_values(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-pre-shared-value"
    seed(db, thing(writes=(ResourceWrite("/0/2/5", secret), ResourceWrite("/31024/0/1", secret))))
    events = Events()
    caplog.set_level(logging.DEBUG, logger="epfiot.lwm2m")

    async def scenario() -> None:
        async with server(db, events) as bs, Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port) as client:
            await client.bootstrap()
            assert client.objects[0][2][5] == secret

    run(scenario())
    assert events.kinds() == ["bootstrap.started", "bootstrap.finished"]
    assert secret not in repr(events.items)
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_a_failing_event_callback_does_not_break_bootstraps(db: Path) -> None:
    seed(db, thing())

    def broken(kind: str, fields: dict[str, object]) -> None:
        raise RuntimeError("event log is full")

    async def scenario() -> None:
        async with BootstrapServer(db, "::", 0, on_event=broken) as bs:
            async with Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port) as client:
                await client.bootstrap()
            await status_becomes(db, "sensor-1", STATUS_BOOTSTRAPPED)

    run(scenario())


# ---------------------------------------------------------------------------------------------
# the registry unavailable
# ---------------------------------------------------------------------------------------------


def test_registry_failure_answers_service_unavailable(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(db, thing())
    from epfiot.registry import RegistryError

    async def scenario() -> Code:
        async with server(db) as bs:

            def broken(name: str) -> None:
                raise RegistryError("database is locked")

            assert bs._bootstrapper is not None
            monkeypatch.setattr(bs._bootstrapper.cache, "target", broken)
            async with Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port) as client:
                return await client.request_bootstrap()

    assert run(scenario()) == Code.SERVICE_UNAVAILABLE
