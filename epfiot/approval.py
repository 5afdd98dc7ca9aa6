"""Nothing destroyed by surprise: a plan that destroys anything is applied only once someone said yes.

On a terminal the destroys are listed and only "yes" goes on, as terraform asks. Without a terminal there is
nobody to ask: such a plan is refused, unless the caller passed -y/--auto-approve. A plan that destroys
nothing is never asked about. `epfiot watch` prunes by its own rules (a removal must last) and never asks.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TextIO

from epfiot.errors import EpfiotError
from epfiot.plan import Action, Plan, Verb
from epfiot.wording import counted


class NotApproved(EpfiotError):
    """The plan destroys something and nobody approved it: nothing was changed."""


def destroys(plan: Plan) -> tuple[Action, ...]:
    return tuple(a for a in plan.actions if a.verb is Verb.DESTROY)


def what_is_lost(actions: tuple[Action, ...]) -> str:
    """'2 resources (vm alice/old, thing alice/t) and 1 volume (alice.old.epfiot-disk.qcow2)'."""
    volumes = [v for a in actions for v in a.deleted_volumes]
    text = f"{counted(len(actions), 'resource')} ({', '.join(f'{a.kind} {a.owner}/{a.name}' for a in actions)})"
    if volumes:
        text += f" and {counted(len(volumes), 'volume')} ({', '.join(volumes)})"
    return text


def approve(plan: Plan, *, auto_approve: bool, stdin: TextIO, out: TextIO, approved: Collection[str] | None = None) -> None:
    """Returns when `plan` may be applied; raises NotApproved otherwise. `out` gets the question.
    `approved`: the addresses someone already said yes to destroying (the CLI through the service's socket
    asks on its own terminal first): a plan that destroys only those needs no question."""
    lost = destroys(plan)
    if not lost or auto_approve:
        return
    if approved is not None and {a.address for a in lost} <= set(approved):
        return
    what = what_is_lost(lost)
    if not _is_terminal(stdin):
        raise NotApproved(
            f"this plan destroys {what}; standard input is not a terminal, so nobody can confirm it. "
            "Pass -y (--auto-approve) to apply it anyway. Nothing of it was applied."
        )
    print(f"\nThis plan destroys {what}.", file=out)
    print("Do you want to apply it? Only 'yes' is accepted: ", end="", file=out, flush=True)
    answer = stdin.readline()
    if answer.strip() != "yes":
        if not answer.endswith("\n"):
            print(file=out)
        raise NotApproved("not confirmed; nothing of the plan was applied")


def confirm(what: str, *, auto_approve: bool, stdin: TextIO, out: TextIO) -> None:
    """The same rule for another change that needs a yes (epfiot adopt): -y, else 'yes' on a terminal."""
    if auto_approve:
        return
    if not _is_terminal(stdin):
        raise NotApproved(f"{what} needs a confirmation and standard input is not a terminal: pass -y (--auto-approve). Nothing was changed.")
    print(f"Go on with {what}? Only 'yes' is accepted: ", end="", file=out, flush=True)
    answer = stdin.readline()
    if answer.strip() != "yes":
        if not answer.endswith("\n"):
            print(file=out)
        raise NotApproved("not confirmed; nothing was changed")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # closed, or an object without a file behind it
        return False
