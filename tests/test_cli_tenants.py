"""The command line with a host configuration (--host-config): who runs it decides whom it acts for.

A tenant's CLI runs in a subprocess as the unprivileged Unix user `nobody`, named as alice's user in the
host configuration, on a test-driver host file that already holds a VM of alice and one of bob (each process
gets a private copy of that host). It runs on the system's Python of the same version with the venv's
packages on its path, since the venv's interpreter may lie where that user cannot read (root's home). The
administrator's runs are in process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from epfiot.cli import main
from tests.hosts.testdriver import POOL, render
from tests.hosts.testdriver import vm as vm_spec
from tests.stacks import vm, write_stack

WORKTREE = Path(__file__).resolve().parent.parent
TENANT_USER = "nobody"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory the unprivileged user can read (pytest's tmp_path is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="epfiot-tenants-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def host(shared: Path) -> tuple[str, Path]:
    """The test-driver URI of a host with alice.web and bob.x, and the host configuration."""
    domains = "".join(render(vm_spec(name, owner=owner)) for owner, name in (("alice", "web"), ("bob", "x")))
    (shared / "host.xml").write_text(f"<node>\n{domains}<pool type='dir'><name>{POOL}</name><target><path>/nonexistent</path></target></pool>\n</node>\n")
    config = shared / "host.yaml"
    config.write_text(f"version: 1\nstate_dir: {shared / 'state'}\ntenants:\n  alice: {{users: [{TENANT_USER}]}}\n  bob: {{users: [bob]}}\n")
    for path in (shared / "host.xml", config):
        path.chmod(0o644)
    return f"test://{shared / 'host.xml'}", config


def as_tenant(uri: str, config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    python = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not python.exists() or os.geteuid() != 0:
        pytest.fail(f"running a command as {TENANT_USER} needs root and {python}", pytrace=False)
    packages = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{WORKTREE}:{packages}", "HOME": "/nonexistent"}
    command = [str(python), "-m", "epfiot", "--host-config", str(config), "--connect", uri, *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd="/", user=TENANT_USER, group="nogroup", extra_groups=[], check=False, timeout=60)


def test_a_tenants_cli_sees_and_changes_only_its_own(host: tuple[str, Path], shared: Path) -> None:
    uri, config = host
    got = as_tenant(uri, config, "get", "vms", "-o", "json")
    assert got.returncode == 0, got.stderr
    assert [(r["owner"], r["name"]) for r in json.loads(got.stdout)] == [("alice", "web")]

    deleted = as_tenant(uri, config, "delete", "vm", "bob/x", "-y")
    assert (deleted.returncode, deleted.stderr.strip()) == (1, "error: vm bob/x does not exist")

    theirs = write_stack(shared, "bob", vms=[], filename="bob.yaml")
    theirs.chmod(0o644)
    applied = as_tenant(uri, config, "apply", "-f", str(theirs), "-y")
    assert applied.returncode == 2
    assert f"{theirs}:3: owner: 'bob' is not yours" in applied.stderr and "nothing was changed" in applied.stderr

    elsewhere = as_tenant(uri, config, "--state-dir", str(shared / "mine"), "get", "vms")
    assert elsewhere.returncode == 2
    assert f"--state-dir {shared / 'mine'}: this host's is {shared / 'state'}" in elsewhere.stderr
    permissive = as_tenant(uri, config, "--policy", str(shared / "mine.yaml"), "get", "vms")
    assert permissive.returncode == 2
    assert f"--policy {shared / 'mine.yaml'}: this host's is /etc/epfiot/policy.yaml, if present" in permissive.stderr
    assert "Traceback" not in elsewhere.stderr + applied.stderr + deleted.stderr + permissive.stderr


def test_a_user_who_is_no_tenant_is_refused(host: tuple[str, Path]) -> None:
    uri, config = host
    config.write_text(config.read_text().replace(TENANT_USER, "someone-else"))
    got = as_tenant(uri, config, "get", "vms")
    assert got.returncode == 1
    assert got.stderr.strip() == f"error: user {TENANT_USER} is neither a tenant nor an administrator in {config}"


def test_the_administrator_uses_the_host_state_directory_or_is_warned(host: tuple[str, Path], shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import libvirt

    monkeypatch.delenv("EPFIOT_STATE_DIR", raising=False)

    _, config = host
    conn = libvirt.open("test:///default")  # one host for the in-process commands
    try:
        stack = write_stack(tmp_path, "alice", vms=[vm("db")])
        assert main(["--host-config", str(config), "--connect", "test:///default", "apply", "-f", str(stack)]) == 0
        assert (shared / "state" / "events.db").exists()  # the host's, not the default one
        capsys.readouterr()
        assert main(["--host-config", str(config), "--connect", "test:///default", "--state-dir", str(tmp_path / "other"), "events", "-o", "json"]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out) == [] and f"warning: --state-dir {tmp_path / 'other'} is not this host's" in err
        assert main(["--host-config", str(config), "--connect", "test:///default", "get", "vms", "-o", "json"]) == 0
        assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["db"]
    finally:
        conn.close()


def test_a_tenants_plan_meets_the_host_rules_without_learning_whose_resources_they_are(shared: Path) -> None:
    from epfiot.libvirt.network_xml import render_network_xml
    from epfiot.model import NetworkMode, NetworkSpec

    theirs = render_network_xml(NetworkSpec(owner="bob", stack="s", name="lan", mode=NetworkMode.NAT, cidr="10.78.0.0/24"))
    domain = render(vm_spec("web", owner="alice"))
    (shared / "host.xml").write_text(f"<node>\n{domain}{theirs}<pool type='dir'><name>{POOL}</name><target><path>/nonexistent</path></target></pool>\n</node>\n")
    config = shared / "host.yaml"
    config.write_text(f"version: 1\nstate_dir: {shared / 'state'}\ntenants:\n  alice: {{users: [{TENANT_USER}], quotas: {{vms: 1}}}}\n  bob: {{users: [bob]}}\n")
    for path in (shared / "host.xml", config):
        path.chmod(0o644)
    (shared / "state").mkdir(mode=0o777)  # the host's, where a tenant's runs keep events and salts
    (shared / "state").chmod(0o777)
    uri = f"test://{shared / 'host.xml'}"

    overlapping = write_stack(shared, "alice", stack="net", networks=[{"name": "lan", "mode": "nat", "cidr": "10.78.0.128/25"}], filename="net.yaml")
    overlapping.chmod(0o644)
    planned = as_tenant(uri, config, "plan", "-f", str(overlapping))
    assert planned.returncode == 1, planned.stderr
    assert f"{overlapping}:5: network lan (10.78.0.128/25) overlaps a network of another tenant" in planned.stdout
    assert "bob" not in planned.stdout + planned.stderr

    more = write_stack(shared, "alice", stack="more", vms=[vm("db")], filename="more.yaml")
    more.chmod(0o644)
    applied = as_tenant(uri, config, "apply", "-f", str(more), "-y")
    assert applied.returncode == 1
    assert "tenant alice would have 2 VMs after this plan, over its quota of 1 (quotas.vms)" in applied.stdout + applied.stderr
    assert "nothing was changed" in applied.stdout + applied.stderr


def test_a_state_directory_the_tenant_cannot_make_is_one_line(host: tuple[str, Path], shared: Path) -> None:
    uri, config = host  # its state directory is not there, and only root may make it
    stack = write_stack(shared, "alice", vms=[vm("web")], filename="alice.yaml")
    stack.chmod(0o644)
    planned = as_tenant(uri, config, "plan", "-f", str(stack))
    assert (planned.returncode, planned.stderr) == (1, f"error: cannot create the state directory {shared / 'state'}: Permission denied\n")
