"""epfiot watch as a subprocess against the real libvirt daemon: manifests written, edited, broken and
removed, a VM destroyed by hand, libvirtd restarted, SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import libvirt
import pytest

from tests.stacks import vm, write_stack

ROOT = Path(__file__).resolve().parent.parent


# --- the daemon, as a subprocess, against the real libvirt daemon -------------------------------------------


class WatchProcess:
    """`epfiot watch --log-format json` in a subprocess; its log lines are read in a thread."""

    def __init__(self, *argv: str) -> None:
        # Warnings are shown (PYTHONWARNINGS=default): any would be a line that is not JSON, and fail the test.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "default"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "epfiot", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[dict[str, Any]] = []
        self.eof = False
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"event": "(not json)", "level": "error", "message": line.rstrip("\n")}
            with self.cond:
                self.lines.append(record)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def since(self, mark: int) -> list[dict[str, Any]]:
        with self.cond:
            return list(self.lines[mark:])

    def wait_for(self, what: str, predicate: Callable[[dict[str, Any]], bool], *, after: int = 0, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for record in self.lines[after:]:
                    if predicate(record):
                        return record
                remaining = deadline - time.monotonic()
                if self.eof or remaining <= 0:
                    tail = "\n".join(json.dumps(r) for r in self.lines[-40:])
                    state = "exited" if self.eof else "timed out"
                    raise AssertionError(f"watch {state} before {what}; last lines:\n{tail}")
                self.cond.wait(remaining)

    def event(self, name: str, *, after: int = 0, timeout: float = 30.0, **fields: object) -> dict[str, Any]:
        def matches(r: dict[str, Any]) -> bool:
            return r.get("event") == name and all(r.get(k) == v for k, v in fields.items())

        return self.wait_for(f"{name} {fields or ''}", matches, after=after, timeout=timeout)

    def stop(self, timeout: float = 30.0, *, signalled: bool = False) -> int:
        if not signalled and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Libvirt:
    """The test's own view of the daemon, reconnecting after a daemon restart."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.conn: libvirt.virConnect | None = None

    def connection(self) -> libvirt.virConnect:
        if self.conn is None or not self.conn.isAlive():
            if self.conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self.conn.close()
            self.conn = libvirt.open(self.uri)
        return self.conn

    def domain(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.connection().lookupByName(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            self.conn = None  # the daemon is restarting: ask again
            raise

    def state(self, name: str) -> str | None:
        """running, shutoff, paused..., None (no such domain), "unknown" (the daemon does not answer)."""
        try:
            dom = self.domain(name)
            if dom is None:
                return None
            code = dom.state()[0]
        except libvirt.libvirtError:
            self.conn = None
            return "unknown"
        return {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff", libvirt.VIR_DOMAIN_PAUSED: "paused"}.get(code, str(code))

    def config_memory_mib(self, name: str) -> int | None:
        try:
            dom = self.domain(name)
            if dom is None:
                return None
            xml = ElementTree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        except libvirt.libvirtError:
            self.conn = None
            return None
        node = xml.find("currentMemory")
        assert node is not None and node.get("unit", "KiB") == "KiB"
        return int(node.text or 0) // 1024

    def config_vcpus(self, name: str) -> int | None:
        try:
            dom = self.domain(name)
            return None if dom is None else int(dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG))
        except libvirt.libvirtError:
            self.conn = None
            return None

    def uuid(self, name: str) -> str | None:
        dom = self.domain(name)
        return None if dom is None else str(dom.UUIDString())

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    """Poll until `condition` holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def virsh(uri: str, *argv: str) -> None:
    subprocess.run(["virsh", "-q", "-c", uri, *argv], check=True, capture_output=True, text=True, timeout=60)


@pytest.mark.daemon
def test_watch_on_the_real_daemon(system_uri: str, tenant: str, tmp_path: Path) -> None:
    stacks, state = tmp_path / "stacks", tmp_path / "state"
    stacks.mkdir()
    prune_after = 1.5
    name = f"{tenant}.example1"
    byhand = f"{tenant}.byhand"
    host = Libvirt(system_uri)

    def stack(**fields: Any) -> Path:
        settings = {"memory": "64MiB", "max_memory": "128MiB", "vcpu": 1, "max_vcpu": 2, **fields}
        return write_stack(stacks, tenant, vms=[vm("example1", **settings)])

    watch = WatchProcess(
        "--connect", system_uri, "--state-dir", str(state), "-v",
        "watch", "-f", str(stacks), "--bind", "127.0.0.1", "--port", "0", "--log-format", "json",
        "--prune-after", str(prune_after), "--resync", "30",
    )  # fmt: skip
    try:
        watch.event("serve.listening")
        watch.event("watch.started")
        watch.event("reconcile.done")

        # A manifest appears: the VM is created and running.
        mark = watch.mark()
        path = stack()
        saved = time.time()
        wait_until(lambda: host.state(name) == "running", "the VM to run")
        first_call = watch.event("action.start", after=mark, subject=f"vm/{tenant}/example1")
        print(f"\nsave -> first libvirt call of the action: {first_call['ts'] - saved:.3f}s")
        uuid = host.uuid(name)
        assert host.config_memory_mib(name) == 64

        # Memory edited: it changes.
        mark = watch.mark()
        stack(memory="96MiB")
        wait_until(lambda: host.config_memory_mib(name) == 96, "memory 96 MiB")
        watch.event("action.done", after=mark, subject=f"vm/{tenant}/example1", action="update")
        assert host.state(name) == "running"

        # A domain defined by hand, without epfiot's metadata, in the tenant's namespace: left alone.
        host.connection().defineXML(
            f"<domain type='qemu'><name>{byhand}</name><memory unit='MiB'>32</memory><os><type arch='x86_64'>hvm</type></os></domain>"
        )

        # Broken YAML: logged with file:line, nothing changes, and drift is still corrected with the last
        # valid manifests.
        mark = watch.mark()
        path.write_text(f"version: 1\nstack: {tenant}-stack\nowner: {tenant}\nvms:\n  - name: example1\n    memory: [96MiB\n")
        problem = watch.event("manifest.problem", after=mark)
        assert problem["subject"].startswith(f"{path}:") and problem["level"] == "error"
        virsh(system_uri, "destroy", name)
        wait_until(lambda: watch.mark() > mark and host.state(name) == "running", "the destroyed VM to run again")
        watch.event("drift", after=mark, subject=f"vm/{tenant}/example1")
        assert host.config_memory_mib(name) == 96
        assert host.uuid(name) == uuid
        assert not [r for r in watch.since(mark) if r.get("event") == "action.start" and r.get("action") != "update"]

        # Fixed: converges to it.
        mark = watch.mark()
        stack(memory="128MiB")
        watch.event("manifest.valid", after=mark)
        wait_until(lambda: host.config_memory_mib(name) == 128, "memory 128 MiB")

        # Out-of-band destroy, manifests valid: running again within seconds.
        mark = watch.mark()
        virsh(system_uri, "destroy", name)
        destroyed = time.monotonic()
        wait_until(lambda: host.state(name) == "running", "the VM to run again", timeout=10)
        print(f"virsh destroy -> running again: {time.monotonic() - destroyed:.3f}s")
        watch.event("drift", after=mark, subject=f"vm/{tenant}/example1")

        # A checkout that removes and re-adds the file within the debounce window: nothing to prune.
        mark = watch.mark()
        text = path.read_text()
        path.unlink()
        path.write_text(text)
        watch.wait_for("a reconcile for the change", lambda r: r.get("event") == "reconcile.done" and "manifest" in r.get("reasons", ()), after=mark)
        assert not [r for r in watch.since(mark) if r.get("event") == "removal.pending"]
        # ... and one that takes longer: the removal is pending, undone before it is stable.
        mark = watch.mark()
        path.unlink()
        watch.event("removal.pending", after=mark, subject=f"vm/{tenant}/example1")
        mark = watch.mark()
        path.write_text(text)
        watch.event("manifest.loaded", after=mark)
        assert host.uuid(name) == uuid

        # libvirtd restarted: watch reconnects and keeps working.
        mark = watch.mark()
        subprocess.run([str(ROOT / "scripts" / "libvirtd.sh"), "restart"], check=True, capture_output=True, timeout=120)
        watch.event("libvirt.reconnected", after=mark, timeout=60)
        stack(memory="128MiB", vcpu=2)
        wait_until(lambda: host.config_vcpus(name) == 2, "2 vCPUs after the daemon restart", timeout=60)
        assert host.state(name) == "running"
        assert host.uuid(name) == uuid  # never pruned, never re-created

        # The file removed: pruned once the removal has lasted --prune-after; the hand-made domain stays.
        mark = watch.mark()
        path.unlink()
        pending = watch.event("removal.pending", after=mark, subject=f"vm/{tenant}/example1")
        destroy = watch.event("action.start", after=mark, subject=f"vm/{tenant}/example1", action="destroy")
        assert destroy["ts"] - pending["ts"] >= prune_after

        # SIGTERM in the middle of that action: it is finished, then watch exits with 0. (A pruned VM's
        # manifest, and its shutdown_timeout, is gone: the planner gives its graceful shutdown the default,
        # 60 s, and this guest has no OS to answer ACPI.)
        watch.proc.send_signal(signal.SIGTERM)
        watch.event("watch.stopping", after=mark)
        assert watch.stop(timeout=120, signalled=True) == 0
        events = [r.get("event") for r in watch.since(mark)]
        assert events.index("action.done") < events.index("watch.stopped") == len(events) - 1
        assert events.count("watch.stopping") == 1
        assert host.state(name) is None
        assert host.state(byhand) == "shutoff"
        assert not [r for r in watch.lines if r.get("event") == "libvirt.event" and r.get("domain") == byhand]
        strays = [r for r in watch.lines if r.get("event") == "(not json)"]
        assert strays == [], "every line is a JSON log line"
        errors = {r["event"] for r in watch.lines if r.get("level") == "error"}
        assert errors <= {"manifest.invalid", "manifest.problem"}, errors
    except BaseException:
        print("watch's last log lines:", *(json.dumps(r) for r in watch.since(max(0, watch.mark() - 60))), sep="\n")
        raise
    finally:
        watch.kill()
        with contextlib.suppress(libvirt.libvirtError, TypeError):
            dom = host.domain(byhand)
            if dom is not None:
                dom.undefine()
        host.close()

    # The event log keeps it all: epfiot events shows what watch did and saw.
    out = subprocess.run(
        [sys.executable, "-m", "epfiot", "--state-dir", str(state), "events", "-o", "json"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    kinds = {e["kind"] for e in json.loads(out.stdout)}
    assert {"action.done", "drift", "manifest.invalid", "removal.pending"} <= kinds
