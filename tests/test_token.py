"""epfiot token create: a new token, shown once, and the hash the host configuration takes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from epfiot.hostconfig import parse_host_config, token_hash


def epfiot(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "epfiot", *argv], capture_output=True, text=True, timeout=60, check=False)


def test_a_tenant_token_and_its_hash_line_work_in_the_host_configuration(tmp_path: Path) -> None:
    config = tmp_path / "host.yaml"
    result = epfiot("--host-config", str(config), "token", "create", "alice")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    token = lines[1].strip()
    hash_line = lines[3].strip()
    assert token.startswith("epf_") and hash_line == f'- "{token_hash(token)}"'
    assert f"tenants.alice.tokens in {config}" in result.stdout
    config.write_text(f"version: 1\ntenants:\n  alice:\n    tokens:\n      {hash_line}\n")
    host = parse_host_config(config.read_text(), str(config))
    caller = host.caller_for_token(token)
    assert caller is not None and caller.tenant == "alice"
    assert host.caller_for_token(token + "x") is None
    assert epfiot("token", "create", "alice").stdout.splitlines()[1] != lines[1]  # a new one each time


def test_an_admin_token_as_json(tmp_path: Path) -> None:
    result = epfiot("token", "create", "--admin", "-o", "json")
    data = json.loads(result.stdout)
    assert data["admin"] is True and data["tenant"] is None and data["key"] == "admin.tokens"
    assert data["hash"] == token_hash(data["token"])
    config = tmp_path / "host.yaml"
    config.write_text(f'version: 1\nadmin: {{tokens: ["{data["hash"]}"]}}\ntenants: {{}}\n')
    caller = parse_host_config(config.read_text(), str(config)).caller_for_token(data["token"])
    assert caller is not None and caller.is_admin


def test_a_tenant_or_admin_not_both() -> None:
    for argv in (("token", "create"), ("token", "create", "alice", "--admin")):
        result = epfiot(*argv)
        assert result.returncode == 2 and "not both" in result.stderr and "Traceback" not in result.stderr


def test_a_token_for_a_tenant_the_configuration_lacks_says_so_and_a_bad_name_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "host.yaml"
    config.write_text("version: 1\ntenants:\n  alice: {users: [alice]}\n")
    assert "is not in" not in epfiot("--host-config", str(config), "token", "create", "alice").stdout
    result = epfiot("--host-config", str(config), "token", "create", "bob")
    assert result.returncode == 0 and f"(tenant bob is not in {config} yet" in result.stdout, result
    config.write_text("version: 1\ntenants: [broken\n")  # being edited: a token can still be made
    assert epfiot("--host-config", str(config), "token", "create", "bob").returncode == 0
    refused = epfiot("token", "create", "Bob/x")
    assert refused.returncode == 2 and refused.stderr.strip() == "error: 'Bob/x' is not a tenant name (lowercase letters, digits and '-')"
