#!/usr/bin/env python3
"""Benchmark the LwM2M bootstrap server: bootstraps per second and latency percentiles with
N concurrent simulated clients on loopback.

The server (epfiot.lwm2m.server.BootstrapServer, plus an aiocoap echo resource on a second
port for the baseline) runs in a child process; the simulated clients run in this process.
Each simulated client has its own UDP socket (own source port) and speaks just enough CoAP
to bootstrap as a LwM2M 1.0 client (TLV, the default) or 1.1 client (``--format senml``):
it sends ``POST /bs?ep=...``, acknowledges every request of the server with a piggybacked
2.02/2.04, and counts the bootstrap as done when Bootstrap-Finish arrives. Latency is measured
from sending ``POST /bs`` to receiving Bootstrap-Finish. Every bootstrap uses a fresh endpoint
name, so none of them counts as a re-bootstrap.

Baseline (same run, same loopback, same client code): one CoAP POST round trip to an aiocoap
echo resource in the server process. A bootstrap is 6 round trips (request, 2 deletes, 2 writes,
finish), so the ratios show what a bootstrap costs in units of a bare aiocoap exchange.
Afterwards the registry is checked: every measured bootstrap must be recorded as bootstrapped.

Wall-clock figures depend on what else runs on the machine; the server CPU per bootstrap
(ms/bs) is steadier. ``--rounds`` repeats the measurements and reports medians and ranges.

    python bench/bench_bootstrap.py                      # N = 1, 10, 50, 200; 3000 per N
    python bench/bench_bootstrap.py -n 1 -n 100 --count 5000 --rounds 3
    python bench/bench_bootstrap.py --format senml --host ::1
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, PUT, DELETE = 1, 2, 3, 4
CHANGED, DELETED = 0x44, 0x42  # 2.04, 2.02


# ---------------------------------------------------------------------------------------------
# Server side (child process)
# ---------------------------------------------------------------------------------------------


async def _serve(registry: Path, bind: str, max_concurrent: int) -> None:
    import aiocoap
    import aiocoap.resource

    from epfiot.lwm2m.aiocoap_compat import udp_endpoint
    from epfiot.lwm2m.server import BootstrapServer

    class Echo(aiocoap.resource.Resource):  # type: ignore[misc]
        async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload)

    site = aiocoap.resource.Site()
    site.add_resource(["echo"], Echo())
    echo = await aiocoap.Context.create_server_context(site, bind=(bind, 0), transports=["udp6"])
    endpoint = udp_endpoint(echo)
    assert endpoint is not None
    endpoint.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # as the bootstrap server does
    echo_port = endpoint.sock.getsockname()[1]

    server = BootstrapServer(registry, bind, 0, max_concurrent=max_concurrent)
    await server.start()
    print(f"PORTS {server.port} {echo_port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop()
    await echo.shutdown()


# ---------------------------------------------------------------------------------------------
# Minimal CoAP client side (this process)
# ---------------------------------------------------------------------------------------------


def _option(delta: int, value: bytes) -> bytes:
    """One CoAP option (delta and length < 269)."""
    out = bytearray()

    def nibble(n: int) -> tuple[int, bytes]:
        if n < 13:
            return n, b""
        if n < 269:
            return 13, bytes([n - 13])
        return 14, (n - 269).to_bytes(2, "big")

    d, dext = nibble(delta)
    ln, lext = nibble(len(value))
    out.append((d << 4) | ln)
    out += dext + lext + value
    return bytes(out)


def encode_request(
    code: int, mid: int, token: bytes, path: str, queries: tuple[str, ...] = (), payload: bytes = b""
) -> bytes:
    msg = bytearray([0x40 | (CON << 4) | len(token), code]) + mid.to_bytes(2, "big") + token
    msg[0] = (1 << 6) | (CON << 4) | len(token)
    last = 0
    for segment in path.strip("/").split("/"):
        msg += _option(11 - last, segment.encode())
        last = 11
    for query in queries:
        msg += _option(15 - last, query.encode())
        last = 15
    if payload:
        msg += b"\xff" + payload
    return bytes(msg)


def encode_ack(mid: int, token: bytes, code: int) -> bytes:
    return bytes([(1 << 6) | (ACK << 4) | len(token), code]) + mid.to_bytes(2, "big") + token


class SimClient(asyncio.DatagramProtocol):
    """One simulated client: one socket, one exchange at a time."""

    def __init__(self, server: tuple[str, int], senml: bool) -> None:
        self.server = server
        self.senml = senml
        self.transport: asyncio.DatagramTransport | None = None
        self.mid = random.randrange(0x10000)
        self.token_counter = random.randrange(1 << 32)
        self.waiting: asyncio.Future[None] | None = None
        self.expect_token = b""
        self.mode = ""  # "bs" (waiting for Finish) or "echo" (waiting for the echo ACK)
        self.acked = False
        self.retransmits = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def _next(self) -> tuple[int, bytes]:
        self.mid = (self.mid + 1) & 0xFFFF
        self.token_counter = (self.token_counter + 1) & 0xFFFFFFFF
        return self.mid, self.token_counter.to_bytes(4, "big")

    async def exchange(self, mode: str, ep: str, timeout: float = 30.0) -> float:
        assert self.transport is not None
        mid, token = self._next()
        if mode == "bs":
            queries = (f"ep={ep}", "pct=110") if self.senml else (f"ep={ep}",)
            datagram = encode_request(POST, mid, token, "/bs", queries)
        else:
            datagram = encode_request(POST, mid, token, "/echo", (), b"x" * 16)
        self.mode = mode
        self.expect_token = token
        self.acked = False
        loop = asyncio.get_running_loop()
        self.waiting = loop.create_future()
        start = time.perf_counter()
        self.transport.sendto(datagram, self.server)
        deadline = start + timeout
        wait = 2.0
        while True:
            try:
                await asyncio.wait_for(
                    asyncio.shield(self.waiting), min(wait, max(deadline - time.perf_counter(), 0.001))
                )
                break
            except TimeoutError:
                if time.perf_counter() >= deadline:
                    raise
                if not self.acked:  # lost request or ACK: retransmit like a CoAP client
                    self.retransmits += 1
                    self.transport.sendto(datagram, self.server)
                wait *= 2
        return time.perf_counter() - start

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 4 or self.transport is None:
            return
        mtype = (data[0] >> 4) & 3
        tkl = data[0] & 0x0F
        code = data[1]
        mid = int.from_bytes(data[2:4], "big")
        token = data[4 : 4 + tkl]
        if mtype == ACK:
            if token == self.expect_token and code != 0:
                self.acked = True
                if self.mode == "echo" and self.waiting is not None and not self.waiting.done():
                    self.waiting.set_result(None)
                elif code != CHANGED and self.waiting is not None and not self.waiting.done():
                    self.waiting.set_exception(
                        RuntimeError(f"bootstrap request answered {code >> 5}.{code & 31:02d}")
                    )
            return
        if mtype == CON and 1 <= code <= 31:  # a request from the bootstrap server
            answer = DELETED if code == DELETE else CHANGED
            self.transport.sendto(encode_ack(mid, token, answer), addr)
            if code == POST and self.mode == "bs" and self.waiting is not None and not self.waiting.done():
                self.waiting.set_result(None)  # Bootstrap-Finish
        elif mtype == CON:
            self.transport.sendto(bytes([(1 << 6) | (RST << 4), 0]) + data[2:4], addr)


async def make_clients(n: int, server: tuple[str, int], senml: bool) -> list[SimClient]:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    local = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    clients = []
    for _ in range(n):
        _, proto = await loop.create_datagram_endpoint(
            lambda: SimClient(server, senml), local_addr=(local, 0), family=family
        )
        clients.append(proto)
    return clients


def close_clients(clients: list[SimClient]) -> None:
    for c in clients:
        if c.transport is not None:
            c.transport.close()


def udp_receive_drops() -> int:
    """System-wide UDP receive-buffer drops (IPv4 and IPv6), from /proc/net/snmp{,6}."""
    total = 0
    try:
        with open("/proc/net/snmp") as f:
            lines = [line.split() for line in f if line.startswith("Udp:")]
        total += int(lines[1][lines[0].index("RcvbufErrors")])
        with open("/proc/net/snmp6") as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("Udp6RcvbufErrors"))
    except (OSError, ValueError, IndexError):
        return -1
    return total


def read_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One measured load: ``n`` concurrent clients doing ``len(latencies)`` exchanges."""

    n: int
    wall: float
    latencies: list[float]
    failures: int
    retransmits: int = 0
    drops: int = 0
    server_cpu: float = 0.0  # server CPU seconds / wall seconds
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall


