#!/usr/bin/env python3
"""Memory of the LwM2M bootstrap server under a datagram flood: its RSS while it receives datagrams it
refuses at a fixed rate (default 10,000 datagrams/s for 10 s), and whether real bootstraps still get
through. One run measures each flood against a fresh server:

* ``coap``: refused requests on the plain CoAP port: POST /bs for unknown endpoints (4.04), POST /bs
  without ep (4.00), GET /bs (4.05) and POST /rd (4.04), all CON, from ``--sources`` sockets of their
  own, each with its own message IDs (so none is a duplicate of another);
* ``dtls``: DTLS ClientHellos on the CoAP-over-DTLS port, each from a new socket (a new source port, as
  a flood with forged sources looks), none of which completes its handshake;
* ``dtls-unbounded``: the same against a server whose DTLS session bound is lifted (no handshake
  timeout, no session limit): how aiocoap's transport behaves on its own.

The server (epfiot's BootstrapServer, logging warnings to /dev/null) runs in a child process; the flood
and a probe client run in this process. The probe bootstraps a known endpoint (a fresh one each time)
over plain CoAP every 200 ms during the flood. RSS is read from /proc/<pid>/status. "held" is the RSS a
few seconds after the flood ended: state kept per datagram shows up there, garbage does not. The events
line counts the bootstrap.refused events the server emitted (refusals are counted, not one event each).

    python bench/bench_flood.py                          # coap, dtls, dtls-unbounded: 10,000/s for 10 s
    python bench/bench_flood.py --flood coap --rate 20000 --seconds 5 --sources 64
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_bootstrap import GET, POST, encode_request, make_clients, read_cpu_seconds, udp_receive_drops

PROBE_THINGS = 200
FLOODS = ("coap", "dtls", "dtls-unbounded")


async def _serve(registry: Path, host: str, unbounded: bool) -> None:
    from epfiot.lwm2m.server import BootstrapServer

    # as `epfiot serve` does, every refusal is logged as a warning (here to /dev/null, not a terminal)
    logging.basicConfig(level=logging.WARNING, stream=open(os.devnull, "w"))  # noqa: SIM115
    refused: list[int] = []

    def on_event(kind: str, fields: dict[str, object]) -> None:
        if kind == "bootstrap.refused":
            refused.append(int(str(fields.get("count", 1))))

    bounds = {"handshake_timeout": 1e9, "max_dtls_sessions": 10**9} if unbounded else {}
    server = BootstrapServer(registry, host, 0, on_event=on_event, dtls_port=0, **bounds)
    await server.start()
    print(f"PORTS {server.port} {server.dtls_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop()
    print(f"EVENTS {len(refused)} {sum(refused)}", flush=True)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def refused_request(i: int, mid: int, token: bytes) -> bytes:
    kind = i % 4
    if kind == 0:
        return encode_request(POST, mid, token, "/bs", (f"ep=intruder-{i}",))
    if kind == 1:
        return encode_request(POST, mid, token, "/bs")
    if kind == 2:
        return encode_request(GET, mid, token, "/bs", ("ep=intruder",))
    return encode_request(POST, mid, token, "/rd", ("ep=intruder",))


def client_hello(random_bytes: bytes) -> bytes:
    """A DTLS 1.2 ClientHello offering TLS_PSK_WITH_AES_128_CCM_8, no cookie (the first flight)."""
    body = b"\xfe\xfd" + random_bytes + b"\x00" + b"\x00" + b"\x00\x02\xc0\xa8" + b"\x01\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00" + len(body).to_bytes(3, "big")
    record = handshake + body
    return b"\x16\xfe\xfd" + b"\x00\x00" + bytes(6) + len(record).to_bytes(2, "big") + record


class HelloFlood:
    """ClientHellos, each from a socket of its own (a new source port each time)."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.local = "::1" if self.family == socket.AF_INET6 else "127.0.0.1"
        self.sent = 0
        self.unsent = 0
        self.answers: collections.Counter[str] = collections.Counter()

    def start_reading(self) -> None:
        pass

    async def run(self, rate: float, seconds: float) -> float:
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            due = min(int(rate * elapsed), int(rate * seconds)) - self.sent - self.unsent
            for _ in range(due):
                try:
                    with socket.socket(self.family, socket.SOCK_DGRAM) as sock:
                        sock.bind((self.local, 0))
                        sock.sendto(client_hello(os.urandom(32)), self.server)
                    self.sent += 1
                except OSError:
                    self.unsent += 1
            await asyncio.sleep(0.002)
        return time.perf_counter() - start

    def close(self) -> None:
        pass


