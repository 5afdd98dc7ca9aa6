#!/usr/bin/env python3
"""Benchmark bootstraps over CoAP over DTLS (PSK, TLS_PSK_WITH_AES_128_CCM_8) next to plain CoAP, in the
same run: p50 latency and bootstraps per second with N concurrent clients on loopback.

The bootstrap server (epfiot.lwm2m.server.BootstrapServer, listening on both) runs in a child process;
the clients of each row run in a child process of their own. Every client is the real aiocoap LwM2M 1.0 client of the tests
(tests/lwm2m_client.py), started fresh for each bootstrap: over DTLS that is a new DTLS session, so
each measured bootstrap includes its full handshake (the same client code bootstraps over plain CoAP,
so the difference is DTLS). Every bootstrap uses a fresh endpoint with its own identity and key.
Latency is from starting the client to Bootstrap-Finish; afterwards every thing must be bootstrapped.

    python bench/bench_dtls.py                       # N = 1, 10, 100; 200 bootstraps per N and transport
    python bench/bench_dtls.py -n 10 --count 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"


def key_of(index: int) -> bytes:
    return index.to_bytes(16, "big")


def prepare(db: Path, count: int) -> None:
    from epfiot.psk import PskCredential, ThingKeys, key_file_path, write_key_file
    from epfiot.registry import Registry, ThingConfig

    configs = [
        ThingConfig(name=f"ep-{i}", owner="bench", stack="bench", vm=None, server_uri="coap://192.0.2.1:5683")
        for i in range(count)
    ]
    with Registry(db) as reg:
        reg.upsert_many(configs)
    keys = {f"ep-{i}": ThingKeys(bootstrap=PskCredential(f"ep-{i}", key_of(i))) for i in range(count // 2)}
    write_key_file(key_file_path(db), keys)


async def serve(db: Path) -> None:
    from epfiot.lwm2m.server import BootstrapServer

    server = BootstrapServer(db, HOST, 0, dtls_port=0, max_concurrent=128)
    await server.start()
    print(f"PORTS {server.port} {server.dtls_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop()


async def run_level(
    port: int, dtls: bool, concurrency: int, names: list[int]
) -> tuple[list[float], float, list[int]]:
    import aiocoap.error

    from tests.lwm2m_client import Lwm2mTestClient

    queue = list(reversed(names))
    latencies: list[float] = []
    failed: list[int] = []

    async def worker() -> None:
        while queue:
            i = queue.pop()
            psk = (f"ep-{i}", key_of(i)) if dtls else None
            started = time.perf_counter()
            try:
                async with Lwm2mTestClient(f"ep-{i}", HOST, port, version="1.0", psk=psk) as client:
                    await asyncio.wait_for(client.bootstrap(timeout=30), 60)
            except (TimeoutError, aiocoap.error.Error):
                failed.append(i)  # counted, not retried: the table says how many
            else:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, failed


def level_in_a_client_process(
    port: int, dtls: bool, concurrency: int, base: int, count: int
) -> tuple[list[float], float, list[int]]:
    """One row, its clients in a process of their own: in a process that has made and closed hundreds of
    aiocoap tinydtls client contexts, some later handshakes never went on past the server's ServerHello
    (the server sent and resent it; fresh client processes against the same server never failed)."""
    command = [sys.executable, __file__, "--clients-of", str(port), str(int(dtls)), str(concurrency), str(base), str(count)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "AIOCOAP_REUSE_PORT": "0"})
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return row["latencies"], row["wall"], row["failed"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--clients", type=int, action="append", help="concurrent clients (repeatable)")
    parser.add_argument("--count", type=int, default=200, help="bootstraps per N and transport")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--clients-of", nargs=5, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return 0
    if args.clients_of is not None:
        port, dtls, concurrency, base, count = args.clients_of
        lat, wall, failed = asyncio.run(run_level(port, bool(dtls), concurrency, list(range(base, base + count))))
        print(json.dumps({"latencies": lat, "wall": wall, "failed": failed}))
        return 0
    levels = args.clients or [1, 10, 100]
    total = args.count * len(levels)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "registry.db"
        prepare(db, 2 * total)  # the first half secured (DTLS), the second half NoSec
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(db)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "AIOCOAP_REUSE_PORT": "0"},
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline().split()
            if not line or line[0] != "PORTS":
                print("the bootstrap server did not start", file=sys.stderr)
                return 1
            plain_port, dtls_port = int(line[1]), int(line[2])
            print(f"{'N':>4} {'transport':<10} {'p50 ms':>8} {'p90 ms':>8} {'bootstraps/s':>13} {'failed':>7}")
            failures = 0
            for li, n in enumerate(levels):
                for dtls, base in ((False, total + li * args.count), (True, li * args.count)):
                    port = dtls_port if dtls else plain_port
                    lat, wall, failed = level_in_a_client_process(port, dtls, n, base, args.count)
                    failures += len(failed)
                    q = statistics.quantiles(lat, n=10) if len(lat) > 1 else [lat[0] if lat else 0.0] * 9
                    print(
                        f"{n:>4} {'coaps' if dtls else 'coap':<10} {statistics.median(lat or [0.0]) * 1000:8.1f} "
                        f"{q[8] * 1000:8.1f} {len(lat) / wall:13.0f} {len(failed):>7}",
                        flush=True,
                    )
        finally:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=30)
        from epfiot.registry import Registry

        with Registry(db) as reg:
            done = sum(1 for r in reg.things() if r.status == "bootstrapped")
        print(f"registry: {done} of {total * 2} things bootstrapped ({failures} bootstraps failed)")
        return 0 if done == total * 2 - failures else 1


if __name__ == "__main__":
    sys.exit(main())
