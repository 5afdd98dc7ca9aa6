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


def run(args: argparse.Namespace) -> int:

    since = parse_duration(args.since) if args.since else None
    svc, caller = service(args)
    return present(args, svc.events(caller, since))


def present(args: argparse.Namespace, events: list[dict[str, object]]) -> int:
    from epfiot import render

    if not events and args.output != "json":
        print("No events yet.")
        return 0
    if args.output == "json":
        print(render.to_json(events))
    else:
        for e in events:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(e["at"])))  # type: ignore[arg-type]
            print(f"{stamp}  {e['kind']:<18} {e['subject']}: {e['message']}")
    return 0
