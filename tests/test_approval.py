"""A plan that destroys anything needs a yes: asked on a terminal, refused without one, skipped by -y."""

from __future__ import annotations

import io

import pytest

from epfiot.approval import NotApproved, approve
from epfiot.model import (
    Desired,
    Observed,
    ObservedVm,
    ObservedVolume,
    Ownership,
    PowerState,
    StackSpec,
    overlay_volume_name,
)
from epfiot.plan import Plan, make_plan

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
    assert "-y (--auto-approve)" in message and "Nothing was changed" in message
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
    with pytest.raises(NotApproved, match="not confirmed; nothing was changed"):
        approve(destroying_plan(), auto_approve=False, stdin=Terminal(answer), out=io.StringIO())
