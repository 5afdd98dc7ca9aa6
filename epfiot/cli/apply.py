"""epfiot apply: make the host match the manifests. `reconcile` also serves epfiot delete."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import TYPE_CHECKING

from epfiot.cli.common import manifests_from, options_from, service
from epfiot.errors import UsageError

if TYPE_CHECKING:
    from epfiot.hostconfig import Caller
    from epfiot.model import Desired
    from epfiot.reconcile import Verify
    from epfiot.service import Manifests, Service


def run(args: argparse.Namespace) -> int:
    if args.plan_file is not None:
        from epfiot.cli.saved import apply_saved

        return apply_saved(args)
    if not args.files:
        raise UsageError("apply needs manifests (-f PATH) or a saved plan (epfiot apply FILE, from epfiot plan -out FILE)")
    return reconcile(args, manifests_from(args), deletion=False)


def reconcile(
    args: argparse.Namespace,
    what: Manifests | Desired,
    *,
    deletion: bool,
    scoped: tuple[Service, Caller] | None = None,
    verify: Verify | None = None,
) -> int:
    """One reconcile run (epfiot.service.Service.apply_run) with terminal output; the exit code."""
    from epfiot import render
    from epfiot.approval import approve
    from epfiot.cli.report import Terminal
    from epfiot.reconcile import check
    from epfiot.service import apply_as_dict

    json_output = getattr(args, "output", "text") == "json"
    out = sys.stderr if json_output else sys.stdout
    started = time.monotonic()
    svc, caller = scoped or service(args)
    result = svc.apply_run(
        caller,
        what,
        approve=functools.partial(approve, auto_approve=args.auto_approve, stdin=sys.stdin, out=out, approved=getattr(args, "approved", None)),
        options=options_from(args),
        dry_run=args.dry_run,
        deletion=deletion,
        parallel=args.parallel,
        verify=verify,
        reporter=lambda events: Terminal(out, events, "delete" if deletion else "apply", uri=svc.uri, show_plan=not json_output, verbose=args.verbose),
    )
    plan = result.plan
    check(plan)
    if args.dry_run or not result.outcomes:
        if json_output:
            print(render.to_json(apply_as_dict(result, dry_run=True)))
        elif not plan.changes and result.pool is None:
            why = "Nothing to delete: none of them exists." if deletion else "The host matches the manifests."
            print(f"No changes. {why}", file=out)
        return 0
    elapsed = time.monotonic() - started
    failed = result.failed
    done = [o for o in result.outcomes if o.ok]
    if json_output:
        print(render.to_json(apply_as_dict(result)))
    else:
        created = sum(1 for o in done if o.action.verb == "create")
        changed = sum(1 for o in done if o.action.verb == "update")
        destroyed = sum(1 for o in done if o.action.verb == "destroy")
        print(
            f"\nApply {'failed' if failed else 'complete'}: {created} created, {changed} changed, "
            f"{destroyed} destroyed, {len(failed)} failed ({elapsed:.1f}s).",
            file=out,
        )
        if result.remaining:
            print("The host still differs from the manifests after applying:", file=out)
            for action in result.remaining:
                print(f"  {render.action_title(action)}: {action.verb} ({action.reason})", file=out)
        if failed or result.remaining:
            print("Run epfiot apply again to retry: it re-plans from the live state.", file=out)
    return 1 if failed or result.remaining else 0

