"""epfiot events: what epfiot did, and what it saw (the event log of the state directory)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from epfiot.cli.common import state_dir
from epfiot.errors import UsageError


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise UsageError(f"bad duration {text!r}: use e.g. 30s, 10m, 2h, 1d") from None


def run(args: argparse.Namespace) -> int:
    from epfiot.eventlog import EventLog

    since = parse_duration(args.since) if args.since else None
    path = state_dir(args) / "events.db"
    if not path.exists():
        print("[]" if args.output == "json" else "No events yet.")
        return 0
    log = EventLog(path)
    try:
        events = log.since(since)
    finally:
        log.close()
    return present(args, [e.as_dict() for e in events])


def present(args: argparse.Namespace, events: list[dict[str, Any]]) -> int:
    from epfiot import render

    if args.output == "json":
        print(render.to_json(events))
    elif not events:
        print("No events yet.")
    else:
        for e in events:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(e["at"])))
            print(f"{stamp}  {e['kind']:<18} {e['subject']}: {e['message']}")
    return 0
