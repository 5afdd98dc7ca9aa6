"""What each console page shows: the caller's rows, read through the API's own operations.

Every read is the one the matching GET /api/v1 endpoint makes (epfiot.api.routes.on_service on the live
host, epfiot.service scoping it to the caller; the last plan through routes.scoped_run): the console filters
nothing itself, so it shows exactly what the caller's token may see through the API.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from epfiot.api import ops, routes
from epfiot.hostconfig import Caller
from epfiot.service import Service

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


async def vms(request: web.Request, who: Caller) -> dict[str, Any]:
    def read(svc: Service) -> tuple[Rows, Rows]:
        return ops.READS["vms"](svc, who), svc.events(who, since=VM_EVENTS)

    rows, events = await routes.on_service(request, read)
    newest = last_by_subject(events)
    for row in rows:
        row["last_event"] = newest.get(f"vm/{row['owner']}/{row['name']}")
    return {"vms": rows}


async def usb(request: web.Request, who: Caller) -> dict[str, Any]:
    rows = await routes.on_service(request, lambda svc: ops.READS["usb"](svc, who))
    return {"devices": rows}


async def things(request: web.Request, who: Caller) -> dict[str, Any]:
    rows = await routes.on_service(request, lambda svc: ops.READS["things"](svc, who))
    return {"things": rows}


async def events(request: web.Request, who: Caller) -> dict[str, Any]:
    rows = await routes.on_service(request, lambda svc: svc.events(who, since=RECENT_EVENTS))
    return {"events": list(reversed(rows[-SHOWN_EVENTS:])), "window_hours": int(RECENT_EVENTS // 3600)}


async def plan(request: web.Request, who: Caller) -> dict[str, Any]:
    from epfiot.api.app import BACKEND

    last = request.app[BACKEND].last_run()
    if last is not None and not who.is_admin:
        last = routes.scoped_run(last, who)
    return {"run": last}


READERS = {"vms": vms, "usb": usb, "things": things, "events": events, "plan": plan}
