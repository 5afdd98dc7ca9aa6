"""epfiot watch on the real daemon (qemu:///system): how fast it reacts.

1. From a file save to the first libvirt call of the resulting action: the manifest's memory is edited,
   and the time is taken from just after the write to the `action.start` line watch logs (JSON,
   wall-clock `ts`) right before the action's first call. Target: under 0.5 s (the debounce, 0.2 s by
   default, is part of it on purpose).
2. From an out-of-band `destroy` to the VM running again (polled through libvirt every 10 ms). Target:
   under 2 s. Baseline, in the same run: a script that knows what to do, calling destroy() then create()
   on a similar domain, with no detection at all.

    .venv/bin/python bench/bench_watch.py [--repeat 10] [--connect URI]

Works as tenant "benchwatch" and removes its domains afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are read from the exceptions

TENANT = "benchwatch"
VM = "bench"
NAME = f"{TENANT}.{VM}"
BASELINE = f"{TENANT}.baseline"


def manifest(memory_mib: int) -> str:
    return (
        f"version: 1\nstack: {TENANT}\nowner: {TENANT}\nvms:\n"
        f"  - name: {VM}\n    memory: {memory_mib}MiB\n    max_memory: 128MiB\n    vcpu: 1\n"
        "    state: running\n    shutdown_timeout: 2s\n"
    )


class Watch:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"event": "(not json)", "message": line.rstrip()}
                print(f"  watch: {line.rstrip()}", file=sys.stderr)
            with self.cond:
                self.lines.append(record)
                self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def wait(self, predicate: Callable[[dict[str, Any]], bool], after: int, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for record in self.lines[after:]:
                    if predicate(record):
                        return record
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"watch did not log what was expected; last lines: {self.lines[-10:]}")
                self.cond.wait(deadline - time.monotonic())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def poll(condition: Callable[[], bool], what: str, watch: Watch, timeout: float = 60.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = "\n".join(json.dumps(r) for r in watch.lines[-20:])
            raise SystemExit(f"timed out waiting for {what}; watch's last lines:\n{tail}")
        time.sleep(interval)


def running(conn: Any, name: str) -> bool:
    try:
        return bool(conn.lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING)
    except libvirt.libvirtError:
        return False


def exists(conn: Any, name: str) -> bool:
    try:
        conn.lookupByName(name)
    except libvirt.libvirtError:
        return False
    return True


def baseline(conn: Any, repeat: int) -> tuple[float, float]:
    """A similar tiny domain, driven directly: median destroy() and create() times."""
    kind = "kvm"
    try:
        conn.getDomainCapabilities(None, None, None, "kvm", 0)
    except libvirt.libvirtError:
        kind = "qemu"
    dom = conn.defineXML(
        f"<domain type='{kind}'><name>{BASELINE}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><memballoon model='virtio'/></devices></domain>"
    )
    creates, destroys = [], []
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            dom.create()
            creates.append(time.perf_counter() - started)
            started = time.perf_counter()
            dom.destroy()
            destroys.append(time.perf_counter() - started)
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    return statistics.median(destroys), statistics.median(creates)


def cleanup(conn: Any) -> None:
    for dom in conn.listAllDomains():
        if dom.name() in (NAME, BASELINE):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()


def line(title: str, values: list[float], target: float) -> str:
    med, worst = statistics.median(values), max(values)
    verdict = "meets" if worst < target else ("median meets" if med < target else "MISSES")
    return f"{title}: median {med * 1000:.0f} ms, max {worst * 1000:.0f} ms over {len(values)} ({verdict} target < {target * 1000:.0f} ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--connect", default=os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system")
    parser.add_argument("--debounce", type=float, default=0.2)
    args = parser.parse_args()

    conn = libvirt.open(args.connect)
    cleanup(conn)
    destroy_call, create_call = baseline(conn, args.repeat)

    with tempfile.TemporaryDirectory() as tmp:
        stacks = Path(tmp) / "stacks"
        stacks.mkdir()
        path = stacks / "bench.yaml"
        watch = Watch(
            [sys.executable, "-m", "epfiot", "--connect", args.connect, "--state-dir", str(Path(tmp) / "state"),
             "watch", "-f", str(stacks), "--no-serve", "--log-format", "json", "--debounce", str(args.debounce),
             "--prune-after", "0.5", "--resync", "600"]
        )  # fmt: skip
        try:
            watch.wait(lambda r: r.get("event") == "reconcile.done", 0)
            mark = watch.mark()
            path.write_text(manifest(64))
            poll(lambda: running(conn, NAME), "the VM to run", watch)
            watch.wait(lambda r: r.get("event") == "reconcile.done", mark)

            saves: list[float] = []
            subject = f"vm/{TENANT}/{VM}"
            for i in range(args.repeat):
                mark = watch.mark()
                path.write_text(manifest(96 if i % 2 == 0 else 64))
                saved = time.time()
                start = watch.wait(lambda r: r.get("event") == "action.start" and r.get("subject") == subject, mark)
                saves.append(start["ts"] - saved)
                watch.wait(lambda r: r.get("event") == "reconcile.done" and r.get("changes", 0) > 0, mark)

            outages: list[float] = []
            destroy_calls: list[float] = []
            dom = conn.lookupByName(NAME)
            for _ in range(args.repeat):
                mark = watch.mark()
                started = time.perf_counter()
                dom.destroy()
                destroy_calls.append(time.perf_counter() - started)
                poll(lambda: running(conn, NAME), "the VM to run again", watch)
                outages.append(time.perf_counter() - started)
                watch.wait(lambda r: r.get("event") == "action.done" and r.get("subject") == subject, mark)

            mark = watch.mark()
            path.unlink()
            poll(lambda: not exists(conn, NAME), "the VM to be pruned", watch, timeout=120)
            code = watch.stop()
        finally:
            if watch.proc.poll() is None:
                watch.proc.kill()
            cleanup(conn)
            conn.close()

    bare = destroy_call + create_call
    print(f"epfiot watch on {args.connect}, debounce {args.debounce:g}s, {args.repeat} repetitions")
    print(line("file save -> first libvirt call of the action", saves, 0.5))
    print(f"  of which the debounce: {args.debounce * 1000:.0f} ms; the rest (detect, load, observe, plan): "
          f"median {(statistics.median(saves) - args.debounce) * 1000:.0f} ms")  # fmt: skip
    print(line("out-of-band destroy -> running again", outages, 2.0))
    print(
        f"  baseline, same run: bare destroy() {destroy_call * 1000:.0f} ms + create() {create_call * 1000:.0f} ms "
        f"= {bare * 1000:.0f} ms -> watch takes {statistics.median(outages) / bare:.2f}x "
        f"(destroy() calls during the run: median {statistics.median(destroy_calls) * 1000:.0f} ms)"
    )
    print(f"watch exited with status {code} after SIGTERM")


if __name__ == "__main__":
    main()