class Flood:
    def __init__(self, server: tuple[str, int], sources: int) -> None:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        local = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.server = server
        self.socks = []
        for _ in range(sources):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((local, 0))
            sock.setblocking(False)
            self.socks.append(sock)
        self.mids = [random.randrange(0x10000) for _ in self.socks]
        self.sent = 0
        self.unsent = 0
        self.answers: collections.Counter[str] = collections.Counter()

    def start_reading(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.socks:
            loop.add_reader(sock.fileno(), self._drain, sock)

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                return
            if len(data) >= 2:
                self.answers[f"{data[1] >> 5}.{data[1] & 31:02d}"] += 1

    async def run(self, rate: float, seconds: float) -> float:
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            due = min(int(rate * elapsed), int(rate * seconds)) - self.sent - self.unsent
            for _ in range(due):
                n = self.sent + self.unsent
                i = n % len(self.socks)
                self.mids[i] = (self.mids[i] + 1) & 0xFFFF
                datagram = refused_request(n, self.mids[i], n.to_bytes(4, "big"))
                try:
                    self.socks[i].sendto(datagram, self.server)
                    self.sent += 1
                except (BlockingIOError, OSError):
                    self.unsent += 1
            await asyncio.sleep(0.002)
        return time.perf_counter() - start

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.socks:
            loop.remove_reader(sock.fileno())
            sock.close()


async def probe(server: tuple[str, int], stop: asyncio.Event, latencies: list[float], failures: list[str]) -> None:
    [client] = await make_clients(1, server, False)
    try:
        for i in range(PROBE_THINGS):
            if stop.is_set():
                return
            try:
                latencies.append(await client.exchange("bs", f"probe-{i}", timeout=10.0))
            except (TimeoutError, RuntimeError) as exc:
                failures.append(type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        assert client.transport is not None
        client.transport.close()


async def sample_rss(pid: int, stop: asyncio.Event, samples: list[int]) -> None:
    while not stop.is_set():
        samples.append(rss_kib(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def measure(args: argparse.Namespace, kind: str) -> dict[str, object]:
    from epfiot.psk import PskCredential, ThingKeys, key_file_path, write_key_file
    from epfiot.registry import Registry, ThingConfig

    with tempfile.TemporaryDirectory(prefix="epfiot-flood-") as tmp:
        registry = Path(tmp) / "registry.db"
        with Registry(registry) as reg:
            reg.upsert_many(
                ThingConfig(f"probe-{i}", "bench", "bench", "vm", "coap://192.0.2.10:5683")
                for i in range(PROBE_THINGS)
            )
            reg.upsert(ThingConfig("secured", "bench", "bench", "vm", "coap://192.0.2.10:5683"))
        write_key_file(key_file_path(registry), {"secured": ThingKeys(PskCredential("secured", bytes(16)))})
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        command = [sys.executable, __file__, "--serve", str(registry), "--host", args.host]
        if kind == "dtls-unbounded":
            command.append("--unbounded")
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
        events = "?"
        try:
            assert proc.stdout is not None
            line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
            if not line.startswith("PORTS "):
                raise RuntimeError("server did not start")
            server = (args.host, int(line.split()[1]))
            dtls_server = (args.host, int(line.split()[2]))
            # warm-up: a few bootstraps and refusals, so that first-use allocations are not counted
            warm: Flood | HelloFlood = Flood(server, 4) if kind == "coap" else HelloFlood(dtls_server)
            warm.start_reading()
            await warm.run(2000, 0.5)
            warm.close()
            latencies: list[float] = []
            failures: list[str] = []
            stop = asyncio.Event()
            await asyncio.sleep(0.5)
            before = rss_kib(proc.pid)
            cpu0, drops0 = read_cpu_seconds(proc.pid), udp_receive_drops()
            samples: list[int] = []
            flood: Flood | HelloFlood = Flood(server, args.sources) if kind == "coap" else HelloFlood(dtls_server)
            flood.start_reading()
            sampler = asyncio.create_task(sample_rss(proc.pid, stop, samples))
            prober = asyncio.create_task(probe(server, stop, latencies, failures))
            wall = await flood.run(args.rate, args.seconds)
            cpu = (read_cpu_seconds(proc.pid) - cpu0) / wall
            drops = udp_receive_drops() - drops0
            stop.set()
            await asyncio.gather(sampler, prober)
            end = rss_kib(proc.pid)
            await asyncio.sleep(args.settle)
            held = rss_kib(proc.pid)
            flood.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=60)
                events = next((ln.split(maxsplit=1)[1] for ln in out.splitlines() if ln.startswith("EVENTS ")), "?")
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    return {
        "kind": kind, "flood": flood, "wall": wall, "cpu": cpu, "drops": drops, "before": before,
        "peak": max([before, *samples, end]), "end": end, "held": held, "latencies": latencies,
        "failures": failures, "events": events,
    }


def show(args: argparse.Namespace, m: dict[str, object]) -> None:
    flood = m["flood"]
    assert isinstance(flood, Flood | HelloFlood)
    wall, before, peak, end, held = (float(m[k]) for k in ("wall", "before", "peak", "end", "held"))
    latencies, failures = m["latencies"], m["failures"]
    assert isinstance(latencies, list) and isinstance(failures, list)
    answered = sum(flood.answers.values())
    sources = f"{args.sources} sockets" if isinstance(flood, Flood) else "a new socket each"
    print(f"== {m['kind']}")
    print(
        f"flood: {flood.sent} datagrams in {wall:.1f} s ({flood.sent / wall:,.0f}/s) from {sources}"
        f" to {args.host}; {flood.unsent} could not be sent; host UDP receive drops {m['drops']}"
    )
    codes = ", ".join(f"{code} x{count}" for code, count in sorted(flood.answers.items()))
    if isinstance(flood, Flood):
        print(f"answers: {answered} ({codes or 'none'})")
    events, _, counted = str(m["events"]).partition(" ")
    print(f"server CPU {float(m['cpu']):.0%} of a core; bootstrap.refused events: {events} (counting {counted or '?'} refusals)")
    print(
        f"server RSS: before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, end of flood {end / 1024:.1f} MiB,"
        f" {args.settle:g} s later {held / 1024:.1f} MiB"
    )
    growth = (held - before) * 1024
    print(
        f"held after the flood: {growth / 2**20:+.1f} MiB = {growth / max(flood.sent, 1):.0f} bytes per datagram sent"
        + (f", {growth / max(answered, 1):.0f} per datagram answered" if isinstance(flood, Flood) else "")
    )
    if latencies:
        ordered = sorted(latencies)
        print(
            f"probe bootstraps during the flood: {len(latencies)} ok, {len(failures)} failed;"
            f" p50 {statistics.median(ordered) * 1e3:.1f} ms, max {ordered[-1] * 1e3:.1f} ms"
        )
    else:
        print(f"probe bootstraps during the flood: none succeeded, {len(failures)} failed")


async def bench(args: argparse.Namespace) -> int:
    results = [await measure(args, kind) for kind in args.flood]
    for m in results:
        show(args, m)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000, help="datagrams per second (default 10000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="flood duration (default 10)")
    parser.add_argument("--sources", type=int, default=32, help="flooding sockets (default 32)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the flood before 'held' (default 3)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to use (127.0.0.1 or ::1)")
    parser.add_argument("--flood", action="append", choices=FLOODS, help="which flood (repeatable; default: all)")
    parser.add_argument("--serve", metavar="REGISTRY", help=argparse.SUPPRESS)
    parser.add_argument("--unbounded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(Path(args.serve), args.host, args.unbounded))
        return 0
    args.flood = args.flood or list(FLOODS)
    return asyncio.run(bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
