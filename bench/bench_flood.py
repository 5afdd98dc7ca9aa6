#!/usr/bin/env python3
"""Memory of the LwM2M bootstrap server under a datagram flood: its RSS while it receives refused requests
at a fixed rate (default 10,000 datagrams/s for 10 s), and whether real bootstraps still get through.

The server (epfiot's BootstrapServer, logging warnings to /dev/null) runs in a child process; the flood
and a probe client run in this process. The flood cycles through requests the server refuses: POST /bs
for unknown endpoints (4.04), POST /bs without ep (4.00), GET /bs (4.05) and POST /rd (4.04), all CON,
from ``--sources`` sockets of their own, each with its own message IDs (so none is a duplicate of
another). The probe bootstraps a known endpoint (a fresh one each time) every 200 ms during the flood.

RSS is read from /proc/<pid>/status. "held" is the RSS a few seconds after the flood ended: state kept
per datagram (aiocoap keeps duplicate-detection state for 247 s) shows up there, garbage does not.

    python bench/bench_flood.py                          # 10,000 datagrams/s for 10 s
    python bench/bench_flood.py --rate 20000 --seconds 5 --sources 64
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


async def _serve(registry: Path, host: str) -> None:
    from epfiot.lwm2m.server import BootstrapServer

    # as `epfiot serve` does, every refusal is logged as a warning (here to /dev/null, not a terminal)
    logging.basicConfig(level=logging.WARNING, stream=open(os.devnull, "w"))  # noqa: SIM115
    server = BootstrapServer(registry, host, 0)
    await server.start()
    print(f"PORT {server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop()


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


async def bench(args: argparse.Namespace) -> int:
    from epfiot.registry import Registry, ThingConfig

    with tempfile.TemporaryDirectory(prefix="epfiot-flood-") as tmp:
        registry = Path(tmp) / "registry.db"
        with Registry(registry) as reg:
            reg.upsert_many(
                ThingConfig(f"probe-{i}", "bench", "bench", "vm", "coap://192.0.2.10:5683")
                for i in range(PROBE_THINGS)
            )
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        command = [sys.executable, __file__, "--serve", str(registry), "--host", args.host]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
        try:
            assert proc.stdout is not None
            line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
            if not line.startswith("PORT "):
                print("server did not start", file=sys.stderr)
                return 1
            server = (args.host, int(line.split()[1]))
            # warm-up: a few bootstraps and refusals, so that first-use allocations are not counted
            warm = Flood(server, 4)
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
            flood = Flood(server, args.sources)
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
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    peak = max([before, *samples, end])
    answered = sum(flood.answers.values())
    print(
        f"flood: {flood.sent} datagrams in {wall:.1f} s ({flood.sent / wall:,.0f}/s) from {args.sources} sockets"
        f" to {args.host}; {flood.unsent} could not be sent; host UDP receive drops {drops}"
    )
    codes = ", ".join(f"{code} x{count}" for code, count in sorted(flood.answers.items()))
    print(f"answers: {answered} ({codes or 'none'}); server CPU {cpu:.0%} of a core")
    print(
        f"server RSS: before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, end of flood {end / 1024:.1f} MiB,"
        f" {args.settle:g} s later {held / 1024:.1f} MiB"
    )
    growth = (held - before) * 1024
    print(
        f"held after the flood: {growth / 2**20:+.1f} MiB = {growth / max(flood.sent, 1):.0f} bytes per datagram sent,"
        f" {growth / max(answered, 1):.0f} per datagram answered"
    )
    if latencies:
        ordered = sorted(latencies)
        print(
            f"probe bootstraps during the flood: {len(latencies)} ok, {len(failures)} failed;"
            f" p50 {statistics.median(ordered) * 1e3:.1f} ms, max {ordered[-1] * 1e3:.1f} ms"
        )
    else:
        print(f"probe bootstraps during the flood: none succeeded, {len(failures)} failed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000, help="datagrams per second (default 10000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="flood duration (default 10)")
    parser.add_argument("--sources", type=int, default=32, help="flooding sockets (default 32)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the flood before 'held' (default 3)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to use (127.0.0.1 or ::1)")
    parser.add_argument("--serve", metavar="REGISTRY", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(Path(args.serve), args.host))
        return 0
    return asyncio.run(bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
