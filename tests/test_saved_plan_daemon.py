"""A saved plan on the real libvirt daemon: what it records of running QEMU domains is stable while nothing
changes them, so that the plan applies; and a change by hand makes it stale. Each test works as one tenant
(the `tenant` fixture), whose domains are removed afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from epfiot.cli import main
from tests.stacks import vm, write_stack

pytestmark = pytest.mark.daemon


@pytest.fixture
def conn(system_uri: str) -> Iterator[libvirt.virConnect]:
    c = libvirt.open(system_uri)
    yield c
    c.close()


def test_a_saved_plan_of_running_vms_applies_and_goes_stale_after_a_change_by_hand(system_uri: str, tenant: str, tmp_path: Path, conn: libvirt.virConnect, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--connect", system_uri, "--state-dir", str(tmp_path / "state"), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    settings = {"memory": "96MiB", "max_memory": "128MiB", "vcpu": 1, "max_vcpu": 2}
    stack = write_stack(tmp_path, tenant, vms=[vm("a1", **settings), vm("a2", **settings)])  # type: ignore[arg-type]
    assert run("apply", "-f", str(stack))[0] == 0
    write_stack(tmp_path, tenant, vms=[vm("a1", **{**settings, "memory": "128MiB"}), vm("a2", **settings)])  # type: ignore[arg-type]
    saved = tmp_path / "plan.json"
    assert run("plan", "-f", str(stack), "-out", str(saved))[0] == 0

    code, out, err = run("apply", str(saved))
    assert code == 0, out + err
    assert "Apply complete: 0 created, 1 changed" in out
    assert conn.lookupByName(f"{tenant}.a1").info()[2] == 128 * 1024

    write_stack(tmp_path, tenant, vms=[vm("a1", **{**settings, "memory": "128MiB"}), vm("a2", **{**settings, "vcpu": 2})])  # type: ignore[arg-type]
    assert run("plan", "-f", str(stack), "-out", str(saved))[0] == 0
    conn.lookupByName(f"{tenant}.a1").suspend()  # by hand, after the plan
    code, _, err = run("apply", str(saved))
    assert code == 1 and f"changed: domain {tenant}.a1" in err
    assert conn.lookupByName(f"{tenant}.a2").info()[3] == 1
