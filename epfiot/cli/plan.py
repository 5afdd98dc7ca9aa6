"""epfiot plan (diff): what apply would do, changing nothing on the host."""

from __future__ import annotations

import argparse

from epfiot.cli.common import load, options_from, pool_from, session


def run(args: argparse.Namespace) -> int:
    from epfiot import render
    from epfiot.reconcile import Request, run_once

    desired = load(args)
    with session(args, desired) as ses:
        request = Request(ses.host, desired, options_from(args), ses.registry, ses.policy, dry_run=True, pool=pool_from(args))
        result = run_once(request)
    plan = result.plan
    if args.output == "json":
        print(render.to_json(render.plan_as_dict(plan, pool=result.pool)))
    else:
        print(render.render_plan(plan, verbose=args.verbose, pool=result.pool))
    if plan.problems:
        return 1
    if args.detailed_exitcode:
        return 2 if plan.has_changes or result.pool is not None else 0
    return 0
