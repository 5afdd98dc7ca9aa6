"""`epfiot apply` killed with SIGKILL on the real daemon, on create and on destroy, at points between its steps:
the next apply leaves nothing of the VM that no plan would see, and the plan after it is empty.

A watcher on a libvirt connection of its own polls for the effect of one step (the domain defined, its
reservation made, its overlay made, its volumes deleted...) and kills the process the moment it sees it,
so the kill lands after that step and about where the next one runs. tests/test_killsafe.py sweeps every
point on the test driver.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest
from test_provisioning_cli import conn, image_pool  # noqa: F401 - fixtures
from test_provisioning_daemon import free_subnet

from epfiot.model import is_epfiot_volume, overlay_volume_name, seed_volume_name
from tests.stacks import vm, write_stack

pytestmark = pytest.mark.daemon

PASSWORD = "kill safe horse battery"
DEADLINE = 120.0
Probe = Callable[[libvirt.virConnect], bool]


def test_apply_killed_between_steps_leaves_nothing_behind(
    conn: libvirt.virConnect,  # noqa: F811
    system_uri: str,
    tenant: str,
    tmp_path: Path,
    image_pool: tuple[str, Path],  # noqa: F811
) -> None:
    pool_name, _ = image_pool
    pool = conn.storagePoolLookupByName(pool_name)
    domain, network = f"{tenant}.vm1", f"{tenant}.lan"
    overlay, seed = overlay_volume_name(tenant, "vm1"), seed_volume_name(tenant, "vm1")
    cidr = ipaddress.IPv4Network(free_subnet(conn))
    lan = {"name": "lan", "mode": "route", "cidr": str(cidr)}
    # Two versions of one stack file: the same name in two directories. (Two files of one directory would be
    # two files of the stack: applying one of them keeps what the other declares.)
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    with_vm = write_stack(
        tmp_path / "with",
        tenant,
        filename="stack.yaml",
        networks=[lan],
        vms=[
            vm(
                "vm1",
                image="base.qcow2",
                network="lan",
                address=str(cidr.network_address + 10),
                credentials={"user": "charlie", "password": {"env": "EPFIOT_TEST_PASSWORD"}},
            )
        ],
    )
    without_vm = write_stack(tmp_path / "without", tenant, filename="stack.yaml", networks=[lan])
    env = {**os.environ, "EPFIOT_VIRT_TYPE": "qemu", "EPFIOT_TEST_PASSWORD": PASSWORD}
    argv = [sys.executable, "-m", "epfiot", "--connect", system_uri, "--state-dir", str(tmp_path / "state")]
    argv += ["--image-pool", pool_name]

    def epfiot(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    def run(*args: str) -> tuple[int, str]:
        proc = epfiot(*args)
        out, _ = proc.communicate(timeout=DEADLINE)
        return proc.returncode, out

    def apply_killed_when(path: Path, probe: Probe) -> bool:
        """Apply `path`, SIGKILLed as soon as `probe` holds; True when it was killed while running."""
        proc = epfiot("apply", "-f", str(path), "-y")
        deadline = time.monotonic() + DEADLINE
        while proc.poll() is None and not probe(conn):
            assert time.monotonic() < deadline, "the apply neither finished nor reached the point"
            time.sleep(0.002)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=DEADLINE)
        return killed and proc.returncode == -signal.SIGKILL

    def has_domain(c: libvirt.virConnect) -> bool:
        return domain in c.listDefinedDomains() or any(d.name() == domain for d in c.listAllDomains())

    def is_running(c: libvirt.virConnect) -> bool:
        return any(d.name() == domain and d.isActive() for d in c.listAllDomains())

    def reservations(c: libvirt.virConnect) -> list[str]:
        try:
            xml = c.networkLookupByName(network).XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
        except libvirt.libvirtError:
            return []
        return [str(h.get("mac")) for h in ET.fromstring(xml).findall("ip/dhcp/host")]

    def volumes() -> list[str]:
        pool.refresh()
        return sorted(v for v in pool.listVolumes() if is_epfiot_volume(v))

    def leftovers() -> list[str]:
        found = [f"domain {domain}"] if has_domain(conn) else []
        found += [f"volume {v}" for v in volumes()]
        return found + [f"reservation {mac}" for mac in reservations(conn)]

    def converges_to(path: Path) -> None:
        code, out = run("apply", "-f", str(path), "-y")
        assert code == 0, out
        if path == without_vm:
            assert leftovers() == []
        code, out = run("plan", "-f", str(path), "--detailed-exitcode")
        assert code == 0, out

    def volume_exists(name: str) -> Probe:
        return lambda _c: name in pool.listVolumes()

    killed = []
    create_points: dict[str, Probe] = {
        "defined": has_domain,
        "reserved": lambda c: bool(reservations(c)),
        "overlay made": volume_exists(overlay),
        "seed written": volume_exists(seed),
        "started": is_running,
    }
    for probe in create_points.values():
        killed.append(apply_killed_when(with_vm, probe))
        converges_to(without_vm)
    destroy_points: dict[str, Probe] = {
        "stopped": lambda c: not is_running(c),
        "reservation released": lambda c: not reservations(c),
        "overlay deleted": lambda c: overlay not in pool.listVolumes(),
        "seed deleted": lambda c: seed not in pool.listVolumes(),
    }
    for probe in destroy_points.values():
        converges_to(with_vm)
        killed.append(apply_killed_when(without_vm, probe))
        converges_to(without_vm)
    # the points are real: most kills landed while the apply was still running
    assert sum(killed) >= len(killed) - 2, dict(zip([*create_points, *destroy_points], killed, strict=True))
