"""Human and machine output: plans, tables, JSON and YAML. Pure formatting, no decisions."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from epfiot.errors import ManifestError, PlanError
from epfiot.plan import Action, Change, Plan, Verb
from epfiot.wording import counted

if TYPE_CHECKING:
    from epfiot.apply import Outcome
    from epfiot.reconcile import CreatePool, Result

SYMBOL = {Verb.CREATE: "+", Verb.UPDATE: "~", Verb.DESTROY: "-", Verb.WAIT: "!", Verb.NOOP: "="}
NOOP_DETAIL_LIMIT = 20  # above this many unchanged resources, list them only with --verbose


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def change_line(change: Change) -> str:
    how = f" ({change.how})" if change.how else ""
    return f"{change.field}: {_value(change.before)} -> {_value(change.after)}{how}"


def action_title(action: Action) -> str:
    return f"{action.kind} {action.owner}/{action.name}" if action.owner else f"{action.kind} {action.name}"


def render_plan(plan: Plan, *, verbose: bool = False, pool: CreatePool | None = None) -> str:
    """The plan, one line per action (and its changes); `pool`: an image pool still to create, first."""
    lines: list[str] = [f"  + pool {pool.name}: {pool.describe()}"] if pool else []
    noops = [a for a in plan.actions if a.verb is Verb.NOOP]
    show_noops = verbose or len(noops) <= NOOP_DETAIL_LIMIT
    for action in plan.actions:
        if action.verb is Verb.NOOP and not show_noops:
            continue
        lines.append(f"  {SYMBOL[action.verb]} {action_title(action)}: {action.verb} ({action.reason})")
        if action.verb is not Verb.NOOP:
            lines += [f"      {change_line(c)}" for c in action.changes]
            lines += [f"      deletes volume {v}" for v in action.deleted_volumes]
            lines += [f"      note: {n}" for n in action.notes]
    if noops and not show_noops:
        lines.append(f"  = {counted(len(noops), 'resource')} unchanged (--verbose lists them)")
    if plan.problems:
        lines.append("")
        lines.append("Problems (nothing will be applied until they are fixed):")
        lines += [f"  {p}" for p in plan.problems]
    lines.append("")
    lines.append(summary_line(plan))
    if plan.targets:
        lines.append("")
        lines += targeted_warning(plan)
    return "\n".join(lines)


def targeted_warning(plan: Plan) -> list[str]:
    """What terraform says of a targeted plan, for the same reason: the rest may still differ."""
    return [
        f"Warning: targeted plan ({', '.join(plan.targets)}): only these resources and what they need are",
        "planned; the rest of the manifests may still differ from the host. A plan without --target shows it.",
    ]


def summary_line(plan: Plan) -> str:
    parts = [
        f"{plan.count(Verb.CREATE)} to create",
        f"{plan.count(Verb.UPDATE)} to change",
        f"{plan.count(Verb.DESTROY)} to destroy",
        f"{plan.count(Verb.NOOP)} unchanged",
    ]
    if waiting := plan.count(Verb.WAIT):
        parts.append(f"{waiting} waiting")
    return "Plan: " + ", ".join(parts) + "."


def plan_as_dict(plan: Plan, *, pool: CreatePool | None = None, pool_created: bool = False) -> dict[str, Any]:
    setup: dict[str, Any] = {"setup": [pool_as_dict(pool, done=pool_created)]} if pool else {}
    if plan.targets:
        setup["targets"] = list(plan.targets)
    return setup | {
        "actions": [
            {
                "kind": a.kind.value,
                "owner": a.owner,
                "stack": a.stack,
                "name": a.name,
                "action": a.verb.value,
                "reason": a.reason,
                "changes": [
                    {"field": c.field, "before": c.before, "after": c.after, "how": c.how} for c in a.changes
                ],
                "steps": [step.describe() for step in a.steps],
                "notes": list(a.notes),
            }
            for a in plan.actions
        ],
        "problems": [problem_as_dict(p) for p in plan.problems],
        "summary": {verb.value: plan.count(verb) for verb in Verb},
    }


def apply_as_dict(result: Result, *, dry_run: bool = False) -> dict[str, Any]:
    """What `epfiot apply -o json` prints: the plan, the outcomes, and what a fresh plan still changes."""
    if dry_run or not result.outcomes:
        return {"plan": plan_as_dict(result.plan, pool=result.pool), "outcomes": []}
    data = {"plan": plan_as_dict(result.plan, pool=result.pool, pool_created=result.pool_created), "outcomes": [outcome_as_dict(o) for o in result.outcomes]}
    return data | ({"remaining": [a.address for a in result.remaining]} if result.remaining else {})


def outcome_as_dict(outcome: Outcome) -> dict[str, object]:
    a = outcome.action
    return {"kind": a.kind.value, "owner": a.owner, "name": a.name, "action": a.verb.value, "ok": outcome.ok, "seconds": round(outcome.seconds, 3), "error": outcome.message, "retry": outcome.retry}


def problem_as_dict(message: str, file: str | None = None, line: int | None = None, path: str | None = None) -> dict[str, Any]:
    """One problem as JSON output gives it, whatever found it: where (None when it is no place in a file),
    and what. Manifest problems have all four; plan and other errors only the message."""
    return {"file": file, "line": line, "path": path, "message": message}


def error_as_dict(error: Exception) -> dict[str, Any]:
    """`-o json` output of a command that failed: {"problems": [...]}."""
    if isinstance(error, ManifestError):
        return {"problems": [problem_as_dict(p.message, p.file, p.line, p.path) for p in error.problems]}
    if isinstance(error, PlanError) and error.problems:
        return {"problems": [problem_as_dict(p) for p in error.problems]}
    return {"problems": [problem_as_dict(str(error))]}


def pool_as_dict(pool: CreatePool, *, done: bool) -> dict[str, Any]:
    return {"kind": "pool", "name": pool.name, "path": pool.path, "action": "create", "done": done}


def to_json(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def to_yaml(data: object) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False)


def table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    if not rows:
        return "No resources found."
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    headers = [c.upper() for c in columns]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value)


def select_fields(rows: Sequence[Mapping[str, object]], fields: Sequence[str]) -> list[dict[str, object]]:
    return [{f: row.get(f) for f in fields} for row in rows]
