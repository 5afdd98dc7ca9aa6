"""The API's GET /api/v1/vms with 1,000 VMs, against the same JSON served from a static file.

A libvirt test-driver host with 1,000 managed domains (host XML generated here) is served by a real
`epfiot watch --http 127.0.0.1:0` (in a subprocess: this script with --serve, which adds one route to the
API's application, /static/vms.json, a file holding the very JSON GET /api/v1/vms answered). Both go
through the same aiohttp server, middleware and bearer token; the difference is what the API does per
request: render watch's latest observation of the host (epfiot.snapshot), or answer the bytes it already
rendered from it for the same read.

"API, each read new" asks for every field of a VM in a different order each time (`fields=`), so that no
answer was rendered before: the rows are built, scoped and serialised from the snapshot per request (what
the first read after each change of the host costs).

    .venv/bin/python bench/bench_api.py [--vms 1000] [--requests 200] [--concurrency 4]

Prints p50 and p99 latency and requests/s of each, and their ratios to the static file's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKEN = "epf_bench-admin-token"


def host_xml(count: int) -> str:
    from epfiot.libvirt.domain import render_domain_xml
    from epfiot.model import VmSpec

    domains = []
    for i in range(count):
        spec = VmSpec(owner="bench", stack="bench-stack", name=f"vm{i:04d}", memory_mib=64, vcpu=1, max_memory_mib=128, max_vcpu=2)
        domains.append(render_domain_xml(spec, (), uuid=str(uuidlib.uuid4()), seed_digest="sha256:seed", virt_type="test", image_pool=None))
    pool = "<pool type='dir'><name>epfiot-images</name><target><path>/var/lib/epfiot/images</path></target></pool>"
    return "<node>\n" + "\n".join(domains) + "\n" + pool + "\n</node>\n"


def serve(argv: list[str], static: Path) -> int:
    """watch, with /static/ (the baseline) on the API's application."""
    from aiohttp import web

    from epfiot.cli import build_parser
    from epfiot.watch.daemon import run_watch

    def routes(app: web.Application) -> None:
        app.router.add_static("/static/", static)

    return run_watch(build_parser().parse_args(argv), api_routes=routes)


async def load(url: str | Callable[[int], str], requests: int, concurrency: int) -> tuple[list[float], float, int]:
    import aiohttp

    latencies: list[float] = []
    size = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        sent = 0

        async def one() -> None:
            nonlocal size, sent
            started = time.perf_counter()
            sent += 1
            async with session.get(url if isinstance(url, str) else url(sent)) as response:
                body = await response.read()
                assert response.status == 200, (response.status, body[:200])
            latencies.append(time.perf_counter() - started)
            size = len(body)

        for _ in range(min(10, requests)):  # warm-up: connections, caches
            await one()
        latencies.clear()
        left = requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, requests / elapsed, size


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--serve", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--static", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        return serve(args.serve, args.static)

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        (directory / "host.xml").write_text(host_xml(args.vms))
        (directory / "stacks").mkdir()
        (directory / "static").mkdir()
        digest = "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()
        (directory / "host.yaml").write_text(f'version: 1\nstate_dir: {directory / "state"}\nadmin: {{tokens: ["{digest}"]}}\ntenants: {{}}\n')
        print(f"host XML with {args.vms} VMs written ({time.perf_counter() - started:.1f}s)")
        watch_argv = [
            "--connect", f"test://{directory / 'host.xml'}", "--host-config", str(directory / "host.yaml"),
            "watch", "-f", str(directory / "stacks"), "--no-serve", "--log-format", "json",
            "--http", "127.0.0.1:0", "--http-rate", "0", "--no-api-socket",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, __file__, "--static", str(directory / "static"), "--serve", *watch_argv],
            stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            port = wait_for_port(proc)
            base = f"http://127.0.0.1:{port}"
            wait_ready(base)
            body = asyncio.run(fetch(f"{base}/api/v1/vms"))
            assert len(json.loads(body)) == args.vms
            (directory / "static" / "vms.json").write_bytes(body)  # the very bytes the API answered
            api = asyncio.run(load(f"{base}/api/v1/vms", args.requests, args.concurrency))
            static = asyncio.run(load(f"{base}/static/vms.json", args.requests, args.concurrency))
            orders = [",".join(p) for p in itertools.islice(itertools.permutations(vm_fields()), args.requests + 20)]
            fresh = asyncio.run(load(lambda i: f"{base}/api/v1/vms?fields={orders[i % len(orders)]}", args.requests, args.concurrency))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"GET /api/v1/vms, {args.vms} VMs, {args.requests} requests, {args.concurrency} at a time, body {api[2] / 1024:.0f} KiB")
    for title, (latencies, rate, _) in (("API", api), ("API, each read new", fresh), ("static file", static)):
        print(f"  {title:<18} p50 {percentile(latencies, 0.5) * 1000:8.1f} ms   p99 {percentile(latencies, 0.99) * 1000:8.1f} ms   {rate:8.1f} requests/s   (mean {statistics.mean(latencies) * 1000:.1f} ms)")
    for title, measured in (("API", api), ("API, each read new", fresh)):
        print(
            f"  ratio {title} / static: p50 {percentile(measured[0], 0.5) / percentile(static[0], 0.5):.1f}x, "
            f"p99 {percentile(measured[0], 0.99) / percentile(static[0], 0.99):.1f}x, "
            f"requests/s {measured[1] / static[1]:.2f}x the static file's"
        )
    return 0


def vm_fields() -> tuple[str, ...]:
    from epfiot.api.routes import known_fields

    return known_fields("Vm")


def wait_for_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stderr is not None
    for line in proc.stderr:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "api.listening" and "port" in record:
            import threading

            threading.Thread(target=proc.stderr.read, daemon=True).start()  # the rest: a full pipe would block watch
            return int(record["port"])
        if record.get("level") == "error":
            raise SystemExit(f"watch failed: {record.get('message')}")
    raise SystemExit("watch exited before serving the API")


def wait_ready(base: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=10) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("watch did not get ready")


async def fetch(url: str) -> bytes:
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
