"""Saved plans: `epfiot plan -out FILE` and `epfiot apply FILE`, end to end on the libvirt test driver (see
tests/test_cli.py for how its shared state is held)."""

from __future__ import annotations

import io
import json
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from epfiot.cli import main
from epfiot.desired import load_manifests
from tests.stacks import vm, write_stack

URI = "test:///default"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def host() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(URI)
    yield conn
    conn.close()


@pytest.fixture
def run(tmp_path: Path, host: libvirt.virConnect, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    state = tmp_path / "state"

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--connect", URI, "--state-dir", str(state), "--image-dir", str(tmp_path / "images"), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def names(conn: libvirt.virConnect) -> set[str]:
    return {d.name() for d in conn.listAllDomains() if d.name().startswith("alice.")}


def test_a_saved_plan_is_applied_as_it_was_made(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    stack = write_stack(tmp_path, "alice", vms=[vm("a1"), vm("a2", state="shutoff")])
    saved = tmp_path / "plan.json"

    code, out, _ = run("plan", "-f", str(stack), "-out", str(saved))
    assert code == 0, out
    assert "+ vm alice/a1: create" in out
    assert f"Saved the plan to {saved}. To apply exactly this plan: epfiot apply {saved}" in out
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    data = json.loads(saved.read_text())
    assert (data["format"], data["version"]) == ("epfiot-plan", 1)
    assert data["manifests"]["paths"] == [str(stack)]
    assert [a["name"] for a in data["plan"]["actions"]] == ["a1", "a2"]
    assert not names(host)  # planning changed nothing

    code, out, err = run("apply", str(saved))
    assert code == 0, out + err
    assert "Apply complete: 2 created" in out
    assert names(host) == {"alice.a1", "alice.a2"}
    assert run("plan", "-f", str(stack), "--detailed-exitcode")[0] == 0
    code, _, err = run("apply", str(saved))  # a plan is applied once: the host it was made for is gone
    assert code == 1 and "new: domain alice.a1" in err


def test_a_saved_plan_is_refused_once_the_host_changed(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    stack = write_stack(tmp_path, "alice", vms=[vm("a1", memory="64MiB"), vm("a2")])
    assert run("apply", "-f", str(stack))[0] == 0
    write_stack(tmp_path, "alice", vms=[vm("a1", memory="96MiB"), vm("a2")])
    saved = tmp_path / "plan.json"
    assert run("plan", "-f", str(stack), "-out", str(saved))[0] == 0

    host.lookupByName("alice.a2").destroy()  # by hand, after the plan
    code, out, err = run("apply", str(saved))
    assert code == 1
    assert "the host changed since the plan was made; nothing was applied" in err
    assert "changed: domain alice.a2" in err
    assert "domain alice.a1" not in err
    assert host.lookupByName("alice.a1").info()[2] == 64 * 1024  # nothing of the plan was applied
    assert "Apply" not in out


def test_a_saved_plan_is_refused_once_its_manifests_changed(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "stack"
    root.mkdir()
    stack = write_stack(root, "alice", vms=[vm("a1")])
    saved = tmp_path / "plan.json"
    assert run("plan", "-f", str(root), "-out", str(saved))[0] == 0

    write_stack(root, "alice", vms=[vm("a1", vcpu=2)])
    code, _, err = run("apply", str(saved))
    assert code == 1 and "the manifests changed since the plan was made; nothing was applied" in err
    assert f"changed: {stack}" in err
    write_stack(root, "alice", vms=[vm("a1")])
    extra = write_stack(root, "alice", stack="other", vms=[vm("b1")])
    code, _, err = run("apply", str(saved))
    assert code == 1 and f"not there then: {extra}" in err
    assert not names(host)


def test_a_saved_plan_keeps_no_secret_and_notices_a_changed_one(run, tmp_path: Path, host: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ALICE_PASSWORD", PASSWORD)
    credentials = {"user": "alice", "password": {"env": "ALICE_PASSWORD"}, "ssh_authorized_keys": ["ssh-ed25519 AAAA alice@laptop"]}
    stack = write_stack(tmp_path, "alice", vms=[vm("a1", credentials=credentials)])
    saved = tmp_path / "plan.json"
    code, out, err = run("plan", "-f", str(stack), "-out", str(saved))
    assert code == 0, out + err
    text = saved.read_text()
    assert PASSWORD not in text
    credentials_read = load_manifests([str(stack)]).vms[0].credentials
    assert credentials_read is not None and credentials_read.password_hash
    assert credentials_read.password_hash not in text
    assert "$6$" not in text and "credentials" in text  # the seed as a digest only

    monkeypatch.setenv("ALICE_PASSWORD", "another one")
    code, _, err = run("apply", str(saved))
    assert code == 1 and "the plan made now differs from the saved one" in err
    assert not names(host)

    monkeypatch.setenv("ALICE_PASSWORD", PASSWORD)
    code, out, err = run("apply", str(saved))
    assert code == 0, out + err
    assert names(host) == {"alice.a1"}


def test_a_saved_plan_that_destroys_needs_a_yes(run, tmp_path: Path, host: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    stack = write_stack(tmp_path, "alice", vms=[vm("a1"), vm("a2")])
    assert run("apply", "-f", str(stack))[0] == 0
    write_stack(tmp_path, "alice", vms=[vm("a2")])
    saved = tmp_path / "plan.json"
    assert run("plan", "-f", str(stack), "--force", "-out", str(saved))[0] == 0
    assert json.loads(saved.read_text())["options"]["force"] is True

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run("apply", str(saved))
    assert code == 1 and "Pass -y (--auto-approve)" in err
    assert names(host) == {"alice.a1", "alice.a2"}
    code, out, err = run("apply", str(saved), "-y")
    assert code == 0, out + err
    assert names(host) == {"alice.a2"}


def test_saved_plan_usage_errors(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    stack = write_stack(tmp_path, "alice", vms=[vm("a1")])
    saved = tmp_path / "plan.json"
    assert run("plan", "-f", str(stack), "-out", str(saved))[0] == 0

    code, _, err = run("apply", str(saved), "-f", str(stack))
    assert code == 2 and "-f cannot be given with it" in err
    code, _, err = run("apply", str(saved), "--target", "vm/alice/a1")
    assert code == 2 and "--target cannot be given with it" in err
    code, _, err = run("apply")
    assert code == 2 and "apply needs manifests (-f PATH) or a saved plan" in err
    code, _, err = run("apply", str(tmp_path / "none.json"))
    assert code == 1 and "no such file" in err
    (tmp_path / "junk.json").write_text("{}")
    code, _, err = run("apply", str(tmp_path / "junk.json"))
    assert code == 1 and "not a saved epfiot plan" in err

    monkeypatch.setattr(sys, "stdin", io.StringIO(stack.read_text()))
    code, _, err = run("plan", "-f", "-", "-out", str(tmp_path / "stdin.json"))
    assert code == 2 and "standard input cannot be read again" in err
    assert not (tmp_path / "stdin.json").exists()


def test_a_plan_with_problems_is_not_saved(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    host.defineXML("<domain type='test'><name>alice.a1</name><memory>65536</memory><os><type>hvm</type></os></domain>")
    stack = write_stack(tmp_path, "alice", vms=[vm("a1")])
    saved = tmp_path / "plan.json"
    code, out, _ = run("plan", "-f", str(stack), "-out", str(saved))
    assert code == 1 and "not saved" in out
    assert not saved.exists()
