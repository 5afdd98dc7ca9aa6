"""A plan that destroys anything needs a yes: asked on a terminal, refused without one, skipped by -y."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from epfiot.approval import NotApproved, approve
from epfiot.cli import main
from epfiot.desired import load_manifests
from epfiot.libvirt.domain import render_domain_xml
from epfiot.libvirt.host import LibvirtHost
from epfiot.model import (
    Desired,
    Observed,
    ObservedVm,
    ObservedVolume,
    Ownership,
    PowerState,
    StackSpec,
    VmSpec,
    overlay_volume_name,
)
from epfiot.plan import Options, Plan, make_plan
from epfiot.reconcile import Request, run_once
from tests.stacks import vm, write_stack

DISK = overlay_volume_name("alice", "old")


class Terminal(io.StringIO):
    """Typed answers on a stream that says it is a terminal (what approve asks of sys.stdin)."""

    def isatty(self) -> bool:
        return True


def destroying_plan() -> Plan:
    vm = ObservedVm("alice.old", "", Ownership("alice", "s", "old"), PowerState.SHUTOFF, 1, 1, 64, 64)
    volumes = (ObservedVolume("images", DISK),)
    return make_plan(Desired(stacks=(StackSpec("alice", "s"),)), Observed(vms=(vm,), volumes=volumes))


def test_a_plan_that_destroys_nothing_is_never_asked_about() -> None:
    out = io.StringIO()
    approve(Plan(), auto_approve=False, stdin=io.StringIO(""), out=out)
    assert out.getvalue() == ""


def test_without_a_terminal_a_destroying_plan_is_refused_with_what_it_would_destroy() -> None:
    with pytest.raises(NotApproved) as refused:
        approve(destroying_plan(), auto_approve=False, stdin=io.StringIO("yes\n"), out=io.StringIO())
    message = str(refused.value)
    assert "vm alice/old" in message and DISK in message
    assert "-y (--auto-approve)" in message and "Nothing of it was applied" in message
    assert refused.value.exit_code == 1


def test_auto_approve_skips_the_question() -> None:
    out = io.StringIO()
    approve(destroying_plan(), auto_approve=True, stdin=io.StringIO(""), out=out)
    assert out.getvalue() == ""


@pytest.mark.parametrize("answer", ["yes\n", "  yes \n"])
def test_on_a_terminal_yes_goes_on(answer: str) -> None:
    out = io.StringIO()
    approve(destroying_plan(), auto_approve=False, stdin=Terminal(answer), out=out)
    assert f"This plan destroys 1 resource (vm alice/old) and 1 volume ({DISK})." in out.getvalue()
    assert "Only 'yes' is accepted" in out.getvalue()


@pytest.mark.parametrize("answer", ["no\n", "y\n", "YES\n", ""])
def test_on_a_terminal_anything_but_yes_stops(answer: str) -> None:
    with pytest.raises(NotApproved, match="not confirmed; nothing of the plan was applied"):
        approve(destroying_plan(), auto_approve=False, stdin=Terminal(answer), out=io.StringIO())


# --- through the command line and the reconcile service ---------------------------------------------------

URI = "test:///default"


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(URI)  # test:///default lives while a connection is open: the test's one host
    yield conn
    conn.close()


def epfiot(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--connect", URI, "--state-dir", str(tmp_path / "state"), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def two_then_one(tmp_path: Path, conn: libvirt.virConnect, capsys: pytest.CaptureFixture[str]) -> Path:
    """alice's stack applied with two VMs, then rewritten with one: applying it again destroys alice.gone."""
    path = write_stack(tmp_path, "alice", vms=[vm("kept"), vm("gone")])
    assert epfiot(tmp_path, capsys, "apply", "-f", str(path))[0] == 0  # creates only: never asked
    write_stack(tmp_path, "alice", vms=[vm("kept")])
    return path


def domains(conn: libvirt.virConnect) -> set[str]:
    return {d.name() for d in conn.listAllDomains()}


def test_apply_without_a_terminal_refuses_a_destroying_plan_and_changes_nothing(
    tmp_path: Path, conn: libvirt.virConnect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = two_then_one(tmp_path, conn, capsys)
    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))  # not a terminal: what it holds is no answer
    code, out, err = epfiot(tmp_path, capsys, "apply", "-f", str(path), "--force")
    assert code == 1
    assert "- vm alice/gone: destroy" in out  # the plan is shown
    assert "standard input is not a terminal" in err and "-y (--auto-approve)" in err
    assert "Applying" not in out
    assert "alice.gone" in domains(conn)


