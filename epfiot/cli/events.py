"""epfiot events: what epfiot did, and what it saw (the event log of the state directory)."""

from __future__ import annotations

import argparse
import time

from epfiot.cli.common import service
from epfiot.errors import UsageError


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise UsageError(f"bad duration {text!r}: use e.g. 30s, 10m, 2h, 1d") from None


def wanted_kinds(given: list[str] | None) -> list[str]:
    """--kind, repeatable and comma-separated: "bootstrap.refused", "action.done,action.failed"."""
    return [kind.strip() for text in given or () for kind in text.split(",") if kind.strip()]


def run(args: argparse.Namespace) -> int:
    since = parse_duration(args.since) if args.since else None
    kinds = wanted_kinds(getattr(args, "kind", None))
    owner = getattr(args, "owner", None)
    svc, caller = service(args)
    events = svc.events(caller, since, owner=owner, kinds=kinds)
    filtered = since is not None or bool(kinds) or owner is not None
    return present(args, events, filtered=filtered and (svc.state_dir / "events.db").exists())


def present(args: argparse.Namespace, events: list[dict[str, object]], *, filtered: bool = False) -> int:
    """`events` printed as asked; `filtered`: a filter left out what the event log holds ("No events match.")."""
    from epfiot import render

    if args.output == "json":
        print(render.to_json(events))
    elif not events:
        print("No events match." if filtered else "No events yet.")
    else:
        for e in events:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(e["at"])))  # type: ignore[arg-type]
            print(f"{stamp}  {e['kind']:<18} {e['subject']}: {e['message']}")
    return 0
