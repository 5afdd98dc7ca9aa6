"""A VM paused by a fault: libvirt's pause reason read as a condition of its own, shown by `get vms`, and on
the real daemon a KVM guest that this host's KVM cannot run (it pauses with QEMU's "internal-error"),
observed so and recovered by an apply that may restart it. The planner's rules are cases in
tests/plan_cases/vm_lifecycle.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest
from hosts.testdriver import open_test_driver, render, vm

from epfiot.libvirt.domain import parse_domain
from epfiot.libvirt.host import LibvirtHost
from epfiot.model import Observed, PowerState
from epfiot.views import vm_rows
from tests.stacks import vm as stack_vm
from tests.stacks import write_stack

DEBIAN = Path("/var/lib/epfiot/images/debian-12.qcow2")
INFO = [3, 131072, 65536, 1, 0]


@pytest.mark.parametrize(
    ("reason", "fault", "shown"),
    [
        (libvirt.VIR_DOMAIN_PAUSED_UNKNOWN, "internal-error", "paused (internal-error)"),
        (libvirt.VIR_DOMAIN_PAUSED_CRASHED, "crashed", "paused (crashed)"),
        (libvirt.VIR_DOMAIN_PAUSED_USER, None, "paused"),
        (libvirt.VIR_DOMAIN_PAUSED_IOERROR, None, "paused"),  # resumable once the storage is back
    ],
)
def test_the_pause_reason_tells_a_fault_and_get_vms_shows_it(reason: int, fault: str | None, shown: str) -> None:
    observed = parse_domain(render(vm()), libvirt.VIR_DOMAIN_PAUSED, INFO, reason=reason)
    assert (observed.state, observed.fault, observed.condition) == (PowerState.PAUSED, fault, shown)
    assert [r["state"] for r in vm_rows(Observed(vms=(observed,)))] == [shown]


def test_only_a_paused_domain_has_a_fault() -> None:
    running = parse_domain(render(vm()), libvirt.VIR_DOMAIN_RUNNING, INFO, reason=0)
    assert (running.fault, running.condition) == (None, "running")
    assert parse_domain(render(vm()), libvirt.VIR_DOMAIN_PAUSED, INFO).fault is None  # reason not read


def test_a_vm_paused_through_libvirt_has_no_fault(tmp_path: Path) -> None:
    with open_test_driver(tmp_path) as host:
        host.define_vm(vm(), (), uuid=None, seed_digest="")
        host.start_vm("o.vm")
        host.suspend_vm("o.vm")
        (observed,) = host.observe_vms()
        assert (observed.state, observed.fault) == (PowerState.PAUSED, None)


# --- the real daemon -------------------------------------------------------------------------------------


def _wait_for_fault(host: LibvirtHost, name: str, deadline: float) -> str | None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = [v for v in host.observe_vms() if v.libvirt_name == name]
        if found and found[0].fault is not None:
            return found[0].fault
        time.sleep(0.2)
    return None


@pytest.mark.daemon
def test_a_guest_kvm_cannot_run_is_shown_faulted_and_recovered_only_with_allow_restart(
    system_uri: str, tenant: str, tmp_path: Path
) -> None:
    """On this host's KVM a Debian kernel pauses the guest with QEMU's "internal-error" within seconds (where
    KVM runs it, the test is skipped). The VM's disk is an overlay of the host pool's debian-12.qcow2."""
    if not DEBIAN.exists() or not Path("/dev/kvm").exists():
        pytest.skip(f"needs {DEBIAN} and /dev/kvm")
    env = {**os.environ, "EPFIOT_VIRT_TYPE": "kvm"}
    argv = [sys.executable, "-m", "epfiot", "--connect", system_uri, "--state-dir", str(tmp_path / "state")]

    def cli(*args: str) -> tuple[int, str]:
        done = subprocess.run([*argv, *args], capture_output=True, text=True, env=env, timeout=180, check=False)
        return done.returncode, done.stdout + done.stderr

    def stack(allow_restart: bool) -> Path:
        guest = stack_vm("guest", memory="256MiB", image=DEBIAN.name, allow_restart=allow_restart)
        return write_stack(tmp_path, tenant, vms=[guest])

    name = f"{tenant}.guest"
    code, out = cli("apply", "-f", str(stack(True)))
    assert code == 0, out
    with LibvirtHost.open(system_uri) as host:
        if _wait_for_fault(host, name, 60) is None:
            pytest.skip("this host's KVM runs the guest: no internal error to observe")
        code, out = cli("get", "vms", "-o", "json")
        assert [r["state"] for r in json.loads(out) if (r["owner"], r["name"]) == (tenant, "guest")] == ["paused (internal-error)"], out
        code, out = cli("plan", "-f", str(stack(True)), "-o", "json")
        (action,) = json.loads(out)["actions"]
        assert (action["action"], action["reason"]) == ("update", "is paused (internal-error)"), out
        assert next(c for c in action["changes"] if c["field"] == "state")["before"] == "paused (internal-error)"
        assert not any(step.startswith("resume") for step in action["steps"]), out
        code, out = cli("apply", "-f", str(stack(True)))  # destroy and start: no resume, no error
        assert code == 0 and "Resetting" not in out, out
        assert [v.active for v in host.observe_vms() if v.libvirt_name == name] == [True]

        assert _wait_for_fault(host, name, 60) == "internal-error"  # the same KVM stops it again
        code, out = cli("plan", "-f", str(stack(False)), "--detailed-exitcode")
        assert code == 2 and "it cannot be resumed; set allow_restart: true" in out, out  # waits only
        code, out = cli("apply", "-f", str(stack(False)))
        assert code == 0 and "Resetting" not in out, out
        assert [v.condition for v in host.observe_vms() if v.libvirt_name == name] == ["paused (internal-error)"]
