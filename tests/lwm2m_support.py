"""What the bootstrap server's tests share: a registry to seed and watch, an event recorder, raw CoAP
datagrams. Every wait is a condition with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from epfiot.lwm2m.server import BootstrapServer
from epfiot.registry import Registry, ThingConfig, ThingRecord

T = TypeVar("T")
LOOPBACKS = ["127.0.0.1", "::1"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def thing(name: str = "sensor-1", **kw: Any) -> ThingConfig:
    base: dict[str, Any] = dict(owner="alice", stack="plant", vm="gw", server_uri="coap://10.0.0.5:5683")
    base.update(kw)
    return ThingConfig(name=name, **base)


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, object]]] = []

    def __call__(self, kind: str, fields: dict[str, object]) -> None:
        self.items.append((kind, fields))

    def kinds(self, endpoint: str | None = None) -> list[str]:
        return [k for k, f in self.items if endpoint is None or f.get("endpoint") == endpoint]


def seed(db: Path, *configs: ThingConfig) -> None:
    with Registry(db) as reg:
        reg.upsert_many(configs)


def record(db: Path, name: str) -> ThingRecord:
    with Registry(db) as reg:
        rec = reg.get(name)
    assert rec is not None
    return rec


async def status_becomes(db: Path, name: str, status: str, timeout: float = 10.0) -> ThingRecord:
    with Registry(db) as reg:

        def check() -> bool:
            rec = reg.get(name)
            return rec is not None and rec.status == status

        await eventually(check, timeout, f"{name} to be {status}")
        rec = reg.get(name)
    assert rec is not None
    return rec


def server(db: Path, events: Events | None = None, **kw: Any) -> BootstrapServer:
    return BootstrapServer(db, "::", 0, on_event=events, **kw)


POST, GET, DELETE = 2, 1, 4
CON, NON, ACK = 0, 1, 2


def coap(mtype: int, code: int, mid: int, token: bytes, options: bytes = b"", payload: bytes = b"") -> bytes:
    head = bytes([0x40 | (mtype << 4) | len(token), code]) + mid.to_bytes(2, "big") + token + options
    return head + (b"\xff" + payload if payload else b"")


def opt_path_bs() -> bytes:
    return b"\xb2bs"  # Uri-Path (11) "bs"


def opt_queries(*items: bytes) -> bytes:
    out = b""
    delta = 4  # Uri-Query (15) after Uri-Path (11)
    for item in items:
        out += (
            bytes([(delta << 4) | len(item)]) + item
            if len(item) < 13
            else bytes([(delta << 4) | 13, len(item) - 13]) + item
        )
        delta = 0
    return out


class Serve:
    """`epfiot serve` as a child process, its output read line by line."""

    def __init__(self, state: Path, *args: str) -> None:
        command = [sys.executable, "-m", "epfiot", "--state-dir", str(state), "serve", "--bind", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [*command, "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        first = self.wait_for_line(lambda line: "LwM2M bootstrap server on" in line)
        match = re.search(r"\]:(\d+) ", first)
        assert match, first
        self.port = int(match.group(1))

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if predicate(line):
                return line
        raise AssertionError(
            "epfiot serve did not print the line awaited; it printed:\n" + "".join(self.lines)
        )

    async def line(self, predicate: Callable[[str], bool]) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self.wait_for_line, predicate)

    def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.communicate()


@contextlib.contextmanager
def epfiot_serve(state: Path, *args: str) -> Iterator[Serve]:
    child = Serve(state, *args)
    try:
        yield child
    finally:
        child.kill()
