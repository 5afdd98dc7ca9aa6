"""The whole lifecycle against the real libvirt daemon with the QEMU driver (KVM when the host has it).

Each test works as one tenant (the `tenant` fixture), whose domains are removed afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from epfiot.cli import main
from epfiot.state import host_lock
from tests.stacks import vm, write_stack

pytestmark = pytest.mark.daemon

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def conn(system_uri: str) -> Iterator[libvirt.virConnect]:
    c = libvirt.open(system_uri)
    yield c
    c.close()


@pytest.fixture
def run(system_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    state = tmp_path / "state"

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--connect", system_uri, "--state-dir", str(state), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def managed(conn: libvirt.virConnect, tenant: str) -> dict[str, libvirt.virDomain]:
    return {d.name(): d for d in conn.listAllDomains() if d.name().startswith(f"{tenant}.")}


def test_lifecycle_create_change_stop_start_prune(run: Run, tenant: str, tmp_path: Path, conn: libvirt.virConnect) -> None:
    def stack(**fields: object) -> Path:
        settings = {"vcpu": 1, "max_vcpu": 2, "memory": "96MiB", "max_memory": "128MiB", **fields}
        return write_stack(tmp_path, tenant, vms=[vm("example1", **settings), vm("example2")])  # type: ignore[arg-type]

    path = stack()
    assert run("plan", "-f", str(path), "--detailed-exitcode")[0] == 2
    code, out, _ = run("apply", "-f", str(path))
    assert code == 0, out
    dom = conn.lookupByName(f"{tenant}.example1")
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert run("plan", "-f", str(path), "--detailed-exitcode")[0] == 0

    # vCPUs and memory change live, within the maxima.
    path = stack(vcpu=2, memory="128MiB")
    code, out, _ = run("apply", "-f", str(path))
    assert code == 0, out
    assert "vcpu: 1 -> 2 (live)" in out
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 2
    assert run("plan", "-f", str(path), "--detailed-exitcode")[0] == 0

    # Above the maximum: a restart is required; without allow_restart the definition changes and the
    # plan keeps saying a restart is pending.
    path = stack(vcpu=2, max_vcpu=3, memory="128MiB")
    code, out, _ = run("apply", "-f", str(path))
    assert code == 0, out
    assert "restart required" in out
    code, out, _ = run("plan", "-f", str(path), "--detailed-exitcode")
    assert code == 3 and "restart pending" in out  # only waits: exit 3 (README)
    code, out, _ = run("get", "vms", f"{tenant}/example1", "-o", "wide")
    assert "yes" in out.splitlines()[1]  # pending_restart

    # Allowing restarts converges.
    path = stack(vcpu=2, max_vcpu=3, memory="128MiB", allow_restart=True)
    code, out, _ = run("apply", "-f", str(path))
    assert code == 0, out
    assert dom.isActive()
    assert run("plan", "-f", str(path), "--detailed-exitcode")[0] == 0

    # Stop (graceful, then forced: there is no guest OS to answer ACPI), start again.
    path = stack(vcpu=2, max_vcpu=3, memory="128MiB", allow_restart=True, state="shutoff")
    assert run("apply", "-f", str(path))[0] == 0
    assert not dom.isActive()
    path = stack(vcpu=2, max_vcpu=3, memory="128MiB", allow_restart=True)
    assert run("apply", "-f", str(path))[0] == 0
    assert dom.isActive()

    # Prune: example2 leaves the manifest. It is shut down gracefully within the timeout its definition
    # recorded (2 s), then forced (no guest OS answers ACPI here), and undefined.
    write_stack(tmp_path, tenant, vms=[vm("example1", vcpu=2, max_vcpu=3, memory="128MiB", max_memory="128MiB", allow_restart=True)])
    code, out, _ = run("apply", "-f", str(path), "-y")
    assert "shut down (graceful, forced after 2s)" in run("events", "-o", "json")[1]
    assert code == 0, out
    assert set(managed(conn, tenant)) == {f"{tenant}.example1"}
    assert run("plan", "-f", str(path), "--detailed-exitcode")[0] == 0


def test_drift_is_corrected(run: Run, tenant: str, tmp_path: Path, conn: libvirt.virConnect) -> None:
    path = write_stack(tmp_path, tenant, vms=[vm("example1")])
    assert run("apply", "-f", str(path))[0] == 0
    dom = conn.lookupByName(f"{tenant}.example1")
    dom.destroy()  # someone stops it by hand
    code, out, _ = run("plan", "-f", str(path), "--detailed-exitcode")
    assert code == 2 and "state: shutoff -> running" in out
    assert run("apply", "-f", str(path))[0] == 0
    assert dom.isActive()


def test_unmanaged_domain_with_the_same_name_is_left_alone(run: Run, tenant: str, tmp_path: Path, conn: libvirt.virConnect) -> None:
    conn.defineXML(
        f"<domain type='qemu'><name>{tenant}.example1</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    path = write_stack(tmp_path, tenant, vms=[vm("example1")])
    code, _, err = run("apply", "-f", str(path))
    assert code == 1 and "not managed by epfiot" in err
    assert not conn.lookupByName(f"{tenant}.example1").isActive()
    # and an empty stack of that tenant prunes nothing it does not own
    empty = write_stack(tmp_path, tenant, vms=[])
    assert run("apply", "-f", str(empty), "--force", "-y")[0] == 0
    assert f"{tenant}.example1" in managed(conn, tenant)


def test_two_tenants_with_the_same_vm_name(run: Run, tenant: str, tmp_path: Path, conn: libvirt.virConnect) -> None:
    other = f"{tenant}b"
    try:
        a = write_stack(tmp_path, tenant, vms=[vm("example1")])
        b = write_stack(tmp_path, other, vms=[vm("example1")])
        assert run("apply", "-f", str(a), "-f", str(b))[0] == 0
        assert conn.lookupByName(f"{tenant}.example1").isActive()
        assert conn.lookupByName(f"{other}.example1").isActive()
        write_stack(tmp_path, tenant, vms=[])
        assert run("apply", "-f", str(a), "--force", "-y")[0] == 0
        assert f"{tenant}.example1" not in managed(conn, tenant)
        assert conn.lookupByName(f"{other}.example1").isActive()
    finally:
        for dom in managed(conn, other).values():
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def epfiot(system_uri: str, state: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "epfiot", "--connect", system_uri, "--state-dir", str(state), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_in_the_middle_of_an_apply_then_apply_converges(
    run: Run, system_uri: str, tenant: str, tmp_path: Path, conn: libvirt.virConnect
) -> None:
    names = [f"vm{i}" for i in range(6)]
    path = write_stack(tmp_path, tenant, vms=[vm(n) for n in names])
    proc = epfiot(system_uri, tmp_path / "state", "apply", "-f", str(path), "--parallel", "2")
    # Kill it as soon as it has started acting: some domains exist, not all are running.
    wait_until(lambda: len(managed(conn, tenant)) >= 1, 60, "the first domain")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    code, out, err = run("apply", "-f", str(path))
    assert code == 0, out + err
    domains = managed(conn, tenant)
    assert sorted(domains) == sorted(f"{tenant}.{n}" for n in names)  # none duplicated, none orphaned
    assert all(d.isActive() for d in domains.values())
    assert run("plan", "-f", str(path), "--detailed-exitcode")[0] == 0


def test_two_applies_are_serialised_by_the_host_lock(system_uri: str, tenant: str, tmp_path: Path, conn: libvirt.virConnect) -> None:
    state = tmp_path / "state"
    path = write_stack(tmp_path, tenant, vms=[vm("example1")])
    messages: list[str] = []
    release = threading.Event()
    locked = threading.Event()

    def hold() -> None:
        with host_lock(state, system_uri, on_wait=messages.append):
            locked.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    locked.wait(10)
    proc = epfiot(system_uri, state, "apply", "-f", str(path))
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert "waiting for another epfiot" in first
    assert f"{tenant}.example1" not in managed(conn, tenant)
    release.set()
    holder.join()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert conn.lookupByName(f"{tenant}.example1").isActive()
