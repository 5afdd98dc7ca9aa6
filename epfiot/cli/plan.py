"""epfiot plan (diff): what apply would do, changing nothing on the host."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from epfiot.cli.common import manifests_from, options_from, service
from epfiot.manifests import Manifests

if TYPE_CHECKING:
    from epfiot.hostconfig import Caller
    from epfiot.model import Desired
    from epfiot.service import Service

WAITING = 3  # plan --detailed-exitcode: nothing to apply, but some resource waits for the host to change


def run(args: argparse.Namespace) -> int:
    return show(args, manifests_from(args))


def show(args: argparse.Namespace, what: Manifests | Desired, scoped: tuple[Service, Caller] | None = None) -> int:
    """The plan of `what`, printed; the exit code. `scoped`: the service and caller (default: this host's
    and this process's user; the API passes its own)."""
    from epfiot import render
    from epfiot.plan import Verb

    out = getattr(args, "out", None)  # plan -out FILE; the API's plans save none
    if out is not None:
        from epfiot.cli.saved import refuse_stdin

        refuse_stdin(args)
    svc, caller = scoped or service(args)
    desired = svc.load(caller, what) if isinstance(what, Manifests) else what
    result = svc.plan_run(caller, desired, options_from(args))
    plan = result.plan
    if args.output == "json":
        print(render.to_json(render.plan_as_dict(plan, pool=result.pool)))
    else:
        print(render.render_plan(plan, verbose=args.verbose, pool=result.pool))
    if out is not None:
        from epfiot.cli.saved import save

        print(save(args, desired, result), file=sys.stderr if args.output == "json" else sys.stdout)
    if plan.problems:
        return 1
    if args.detailed_exitcode:
        if plan.changes or result.pool is not None:
            return 2
        # Waits alone (a required device unplugged, a restart not allowed): apply would change nothing,
        # yet the host differs; neither "no changes" nor "run apply" is true.
        return WAITING if plan.count(Verb.WAIT) else 0
    return 0
