"""What each console page shows: the caller's rows, read through the API's own operations.

Every read is the one the matching GET /api/v1 endpoint makes (epfiot.api.routes.rows on watch's latest
observation of the host, epfiot.service scoping it to the caller; the last plan through routes.scoped_run):
the console filters nothing itself, so it shows exactly what the caller's token may see through the API,
and says how fresh the observation is, as the API's Epfiot-Observed-At does.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from epfiot.api import routes
from epfiot.hostconfig import Caller
from epfiot.snapshot import Snapshot

Rows = list[dict[str, Any]]

RECENT_EVENTS = 24 * 3600.0  # seconds of the event log the events page reads
SHOWN_EVENTS = 200  # the newest of them, newest first
VM_EVENTS = RECENT_EVENTS  # seconds of events in which a VM's last change is looked for


def last_by_subject(events: Rows) -> dict[str, dict[str, Any]]:
    """The newest event of each subject ("vm/OWNER/NAME")."""
    newest: dict[str, dict[str, Any]] = {}
    for event in events:  # oldest first: later ones replace earlier ones
        newest[str(event["subject"])] = event
    return newest


def freshness(taken: Snapshot | None) -> dict[str, Any]:
    """When the observation a page shows began, and how long ago (the API's Epfiot-Observed-At)."""
    if taken is None:
        return {}
    return {"observed_at": taken.at_text, "observed_age": round(taken.age(), 1)}


async def vms(request: web.Request, who: Caller) -> dict[str, Any]:
    rows, taken = await routes.rows(request, "vms", who)
    events = await routes.on_reader(request, lambda svc: svc.events(who, since=VM_EVENTS))
    newest = last_by_subject(events)
    for row in rows:
        row["last_event"] = newest.get(f"vm/{row['owner']}/{row['name']}")
    return {"vms": rows, **freshness(taken)}


async def usb(request: web.Request, who: Caller) -> dict[str, Any]:
    rows, taken = await routes.rows(request, "usb", who)
    return {"devices": rows, **freshness(taken)}


async def things(request: web.Request, who: Caller) -> dict[str, Any]:
    rows, _ = await routes.rows(request, "things", who)
    return {"things": rows}


async def events(request: web.Request, who: Caller) -> dict[str, Any]:
    rows = await routes.on_reader(request, lambda svc: svc.events(who, since=RECENT_EVENTS))
    return {"events": list(reversed(rows[-SHOWN_EVENTS:])), "window_hours": int(RECENT_EVENTS // 3600)}


async def plan(request: web.Request, who: Caller) -> dict[str, Any]:
    from epfiot.api.app import BACKEND

    last = request.app[BACKEND].last_run()
    if last is not None and not who.is_admin:
        last = routes.scoped_run(last, who)
    return {"run": last}


READERS = {"vms": vms, "usb": usb, "things": things, "events": events, "plan": plan}
