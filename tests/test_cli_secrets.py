"""Secrets through the command line, on the libvirt test driver: password salts kept in the state directory
across runs and dropped with their VM, secret files only where they may be, and delete without secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from epfiot.cli import main
from tests.stacks import vm, write_stack

URI = "test:///default"


@pytest.fixture
def host() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(URI)  # held for the test: test:///default is one host while a connection is open
    yield conn
    conn.close()


@pytest.fixture
def run(tmp_path: Path, host: libvirt.virConnect, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    state = tmp_path / "state"

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--connect", URI, "--state-dir", str(state), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_passwords_keep_their_salt_and_delete_needs_no_secret(run, tmp_path: Path, host: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    credentials = {"user": "edge", "password": {"env": "EPFIOT_TEST_CLI_PASSWORD"}}
    stack = write_stack(tmp_path, "alice", vms=[vm("example1", credentials=credentials)])
    images = ["--image-dir", str(tmp_path / "images")]
    salts = tmp_path / "state" / "salts.json"
    monkeypatch.setenv("EPFIOT_TEST_CLI_PASSWORD", "Zebra-Quokka-417")
    assert run(*images, "apply", "-f", str(stack))[0] == 0
    recorded = json.loads(salts.read_text())
    assert list(recorded) == ["alice/alice-stack/example1"] and "Zebra" not in salts.read_text()
    code, out, _ = run(*images, "plan", "-f", str(stack), "--detailed-exitcode")
    assert code == 0, out  # the same salt: the same seed
    assert json.loads(salts.read_text()) == recorded

    monkeypatch.delenv("EPFIOT_TEST_CLI_PASSWORD")
    code, out, err = run("delete", "-f", str(stack), "--force", "-y")
    assert code == 0, out + err
    assert "alice.example1" not in {d.name() for d in host.listAllDomains()}
    assert json.loads(salts.read_text()) == {}  # the destroyed VM's salt is gone


def test_secret_files_outside_the_manifests_directory_need_the_secrets_dir(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    vault = tmp_path / "vault"
    vault.mkdir()
    (vault / "pw").write_text("Zebra-Quokka-417\n")
    credentials = {"user": "edge", "password": {"file": str(vault / "pw")}}
    (tmp_path / "stacks").mkdir()
    stack = write_stack(tmp_path / "stacks", "alice", vms=[vm("example1", credentials=credentials)])
    monkeypatch.delenv("EPFIOT_SECRETS_DIR", raising=False)
    code, _, err = run("plan", "-f", str(stack))
    assert code == 2 and f"{stack}:12: vms[0].credentials.password: password file {vault / 'pw'}: secret file not allowed or unreadable" in err, err
    assert run("--secrets-dir", str(vault), "plan", "-f", str(stack))[0] == 0
    monkeypatch.setenv("EPFIOT_SECRETS_DIR", str(vault))
    assert run("plan", "-f", str(stack))[0] == 0


def test_a_manifest_with_a_problem_records_no_salt(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EPFIOT_TEST_CLI_PASSWORD", "Zebra-Quokka-417")
    credentials = {"user": "edge", "password": {"env": "EPFIOT_TEST_CLI_PASSWORD"}}
    stack = write_stack(tmp_path, "alice", vms=[vm("example1", credentials=credentials), vm("example2", vcpu=0)])
    assert run("plan", "-f", str(stack))[0] == 2
    assert not (tmp_path / "state" / "salts.json").exists()
    stack = write_stack(tmp_path, "alice", vms=[vm("example1", credentials=credentials), vm("example2")])
    assert run("plan", "-f", str(stack))[0] == 0
    assert list(json.loads((tmp_path / "state" / "salts.json").read_text())) == ["alice/alice-stack/example1"]


def test_delete_vm_drops_the_salt_of_that_vm_only(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EPFIOT_TEST_CLI_PASSWORD", "Zebra-Quokka-417")
    credentials = {"user": "edge", "password": {"env": "EPFIOT_TEST_CLI_PASSWORD"}}
    stack = write_stack(tmp_path, "alice", vms=[vm("example1", credentials=credentials), vm("example2", credentials=credentials)])
    assert run("--image-dir", str(tmp_path / "images"), "apply", "-f", str(stack))[0] == 0
    salts = tmp_path / "state" / "salts.json"
    kept = json.loads(salts.read_text())["alice/alice-stack/example2"]
    assert run("delete", "vm", "alice/example1", "--force", "-y")[0] == 0
    assert json.loads(salts.read_text()) == {"alice/alice-stack/example2": kept}
