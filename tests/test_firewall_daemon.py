"""The firewall table against the real daemon (no guests): installed in this process's network namespace,
where the daemon's bridges are (run with scripts/in-netns.sh), following two tenants' networks.

Other tests may add and remove networks on the same daemon meanwhile, and the table is the host's: the
checks look at this test's tenants' bridges only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from epfiot.cli import main
from epfiot.firewall import nft
from epfiot.model import NetworkMode, NetworkSpec
from tests.guests import in_own_network_namespace
from tests.stacks import write_stack

pytestmark = pytest.mark.daemon

Run = Callable[..., tuple[int, str]]


@pytest.fixture
def run(system_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    if not in_own_network_namespace():
        pytest.fail("run the firewall tests in the daemon's network namespace (scripts/in-netns.sh)", pytrace=False)
    state = tmp_path / "state"

    def run(*argv: str) -> tuple[int, str]:
        code = main(["--connect", system_uri, "--state-dir", str(state), *argv])
        out, err = capsys.readouterr()
        return code, out + err

    return run


def bridge(owner: str) -> str:
    return NetworkSpec(owner, "s", "lan", NetworkMode.ROUTE, "10.130.64.0/24").bridge


def stack(tmp_path: Path, owner: str, cidr: str | None) -> Path:
    networks = [{"name": "lan", "mode": "route", "cidr": cidr}] if cidr else []
    return write_stack(tmp_path, owner, networks=networks)


def table() -> dict[str, str]:
    """bridge -> owner, as the installed table says; {} when it is not there (or not epfiot's)."""
    isolation = nft.read().isolation
    return isolation.bridges if isolation is not None else {}


def firewall_actions(run: Run, *files: Path) -> list[dict[str, Any]]:
    code, out = run("plan", "-o", "json", *(a for f in files for a in ("-f", str(f))))
    assert code == 0, out
    return [a for a in json.loads(out)["actions"] if a["kind"] == "firewall"]


def test_two_tenants_networks_are_named_apart_and_the_table_converges(run: Run, tenant: str, tmp_path: Path) -> None:
    alice, bob = tenant, tenant + "b"
    a = stack(tmp_path, alice, "10.130.64.0/24")
    b = stack(tmp_path, bob, "10.131.64.0/24")
    code, out = run("apply", "-f", str(a))
    assert code == 0, out
    assert table().get(bridge(alice)) == alice

    # The second tenant's network: the plan says the table changes, and why.
    [planned] = firewall_actions(run, b)
    assert planned["name"] == "inet epfiot" and planned["action"] == "update"
    assert bridge(bob) in planned["reason"] and bob not in json.dumps(planned), planned
    code, out = run("plan", "-f", str(b))
    assert f"~ firewall inet epfiot: update (the table does not name the bridge {bridge(bob)})" in out, out
    code, out = run("apply", "-f", str(b))
    assert code == 0, out
    assert {bridge(alice): alice, bridge(bob): bob}.items() <= table().items()

    # A second apply changes nothing (of this test's: others' networks may come and go meanwhile).
    for f in (a, b):
        code, out = run("plan", "-o", "json", "-f", str(f))
        changes = [x for x in json.loads(out)["actions"] if x["action"] != "noop"]
        assert all(x["kind"] == "firewall" and bridge(alice) not in x["reason"] and bridge(bob) not in x["reason"] for x in changes), changes

    # Gone behind epfiot's back (a crash, a flushed ruleset): the plan says so, apply puts it back.
    subprocess.run(["nft", "delete", "table", "inet", "epfiot"], check=True)
    [missing] = firewall_actions(run, a)
    assert missing["action"] == "create", missing
    code, out = run("apply", "-f", str(a))
    assert code == 0, out
    assert {bridge(alice): alice, bridge(bob): bob}.items() <= table().items()

    # Removing bob's network drops its bridge from the table in the same apply.
    gone = stack(tmp_path, bob, None)
    [tidied] = firewall_actions(run, gone)
    assert tidied["action"] == "update", tidied
    code, out = run("apply", "-y", "-f", str(gone))
    assert code == 0, out
    assert bridge(bob) not in table() and table().get(bridge(alice)) == alice


def test_outside_the_daemons_namespace_the_plan_refuses(run: Run, tenant: str, tmp_path: Path, system_uri: str) -> None:
    a = stack(tmp_path, tenant, "10.130.65.0/24")
    code, out = run("apply", "-f", str(a))
    assert code == 0, out
    # A new, empty network namespace, where the daemon's bridges are not.
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "epfiot", "--connect", system_uri,
         "--state-dir", str(tmp_path / "state"), "plan", "-f", str(a)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}, check=False,
    )
    assert done.returncode == 1, done
    [problem] = [line for line in done.stdout.splitlines() if "not in this network namespace" in line]
    assert bridge(tenant) in problem and "scripts/in-netns.sh" in problem, done
