"""Refused datagrams are counted, not reported one event each: real aiocoap clients (plain CoAP and DTLS)
send thousands of requests the server refuses, and the event log gets a handful of events that add up to
them, so a flood can neither bury the log in rows nor push its real history out."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from lwm2m_client import Lwm2mTestClient
from lwm2m_support import Events, eventually, run, seed, thing

from epfiot.eventlog import EventLog, Retention, describe_bootstrap
from epfiot.lwm2m.server import BootstrapServer
from epfiot.psk import PskCredential, ThingKeys, key_file_path, write_key_file

HOST = "127.0.0.1"
KEY_A = bytes(range(16))
KEY_B = bytes(range(16, 32))


def _setup(tmp_path: Path) -> Path:
    db = tmp_path / "things.db"
    seed(db, thing("sensor-a"), thing("sensor-b"), thing("sensor-waiting", server_uri=None))
    write_key_file(
        key_file_path(db),
        {
            "sensor-a": ThingKeys(bootstrap=PskCredential("sensor-a", KEY_A)),
            "sensor-b": ThingKeys(bootstrap=PskCredential("sensor-b", KEY_B)),
        },
    )
    return db


def refusals(events: Events) -> list[dict[str, object]]:
    return [fields for kind, fields in events.items if kind == "bootstrap.refused"]


def counted(events: Events, reason: str) -> int:
    return sum(int(str(f["count"])) for f in refusals(events) if f["reason"] == reason)


async def refused_over_coap(port: int, total: int, clients: int = 4, at_once: int = 25) -> dict[Code, int]:
    """``total`` requests the server refuses (a multiple of ``clients * at_once``), from ``clients`` aiocoap
    client contexts, ``at_once`` at a time each."""
    codes: dict[Code, int] = {}

    def request(i: int) -> aiocoap.Message:
        base = f"coap://{HOST}:{port}"
        kind = i % 5
        if kind == 0:
            return aiocoap.Message(code=Code.POST, uri=f"{base}/bs?ep=intruder-{i}")
        if kind == 1:
            return aiocoap.Message(code=Code.POST, uri=f"{base}/bs?ep=sensor-a")  # keys: DTLS only
        if kind == 2:
            return aiocoap.Message(code=Code.POST, uri=f"{base}/bs?ep=sensor-waiting")
        if kind == 3:
            return aiocoap.Message(code=Code.POST, uri=f"{base}/bs")  # no ep
        return aiocoap.Message(code=Code.GET, uri=f"{base}/bs?ep=sensor-b")

    async def client(first: int) -> None:
        ctx = await aiocoap.Context.create_client_context()
        try:

            async def one(numbers: range) -> None:
                for i in numbers:
                    response = await ctx.request(request(i)).response
                    codes[response.code] = codes.get(response.code, 0) + 1

            share = total // clients
            step = share // at_once
            await asyncio.gather(
                *(one(range(first + k * step, first + (k + 1) * step)) for k in range(at_once))
            )
        finally:
            await ctx.shutdown()

    await asyncio.gather(*(client(c * (total // clients)) for c in range(clients)))
    return codes


def test_thousands_of_refused_requests_make_a_handful_of_events(tmp_path: Path) -> None:
    db = _setup(tmp_path)
    events = Events()
    total = 5_000

    async def scenario() -> dict[Code, int]:
        async with BootstrapServer(db, HOST, 0, on_event=events, dtls_port=0) as bs:
            codes = await refused_over_coap(bs.port, total)
            async with Lwm2mTestClient("sensor-b", HOST, bs.dtls_port, version="1.0", psk=("sensor-b", KEY_B)) as c:
                for _ in range(50):  # over DTLS, as sensor-b, asking to be sensor-a
                    c.endpoint = "sensor-a"
                    assert await c.request_bootstrap() == Code.FORBIDDEN
            return codes

    codes = run(scenario())
    assert codes == {Code.NOT_FOUND: total // 5, Code.FORBIDDEN: 2 * total // 5, Code.BAD_REQUEST: total // 5, Code.METHOD_NOT_ALLOWED: total // 5}
    found = refusals(events)
    kinds = {(f["reason"], f["transport"]) for f in found}
    assert kinds == {
        ("unknown endpoint", "coap"),
        ("a thing with credentials bootstraps over DTLS only", "coap"),
        ("waiting for its server (the VM has no address yet)", "coap"),
        ("bad request", "coap"),
        ("method not allowed", "coap"),
        ("the DTLS identity belongs to another thing", "coaps"),
    }
    assert len(found) <= 3 * len(kinds)  # the first of each at once, then summaries
    # every refused request is counted, once (a retransmission answered again would count again)
    assert total <= sum(int(str(f["count"])) for f in found if f["transport"] == "coap") <= total + 100
    assert counted(events, "the DTLS identity belongs to another thing") == 50
    first = next(f for f in found if f["reason"] == "unknown endpoint")
    assert first["count"] == 1 and str(first["endpoint"]).startswith("intruder-")
    waiting = next(f for f in found if f["reason"].startswith("waiting"))  # type: ignore[union-attr]
    assert waiting["owner"] == "alice"  # a declared thing: its owner's events show it


def test_summaries_come_once_per_interval_while_the_refusals_go_on(tmp_path: Path) -> None:
    db = _setup(tmp_path)
    events = Events()

    async def scenario() -> None:
        async with (
            BootstrapServer(db, HOST, 0, on_event=events, refusal_interval=0.2) as bs,
            Lwm2mTestClient("intruder", HOST, bs.port) as client,
        ):
            await client.request_bootstrap()
            await eventually(lambda: len(refusals(events)) == 1, what="the first refusal, at once")
            while len(refusals(events)) < 3:
                assert await client.request_bootstrap() == Code.NOT_FOUND

    run(scenario())
    found = refusals(events)
    assert found[0]["count"] == 1 and found[0]["endpoint"] == "intruder" and "seconds" not in found[0]
    assert all(f["count"] >= 1 and f["endpoints"] == ["intruder"] for f in found[1:])
    subject, message = describe_bootstrap("bootstrap.refused", found[1])
    assert subject == "lwm2m/refusals" and "more requests refused over coap" in message and "intruder" in message


def test_failed_dtls_handshakes_are_counted(tmp_path: Path) -> None:
    db = _setup(tmp_path)
    events = Events()

    async def scenario() -> None:
        async with BootstrapServer(
            db, HOST, 0, on_event=events, dtls_port=0, handshake_timeout=0.3, refusal_interval=0.2
        ) as bs:
            async with Lwm2mTestClient("sensor-a", HOST, bs.dtls_port, version="1.0", psk=("sensor-a", KEY_A)) as c:
                await c.bootstrap()
                await asyncio.sleep(1.0)  # well past the handshake timeout: a session that completed stays
                assert counted(events, "DTLS handshake failed") == 0
            for psk in [("sensor-a", KEY_B), ("nobody", KEY_A)]:  # a wrong key, an unknown identity
                async with Lwm2mTestClient("sensor-a", HOST, bs.dtls_port, version="1.0", psk=psk) as client:
                    with pytest.raises((aiocoap.error.Error, TimeoutError)):
                        await asyncio.wait_for(client.request_bootstrap(), 3)
            # each attempt counts (a client that tries its handshake again after it was dropped, again)
            await eventually(lambda: counted(events, "DTLS handshake failed") >= 2, what="failed handshakes")

    run(scenario())
    failed = [f for f in refusals(events) if f["reason"] == "DTLS handshake failed"]
    assert failed[0]["transport"] == "coaps" and failed[0]["count"] == 1
    assert describe_bootstrap("bootstrap.refused", failed[0])[0] == "lwm2m/refusals"


def test_a_session_its_client_closed_ends_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = _setup(tmp_path)
    events = Events()
    caplog.set_level(logging.WARNING)

    async def scenario() -> None:
        async with BootstrapServer(db, HOST, 0, on_event=events, dtls_port=0) as bs:
            for _ in range(3):
                async with Lwm2mTestClient("sensor-a", HOST, bs.dtls_port, version="1.0", psk=("sensor-a", KEY_A)) as c:
                    await c.bootstrap()
            await asyncio.sleep(0.2)  # the close_notify of the last one

    run(scenario())
    assert not [r.getMessage() for r in caplog.records if "Unhandled alert" in r.getMessage()]
    assert "Internal shutdown sequence mismatch" not in caplog.text
    assert refusals(events) == []


def test_dtls_sessions_are_bounded(tmp_path: Path) -> None:
    """aiocoap keeps a DTLS session for every source address and port it hears from: 300 sources, with a
    bound of 50, leave 50 and count the 250 dropped before their handshake as failures."""
    db = _setup(tmp_path)
    events = Events()
    sources = 300

    async def scenario() -> None:
        async with BootstrapServer(
            db, HOST, 0, on_event=events, dtls_port=0, max_dtls_sessions=50, refusal_interval=0.2
        ) as bs:
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sources)]
            try:
                for i, sock in enumerate(socks, 1):
                    sock.bind((HOST, 0))
                    sock.sendto(b"\x16\xfe\xfd" + bytes(10), (HOST, bs.dtls_port))  # a bare DTLS handshake record
                    if i % 10 == 0:
                        await asyncio.sleep(0.01)  # no faster than the server reads: none lost in its buffer
                await eventually(lambda: counted(events, "DTLS handshake failed") == sources - 50, what="drops")
            finally:
                for sock in socks:
                    sock.close()
            async with Lwm2mTestClient("sensor-a", HOST, bs.dtls_port, version="1.0", psk=("sensor-a", KEY_A)) as c:
                await c.bootstrap()  # still serving

    run(scenario())
    # the good client's session made one more room: 251 sessions dropped in their handshake
    assert counted(events, "DTLS handshake failed") == sources - 50 + 1


def test_a_flood_cannot_push_the_history_out_of_the_event_log(tmp_path: Path) -> None:
    db = _setup(tmp_path)
    log = EventLog.in_state_dir(tmp_path / "state", Retention(max_bytes=64 * 1024))
    for i in range(20):
        log.record("action.done", f"vm/alice/vm-{i}", "create: declared", source="apply")

    def on_event(kind: str, fields: dict[str, object]) -> None:  # as `epfiot serve` records them
        subject, message = describe_bootstrap(kind, fields)
        log.record(kind, subject, message, **fields)

    async def scenario() -> None:
        async with BootstrapServer(db, HOST, 0, on_event=on_event) as bs:
            await refused_over_coap(bs.port, 5000)

    try:
        run(scenario())
        kept = log.since()
    finally:
        log.close()
    assert [e.subject for e in kept if e.kind == "action.done"] == [f"vm/alice/vm-{i}" for i in range(20)]
    assert len([e for e in kept if e.kind == "bootstrap.refused"]) <= 15
