"""epfiot plan (diff): what apply would do, changing nothing on the host."""

from __future__ import annotations

import argparse
import sys

from epfiot.cli.common import manifests_from, options_from, service

WAITING = 3  # plan --detailed-exitcode: nothing to apply, but some resource waits for the host to change


def run(args: argparse.Namespace) -> int:
    from epfiot import render
    from epfiot.plan import Verb

    if args.out is not None:
        from epfiot.cli.saved import refuse_stdin

        refuse_stdin(args)
    svc, caller = service(args)
    desired = svc.load(caller, manifests_from(args))
    result = svc.plan_run(caller, desired, options_from(args))
    plan = result.plan
    if args.output == "json":
        print(render.to_json(render.plan_as_dict(plan, pool=result.pool)))
    else:
        print(render.render_plan(plan, verbose=args.verbose, pool=result.pool))
    if args.out is not None:
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