async def run_load(clients: list[SimClient], mode: str, names: Iterator[str], count: int) -> Run:
    latencies: list[float] = []
    failures = 0
    started = 0

    async def worker(client: SimClient) -> None:
        nonlocal failures, started
        while started < count:
            started += 1
            ep = next(names)
            try:
                latencies.append(await client.exchange(mode, ep))
            except (TimeoutError, RuntimeError):
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    return Run(len(clients), time.perf_counter() - start, latencies, failures)


async def measure(
    n: int, mode: str, server: tuple[str, int], pid: int, names: Iterator[str], count: int, senml: bool
) -> Run:
    clients = await make_clients(n, server, senml)
    try:
        cpu0, own0, drops0 = read_cpu_seconds(pid), time.process_time(), udp_receive_drops()
        run = await run_load(clients, mode, names, max(count, n))
        run.server_cpu = (read_cpu_seconds(pid) - cpu0) / run.wall
        run.client_cpu = (time.process_time() - own0) / run.wall
        run.drops = udp_receive_drops() - drops0
        run.retransmits = sum(c.retransmits for c in clients)
    finally:
        close_clients(clients)
    return run


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(runs: list[Run]) -> tuple[float, str, float, float, int, int, int, float, float]:
    """Median rate (and its range over rounds), p50/p99 over all latencies of the rounds, sums."""
    rates = sorted(r.rate for r in runs)
    span = f"{rates[0]:.0f}-{rates[-1]:.0f}" if len(rates) > 1 else ""
    latencies = [x for r in runs for x in r.latencies]
    return (
        statistics.median(rates),
        span,
        pct(latencies, 0.5),
        pct(latencies, 0.99),
        sum(r.failures for r in runs),
        sum(r.retransmits for r in runs),
        sum(r.drops for r in runs),
        statistics.median(r.server_cpu for r in runs),
        statistics.median(r.client_cpu for r in runs),
    )


