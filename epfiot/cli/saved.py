"""epfiot plan -out FILE and epfiot apply FILE: the command-line side of epfiot.savedplan."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from epfiot.cli.common import uri
from epfiot.errors import UsageError

if TYPE_CHECKING:
    from epfiot.model import Desired, Observed
    from epfiot.plan import Plan
    from epfiot.reconcile import CreatePool, Result

# Options that shape a plan: fixed by a saved plan, so apply FILE takes none of them.
PLAN_SHAPING = {"files": "-f", "force": "--force", "keep_disks": "--keep-disks", "targets": "--target"}


def refuse_stdin(args: argparse.Namespace) -> None:
    if "-" in args.files:
        raise UsageError(
            "plan -out re-reads the manifests when the plan is applied, and standard input cannot be read "
            "again: save the manifests to a file and give that (-f FILE)"
        )


def save(args: argparse.Namespace, desired: Desired, result: Result) -> str:
    """Write the plan of `result` to args.out; the line that says so."""
    from epfiot import render, savedplan

    plan = result.plan
    if plan.problems:
        return f"The plan has problems: not saved to {args.out}."
    pool = _pool(result.pool)
    saved = savedplan.SavedPlan(
        host=savedplan.HostSettings(uri(args), args.image_pool, args.image_dir, args.virt_type),
        paths=tuple(os.path.abspath(p) for p in args.files),
        manifests=savedplan.file_digests(desired.origin.files),
        force=args.force,
        keep_disks=args.keep_disks,
        prune=args.prune,
        targets=plan.targets,
        facts=savedplan.observed_facts(desired, result.observed),
        plan_digest=savedplan.plan_digest(plan, pool),
        plan=render.plan_as_dict(plan, pool=result.pool),
    )
    savedplan.write(args.out, saved)
    return f"Saved the plan to {args.out}. To apply exactly this plan: epfiot apply {args.out}"


def apply_saved(args: argparse.Namespace) -> int:
    """epfiot apply FILE: the saved plan's manifests and host, checked, then applied as apply -f would."""
    from epfiot import savedplan
    from epfiot.cli.apply import reconcile
    from epfiot.cli.common import load

    path: Path = args.plan_file
    given = [flag for name, flag in PLAN_SHAPING.items() if getattr(args, name, None)]
    if not args.prune:
        given.append("--no-prune")
    if given:
        raise UsageError(f"apply FILE applies the saved plan as it was made: {', '.join(given)} cannot be given with it (make a new plan instead)")
    saved = savedplan.read(path)
    if args.connect and uri(args) != saved.host.uri:
        raise UsageError(f"{path} was planned for {saved.host.uri}, not {uri(args)}")
    args.connect, args.image_pool, args.image_dir = saved.host.uri, saved.host.image_pool, saved.host.image_dir
    if args.virt_type and saved.host.virt_type and args.virt_type != saved.host.virt_type:
        raise UsageError(f"{path} was planned with --virt-type {saved.host.virt_type}, not {args.virt_type}")
    args.virt_type = args.virt_type or saved.host.virt_type
    args.force, args.keep_disks, args.prune, args.targets = saved.force, saved.keep_disks, saved.prune, list(saved.targets)
    args.files = list(saved.paths)
    desired = load(args)  # with the recorded password salts, as the plan was made
    savedplan.check_manifests(path, saved, desired.origin.files)

    def verify(observed: Observed, plan: Plan, pool: CreatePool | None) -> None:
        savedplan.check_host(path, saved, desired, observed, plan, _pool(pool))

    return reconcile(args, desired, deletion=False, verify=verify)


def _pool(pool: CreatePool | None) -> tuple[str, str] | None:
    return (pool.name, pool.path) if pool is not None else None
