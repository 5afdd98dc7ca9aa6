"""Floods of refused requests: answered, and forgotten at once (real aiocoap server, raw datagrams on
loopback). bench/bench_flood.py measures the same at 10,000 datagrams/s."""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc
from pathlib import Path

import pytest

from tests.lwm2m_client import Lwm2mTestClient
from tests.lwm2m_support import (
    CON,
    GET,
    POST,
    Events,
    coap,
    eventually,
    opt_path_bs,
    opt_queries,
    run,
    seed,
    server,
    thing,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "registry.db"


def refused(i: int, mid: int) -> bytes:
    token = i.to_bytes(4, "big")
    return [
        coap(CON, POST, mid, token, opt_path_bs() + opt_queries(b"ep=intruder")),
        coap(CON, POST, mid, token, opt_path_bs()),
        coap(CON, GET, mid, token, opt_path_bs() + opt_queries(b"ep=sensor-1")),
        coap(CON, POST, mid, token, b"\xb2rd" + opt_queries(b"ep=sensor-1")),
    ][i % 4]


def test_refused_requests_leave_no_state_behind(db: Path) -> None:
    """aiocoap keeps duplicate-detection state for every request it answers, for 247 s: about 2.4 KB per
    refused datagram, so memory grew with the rate of a flood."""
    seed(db, thing("sensor-1"))
    events = Events()
    count, sources = 4000, 8

    async def flood(port: int, first: int, n: int) -> dict[str, int]:
        loop = asyncio.get_running_loop()
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sources)]
        answers: dict[str, int] = {}
        try:
            for sock in socks:
                sock.bind(("127.0.0.1", 0))
                sock.setblocking(False)

            def drain(sock: socket.socket) -> None:
                while True:
                    try:
                        data = sock.recv(2048)
                    except BlockingIOError:
                        return
                    code = f"{data[1] >> 5}.{data[1] & 31:02d}"
                    answers[code] = answers.get(code, 0) + 1

            for sock in socks:
                loop.add_reader(sock.fileno(), drain, sock)
            for sent, i in enumerate(range(first, first + n), 1):
                socks[i % sources].sendto(refused(i, i & 0xFFFF), ("127.0.0.1", port))
                if sent % 100 == 0:  # no faster than the server answers: nothing lost in the socket buffer
                    behind = sent - 200
                    await eventually(lambda b=behind: sum(answers.values()) >= b, 10, "answers")
            await eventually(lambda: sum(answers.values()) >= n, 10, "all answers")
            for sock in socks:
                loop.remove_reader(sock.fileno())
        finally:
            for sock in socks:
                sock.close()
        return answers

    async def scenario() -> tuple[int, dict[str, int]]:
        async with server(db, events) as bs:
            await flood(bs.port, 0, 400)  # first-use allocations (caches, the loop's)
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                answers = await flood(bs.port, 400, count)
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            async with Lwm2mTestClient("sensor-1", "127.0.0.1", bs.port) as client:
                await client.bootstrap()  # still serving
            return grown, answers

    grown, answers = run(scenario())
    assert answers == {"4.04": count // 2, "4.00": count // 4, "4.05": count // 4}
    assert grown < 100 * count, f"{grown / count:.0f} bytes held per refused datagram"
    # counted, not one event each: per reason, the first at once, then a summary with the count
    refusals = [fields for kind, fields in events.items if kind == "bootstrap.refused"]
    reasons = {"unknown endpoint", "bad request", "method not allowed", "no such resource"}
    assert {str(f["reason"]) for f in refusals} == reasons
    assert len(refusals) <= 3 * len(reasons)
    assert sum(int(str(f["count"])) for f in refusals) == 400 + count


def test_a_retransmitted_refused_request_is_answered_again(db: Path) -> None:
    seed(db, thing("sensor-1"))

    async def scenario() -> list[bytes]:
        async with server(db) as bs:
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, ("::1", bs.port))
                datagram = coap(CON, POST, 77, b"rt", opt_path_bs() + opt_queries(b"ep=intruder"))
                replies = []
                for _ in range(2):
                    await loop.sock_sendall(sock, datagram)
                    replies.append(await asyncio.wait_for(loop.sock_recv(sock, 2048), 5))
                return replies

    first, second = run(scenario())
    assert first == second
    assert first[:2] == bytes([0x60 | 2, 0x84]) and first[2:4] == (77).to_bytes(2, "big")  # ACK, 4.04
    assert first[4:6] == b"rt"