async def registry_check(registry_path: Path, expected: int, timeout: float = 30.0) -> tuple[int, int]:
    """Wait until the server has recorded the measured bootstraps; (bootstrapped, other)."""
    from epfiot.registry import Registry

    deadline = time.monotonic() + timeout
    with Registry(registry_path) as registry:
        while True:
            statuses = [t.status for t in registry.things("bench")]
            done = statuses.count("bootstrapped")
            if done >= expected or time.monotonic() > deadline:
                return done, len(statuses) - statuses.count("pending") - done
            await asyncio.sleep(0.05)


async def bench(args: argparse.Namespace) -> int:
    from epfiot.registry import Registry, ThingConfig

    ns: list[int] = args.clients or [1, 10, 50, 200]
    rounds = max(1, args.rounds)
    senml = args.format == "senml"
    total = args.warmup + rounds * sum(max(args.count, n) for n in ns)
    host = args.host
    base_runs: dict[int, list[Run]] = {}
    runs: dict[int, list[Run]] = {n: [] for n in ns}
    with tempfile.TemporaryDirectory(prefix="epfiot-bench-") as tmp:
        registry_path = Path(tmp) / "registry.db"
        with Registry(registry_path) as registry:
            registry.upsert_many(
                ThingConfig(f"bench-{i}", "bench", "bench", "vm", "coap://192.0.2.10:5683")
                for i in range(total)
            )
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        command = [sys.executable, __file__, "--serve", str(registry_path), "--host", host]
        command += ["--max-concurrent", str(args.max_concurrent)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
        try:
            assert proc.stdout is not None
            line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
            if not line.startswith("PORTS "):
                print("server did not start", file=sys.stderr)
                return 1
            bs_port, echo_port = (int(p) for p in line.split()[1:3])
            names = (f"bench-{i}" for i in range(total))
            fmt = "SenML-JSON (1.1 clients)" if senml else "TLV (1.0 clients)"
            print(
                f"bootstrap server: pid {proc.pid}, {host} port {bs_port}, max {args.max_concurrent} exchanges at once; "
                f"clients: pid {os.getpid()}; {os.cpu_count()} CPUs; writes as {fmt}; "
                f"{args.count} bootstraps per N and round, {rounds} round(s)"
            )
            await measure(min(20, max(ns)), "bs", (host, bs_port), proc.pid, names, args.warmup, senml)
            echo_names = (f"e{i}" for i in itertools.count())
            for _ in range(rounds):
                for n in sorted({1, max(ns)}):
                    run = await measure(n, "echo", (host, echo_port), proc.pid, echo_names, args.count, False)
                    base_runs.setdefault(n, []).append(run)
                for n in ns:
                    runs[n].append(
                        await measure(n, "bs", (host, bs_port), proc.pid, names, args.count, senml)
                    )
            measured = sum(len(r.latencies) for rs in runs.values() for r in rs)
            recorded, other = await registry_check(registry_path, args.warmup + measured)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    print()
    print("baseline: one CoAP POST round trip to an aiocoap echo resource (same server process, same client)")
    print(f"{'N':>5} {'req/s':>8} {'range':>11} {'p50 ms':>8} {'p99 ms':>8} {'fail':>5} {'srv CPU':>8}")
    base = {n: summary(rs) for n, rs in base_runs.items()}
    for n, (rate, span, p50, p99, fail, _retx, _drops, cpu, _own) in base.items():
        print(f"{n:>5} {rate:>8.0f} {span:>11} {p50 * 1e3:>8.3f} {p99 * 1e3:>8.3f} {fail:>5} {cpu:>7.0%}")
    echo_p50 = base[1][2]
    print()
    print("bootstrap: POST /bs -> 2.04, DELETE /0, DELETE /1, PUT /0/1, PUT /1/1, Bootstrap-Finish")
    print(
        f"{'N':>5} {'bs/s':>8} {'range':>11} {'p50 ms':>8} {'p99 ms':>8} {'fail':>5} {'retx':>5} {'drops':>6}"
        f" {'srv CPU':>8} {'ms/bs':>6} {'cli CPU':>8} {'p50/echo':>9} {'echo/bs':>8}"
    )
    failures = 0
    for n, rs in runs.items():
        rate, span, p50, p99, fail, retx, drops, cpu, own = summary(rs)
        failures += fail
        ratio = f"{base[n][0] / rate:>7.1f}x" if n in base else f"{'-':>8}"
        print(
            f"{n:>5} {rate:>8.0f} {span:>11} {p50 * 1e3:>8.3f} {p99 * 1e3:>8.3f} {fail:>5} {retx:>5} {drops:>6}"
            f" {cpu:>7.0%} {cpu / rate * 1e3:>6.2f} {own:>7.0%} {p50 / echo_p50:>8.1f}x {ratio}"
        )
    print()
    print("bs/s and req/s: median over the rounds (range: slowest-fastest round); p50/p99 over all rounds.")
    print("p50/echo: bootstrap median latency over the N=1 echo round trip (a bootstrap is 6 round trips).")
    print("echo/bs: echo requests/s over bootstraps/s at the same N. retx: client retransmissions;")
    print("drops: UDP receive-buffer drops on the host during the run; srv/cli CPU: CPU time / wall time;")
    print(
        "ms/bs: server CPU milliseconds per bootstrap (its ceiling is 1000/ms/bs bootstraps/s on one core)."
    )
    expected = args.warmup + measured
    print(f"registry: {recorded} of {expected} bootstraps recorded as bootstrapped, {other} in another state")
    return 0 if failures == 0 and recorded == expected and other == 0 else 2


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--clients", type=int, action="append", help="concurrent clients (repeatable)")
    parser.add_argument("--count", type=int, default=3000, help="bootstraps per N and round (default 3000)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the measurements (default 1)")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured bootstraps first (default 300)")
    parser.add_argument(
        "--format", choices=("tlv", "senml"), default="tlv", help="client behaviour: 1.0 (tlv) or 1.1 (senml)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to use (127.0.0.1 or ::1)")
    parser.add_argument(
        "--max-concurrent", type=int, default=16, help="the server's max_concurrent exchanges (default 16)"
    )
    parser.add_argument("--serve", metavar="REGISTRY", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(Path(args.serve), args.host, args.max_concurrent))
        return 0
    return asyncio.run(bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