@pytest.mark.parametrize("command", ["apply", "delete"])
def test_on_a_terminal_yes_destroys_and_anything_else_keeps(
    command: str, tmp_path: Path, conn: libvirt.virConnect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = two_then_one(tmp_path, conn, capsys)
    if command == "delete":
        path = write_stack(tmp_path, "alice", vms=[vm("gone")], filename="gone.yaml")
    monkeypatch.setattr(sys, "stdin", Terminal("no\n"))
    code, out, err = epfiot(tmp_path, capsys, command, "-f", str(path), "--force")
    assert code == 1 and "not confirmed" in err
    assert "This plan destroys 1 resource (vm alice/gone)." in out
    assert "alice.gone" in domains(conn)

    monkeypatch.setattr(sys, "stdin", Terminal("yes\n"))
    code, out, err = epfiot(tmp_path, capsys, command, "-f", str(path), "--force")
    assert code == 0, out + err
    assert out.index("Only 'yes' is accepted") < out.index("Applying 1 action ")
    assert "alice.gone" not in domains(conn) and "alice.kept" in domains(conn)


def test_auto_approve_and_plans_that_destroy_nothing_never_ask(
    tmp_path: Path, conn: libvirt.virConnect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = two_then_one(tmp_path, conn, capsys)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, out, err = epfiot(tmp_path, capsys, "delete", "vm", "alice/gone", "--force", "-y")
    assert code == 0, out + err
    assert "Only 'yes'" not in out and "alice.gone" not in domains(conn)
    assert epfiot(tmp_path, capsys, "apply", "-f", str(path), "--dry-run")[0] == 0


def test_run_once_asks_before_applying_and_a_refusal_applies_nothing(conn: libvirt.virConnect, tmp_path: Path) -> None:
    path = write_stack(tmp_path, "alice", vms=[vm("kept"), vm("gone")])
    with LibvirtHost.open(URI) as host:
        assert not run_once(Request(host, load_manifests([str(path)]))).failed
        write_stack(tmp_path, "alice", vms=[vm("kept")])
        asked: list[Plan] = []

        def refuse(plan: Plan) -> None:
            asked.append(plan)
            approve(plan, auto_approve=False, stdin=io.StringIO(""), out=io.StringIO())

        with pytest.raises(NotApproved):
            run_once(Request(host, load_manifests([str(path)]), Options(force=True), approve=refuse))
        assert [a.name for a in asked[0].changes] == ["gone"]
        assert "alice.gone" in domains(conn)


def test_a_real_terminal_is_asked(tmp_path: Path) -> None:
    """A separate process with a pseudo-terminal as its stdin, on a test-driver host file that holds a VM of
    alice's stack (each connection gets a private copy of it: the answer is seen in the output)."""
    spec = VmSpec(owner="alice", stack="s", name="old", memory_mib=64, vcpu=1, max_memory_mib=64, max_vcpu=1)
    domain = render_domain_xml(spec, (), uuid=None, seed_digest="", virt_type="test", image_pool=None)
    host_file = tmp_path / "host.xml"
    host_file.write_text(f"<node>{domain.split('?>', 1)[-1]}</node>")
    stack = write_stack(tmp_path, "alice", stack="s", vms=[])
    argv = [sys.executable, "-m", "epfiot", "--connect", f"test://{host_file}", "--state-dir", str(tmp_path / "state"),
            "apply", "-f", str(stack), "--force"]  # fmt: skip
    for answer, code, said in (("no\n", 1, "not confirmed"), ("yes\n", 0, "1 destroyed")):
        controller, terminal = pty.openpty()
        try:
            os.write(controller, answer.encode())
            done = subprocess.run(argv, stdin=terminal, capture_output=True, text=True, timeout=60, check=False)
        finally:
            os.close(controller)
            os.close(terminal)
        assert "Only 'yes' is accepted" in done.stdout, done.stdout + done.stderr
        assert done.returncode == code and said in done.stdout + done.stderr, done.stdout + done.stderr
