"""The host configuration: tenants, who acts as each, tokens, and file:line errors like manifests'."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from epfiot.hostconfig import (
    ADMIN,
    HostConfig,
    HostConfigError,
    load_host_config,
    new_token,
    parse_host_config,
    token_hash,
)

ALICE_TOKEN = new_token()
EXAMPLE = f"""\
version: 1
state_dir: /var/lib/epfiot
network_ranges: [10.128.0.0/16, "fd00:1::/48"]
admin:
  groups: [epfiot-admin]
tenants:
  alice:
    users: [alice]
    manifests: [/srv/epfiot/alice]
    tokens: ["{token_hash(ALICE_TOKEN)}"]
    quotas: {{vms: 4, vcpus: 8, memory: 8GiB, disk: 100GiB, networks: 2, things: 20, usb: 1}}
  bob:
    groups: [lab]
    manifests: [/srv/epfiot/bob]
"""


def test_the_example_reads_into_tenants_quotas_and_settings() -> None:
    config = parse_host_config(EXAMPLE, "host.yaml")
    alice = config.tenants["alice"]
    assert (alice.quotas.vms, alice.quotas.memory_mib, alice.quotas.disk_gib, alice.quotas.usb) == (4, 8192, 100, 1)
    assert config.tenants["bob"].groups == {"lab"} and config.tenants["bob"].quotas.vms is None
    assert config.state_dir == Path("/var/lib/epfiot") and config.has_tenants
    assert config.tenant_of_directory(Path("/srv/epfiot/alice/lab")) is alice
    assert config.tenant_of_directory(Path("/srv/epfiot/alicex")) is None


def test_a_token_maps_to_its_tenant_and_an_unknown_one_to_nobody() -> None:
    config = parse_host_config(EXAMPLE, "host.yaml")
    caller = config.caller_for_token(ALICE_TOKEN)
    assert caller is not None and caller.tenant == "alice"
    assert caller.may_touch("alice") and not caller.may_touch("bob")
    assert config.caller_for_token(new_token()) is None
    assert config.caller_for_token(ALICE_TOKEN + "x") is None


def test_root_is_the_administrator_and_an_unlisted_user_is_nobody() -> None:
    config = parse_host_config(EXAMPLE, "host.yaml")
    assert config.caller_for_uid(0) == ADMIN
    nobody = pwd.getpwnam("nobody").pw_uid
    assert config.caller_for_uid(nobody) is None
    assert HostConfig().caller_for_uid(nobody) == ADMIN  # no host configuration: one administrator


def test_network_ranges_bound_tenants_networks() -> None:
    import ipaddress

    config = parse_host_config(EXAMPLE, "host.yaml")
    assert config.allows_range(ipaddress.ip_network("10.128.4.0/24"))
    assert not config.allows_range(ipaddress.ip_network("10.0.0.0/8"))
    assert not config.allows_range(ipaddress.ip_network("192.168.1.0/24"))
    assert config.allows_range(ipaddress.ip_network("fd00:1:0:5::/64"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\ntenants:\n  alice:\n    usres: [alice]\n", "host.yaml:4: tenants.alice.usres: unknown field"),
        ("version: 1\ntenants:\n  Alice: {}\n", "host.yaml:2: tenants: not a valid name"),
        ("version: 1\ntenants:\n  a:\n    quotas: {memory: lots}\n", "host.yaml:4: tenants.a.quotas.memory:"),
        ("version: 1\ntenants:\n  a:\n    tokens: [abc]\n", "host.yaml:4: tenants.a.tokens[0]: 'abc' is not a token hash"),
        ("version: 1\nnetwork_ranges: [10.0.0.1/8]\ntenants: {}\n", "host.yaml:2: network_ranges.0: '10.0.0.1/8' is not a network"),
        ("version: 1\ntenants:\n  a: {users: [u]}\n  b: {users: [u]}\n", "host.yaml:4: tenants.b.users: user 'u' is also a user of tenant 'a'"),
        ("version: 1\ntenants:\n  a: {manifests: [/srv/x]}\n  b: {manifests: [/srv/x/y]}\n", "overlaps /srv/x of tenant 'a'"),
        ("version: 1\ntenants: {}\n---\nversion: 1\n", "host.yaml:4: the host configuration is one document"),
        ("version: [\n", "host.yaml:2: invalid YAML"),
    ],
)
def test_problems_are_reported_with_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(HostConfigError) as raised:
        parse_host_config(text, "host.yaml")
    assert expected in str(raised.value), str(raised.value)
    assert "nothing was changed" in str(raised.value)


def test_no_file_at_the_default_path_is_no_configuration_but_a_named_one_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPFIOT_HOST_CONFIG", raising=False)
    monkeypatch.setattr("epfiot.hostconfig.DEFAULT_HOST_CONFIG", tmp_path / "absent.yaml")
    assert not load_host_config().has_tenants
    with pytest.raises(HostConfigError, match="does not exist"):
        load_host_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_bytes(b"version: 1\ntenants: {}\n\xff\n")
    with pytest.raises(HostConfigError, match=r"bad.yaml:3: the host configuration is not UTF-8 text$"):
        load_host_config(tmp_path / "bad.yaml")
    monkeypatch.setenv("EPFIOT_HOST_CONFIG", os.fspath(tmp_path / "host.yaml"))
    (tmp_path / "host.yaml").write_text(EXAMPLE)
    assert set(load_host_config().tenants) == {"alice", "bob"}


def test_a_tenant_may_name_only_itself_as_owner_and_sees_only_its_own() -> None:
    from epfiot.authz import NotAllowed, foreign_owners, require, visible
    from epfiot.desired import load_manifest_text
    from epfiot.hostconfig import Caller

    desired = load_manifest_text("version: 1\nstack: s\nowner: bob\nvms: []\n", "a.yaml")
    alice, bob = Caller("alice", "alice"), Caller("bob", "bob")
    (problem,) = foreign_owners(desired, alice)
    assert (problem.file, problem.line, problem.path) == ("a.yaml", 3, "owner")
    assert "you act as tenant 'alice'" in problem.message
    assert foreign_owners(desired, bob) == [] and foreign_owners(desired, ADMIN) == []
    rows = [("alice", 1), ("bob", 2), (None, 3)]
    assert visible(alice, rows, lambda r: r[0]) == [("alice", 1)]
    assert visible(ADMIN, rows, lambda r: r[0]) == rows
    require(alice, "alice", "vm alice/x")
    with pytest.raises(NotAllowed, match=r"^vm bob/x does not exist$"):
        require(alice, "bob", "vm bob/x")
