"""epfiot apply: make the host match the manifests. `reconcile` also serves epfiot delete."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import TYPE_CHECKING

from epfiot.cli.common import load, options_from, pool_from, session, uri
from epfiot.errors import UsageError

if TYPE_CHECKING:
    from epfiot.apply import Outcome
    from epfiot.model import Desired
    from epfiot.reconcile import Verify


def run(args: argparse.Namespace) -> int:
    if args.plan_file is not None:
        from epfiot.cli.saved import apply_saved

        return apply_saved(args)
    if not args.files:
        raise UsageError("apply needs manifests (-f PATH) or a saved plan (epfiot apply FILE, from epfiot plan -out FILE)")
    return reconcile(args, load(args), deletion=False)


def reconcile(args: argparse.Namespace, desired: Desired, *, deletion: bool, verify: Verify | None = None) -> int:
    """One reconcile run (epfiot.reconcile.run_once) with terminal output; the exit code."""
    from epfiot import render
    from epfiot.approval import approve
    from epfiot.cli.report import Terminal
    from epfiot.eventlog import EventLog
    from epfiot.reconcile import HostLock, Request, check, run_once

    json_output = getattr(args, "output", "text") == "json"
    out = sys.stderr if json_output else sys.stdout
    started = time.monotonic()
    with session(args, desired) as ses:
        events = EventLog.in_state_dir(ses.state_dir)
        reporter = Terminal(out, events, "delete" if deletion else "apply", uri=uri(args), show_plan=not json_output, verbose=args.verbose)
        request = Request(
            ses.host,
            desired,
            options_from(args),
            ses.registry,
            ses.policy,
            deletion=deletion,
            dry_run=args.dry_run,
            pool=pool_from(args),
            lock=HostLock(ses.state_dir, uri(args)),
            parallel=args.parallel,
            reporter=reporter,
            approve=functools.partial(approve, auto_approve=args.auto_approve, stdin=sys.stdin, out=out),
            verify=verify,
        )
        try:
            result = run_once(request)
        finally:
            events.close()
    plan = result.plan
    check(plan)
    if args.dry_run or not result.outcomes:
        if json_output:
            print(render.to_json({"plan": render.plan_as_dict(plan, pool=result.pool), "outcomes": []}))
        elif not plan.changes and result.pool is None:
            why = "Nothing to delete: none of them exists." if deletion else "The host matches the manifests."
            print(f"No changes. {why}", file=out)
        return 0
    elapsed = time.monotonic() - started
    failed = result.failed
    done = [o for o in result.outcomes if o.ok]
    if json_output:
        data = {"plan": render.plan_as_dict(plan, pool=result.pool, pool_created=result.pool_created), "outcomes": [_outcome_dict(o) for o in result.outcomes]}
        print(render.to_json(data | ({"remaining": [a.address for a in result.remaining]} if result.remaining else {})))
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


def _outcome_dict(outcome: Outcome) -> dict[str, object]:
    a = outcome.action
    return {"kind": a.kind.value, "owner": a.owner, "name": a.name, "action": a.verb.value, "ok": outcome.ok, "seconds": round(outcome.seconds, 3), "error": outcome.message, "retry": outcome.retry}
