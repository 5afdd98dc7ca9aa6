"""The endpoints of /api/v1 (described in openapi.json, next to this module), /metrics and the health checks.

Lists take `fields=a,b` (only those keys; an unknown one is a 400 that lists the known ones). A resource
of another tenant is a 404 exactly like a missing one (epfiot.authz).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Hashable
from functools import cache
from importlib import resources
from typing import Any, TypeVar

from aiohttp import web

from epfiot import render
from epfiot.api import ops
from epfiot.api.auth import CALLER, error
from epfiot.api.backend import service_for
from epfiot.errors import EpfiotError
from epfiot.hostconfig import Caller
from epfiot.service import Service
from epfiot.snapshot import Snapshot

T = TypeVar("T")
Rows = list[dict[str, Any]]
OBSERVED_AT = "Epfiot-Observed-At"  # the header that says when the observation an answer shows began

PREFIX = "/api/v1"
SCRAPE_WAIT = 2.0  # seconds /metrics waits for the VM and thing counts
LISTS = ("vms", "usb", "networks", "images", "things")


@cache
def openapi() -> dict[str, Any]:
    text = resources.files("epfiot.api").joinpath("openapi.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def known_fields(schema: str) -> tuple[str, ...]:
    """The keys of one item of a list, as openapi.json documents them."""
    return tuple(openapi()["components"]["schemas"][schema]["properties"])


SCHEMAS = {"vms": "Vm", "usb": "UsbDevice", "networks": "Network", "images": "Image", "things": "Thing", "events": "Event"}


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=encode(data), status=status, content_type="application/json")


def encode(data: object) -> bytes:
    """The JSON of an answer: the objects of `-o json`, without its indentation."""
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def not_found(message: str) -> web.Response:
    return error(404, message)


def fields_of(request: web.Request, resource: str) -> tuple[str, ...] | web.Response:
    """The keys `fields=` asks for (() for all of them), or the 400 answer to an unknown one."""
    text = request.query.get("fields")
    if text is None:
        return ()
    wanted = tuple(f.strip() for f in text.split(",") if f.strip())
    known = known_fields(SCHEMAS[resource])
    if unknown := [f for f in wanted if f not in known]:
        return error(400, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return wanted


def pick(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    return render.select_fields(rows, fields) if fields else rows


async def on_service(request: web.Request, operation: Callable[[Service], T]) -> T:
    """`operation` on the service of the live host, in the worker thread (epfiot.api.backend)."""
    from epfiot.api.app import BACKEND, HOSTS

    config = request.app[HOSTS].get()
    return await request.app[BACKEND].call(lambda live: operation(service_for(live, config)))


async def on_reader(request: web.Request, operation: Callable[[Service], T]) -> T:
    """`operation` in a reader thread, on a service that opens no host connection: things and events from
    the state directory, host rows rendered from a snapshot (epfiot.api.backend)."""
    from epfiot.api.app import BACKEND, HOSTS

    return await request.app[BACKEND].read(operation, request.app[HOSTS].get())


async def snapshot(request: web.Request) -> Snapshot:
    """Watch's latest observation of the host: what every read of the host renders (epfiot.snapshot)."""
    from epfiot.api.app import BACKEND

    return await request.app[BACKEND].snapshot()


async def rows(request: web.Request, resource: str, who: Caller) -> tuple[Rows, Snapshot | None]:
    """The caller's rows of `resource`, as `epfiot get RESOURCE -o json` makes them (epfiot.api.ops), and
    the snapshot they come from (None for things: the registry, read as it is now)."""
    operation = ops.READS[resource]
    if resource not in ops.OF_THE_HOST:
        return await on_reader(request, lambda svc: operation(svc, who, None)), None
    taken = await snapshot(request)
    return await on_reader(request, lambda svc: operation(svc, who, taken.observed)), taken


def observed_at(response: web.Response, taken: Snapshot | None) -> web.Response:
    """Says how fresh the answer is: when the observation it was rendered from began."""
    if taken is not None:
        response.headers[OBSERVED_AT] = taken.at_text
    return response


async def shared(request: web.Request, key: Hashable, make: Callable[[], Awaitable[bytes]]) -> bytes:
    """One computation for identical reads that arrive while it runs (the same list, caller, fields and
    snapshot): those waiting together get the same answer, made once."""
    from epfiot.api.app import INFLIGHT

    running = request.app[INFLIGHT]
    task = running.get(key)
    if task is None:
        task = running[key] = asyncio.ensure_future(make())
        task.add_done_callback(lambda _: running.pop(key, None))
    return await asyncio.shield(task)


def caller(request: web.Request) -> Caller:
    return request[CALLER]


def lister(resource: str) -> Callable[[web.Request], Any]:
    operation = ops.READS[resource]

    async def handler(request: web.Request) -> web.Response:
        from epfiot.api.app import RENDERED

        who = caller(request)
        fields = fields_of(request, resource)
        if isinstance(fields, web.Response):
            return fields
        taken = await snapshot(request) if resource in ops.OF_THE_HOST else None
        key = (resource, who, fields)
        bodies = request.app[RENDERED]
        if taken is not None and (body := bodies.get(taken, key)) is not None:
            return observed_at(web.Response(body=body, content_type="application/json"), taken)
        observed = taken.observed if taken is not None else None
        # Rows, the fields and the JSON are made in a reader thread: the loop only sends bytes.
        body = await shared(request, (*key, taken), lambda: on_reader(request, lambda svc: encode(pick(operation(svc, who, observed), fields))))
        if taken is not None:
            bodies.put(taken, key, body)
        return observed_at(web.Response(body=body, content_type="application/json"), taken)

    handler.__name__ = f"list_{resource}"
    return handler


async def get_vm(request: web.Request) -> web.Response:
    who = caller(request)
    owner, name = request.match_info["owner"], request.match_info["name"]
    fields = fields_of(request, "vms")
    if isinstance(fields, web.Response):
        return fields
    taken = await snapshot(request)
    # Another tenant's VM raises NotFound, exactly as a missing one does (a 404 either way).
    row = await on_reader(request, lambda svc: svc.vm(who, taken.observed, owner, name))
    return observed_at(json_response(pick([row], fields)[0]), taken)


async def list_events(request: web.Request) -> web.Response:
    from epfiot.cli.events import parse_duration, wanted_kinds
    from epfiot.errors import UsageError

    who = caller(request)
    since: float | None = None
    if text := request.query.get("since"):
        try:
            since = parse_duration(text)
        except UsageError as e:
            return error(400, str(e))
    kind = request.query.get("kind") or None
    owner = request.query.get("owner") or None  # epfiot events --owner, --kind (exact kinds, comma-separated)
    kinds = wanted_kinds(request.query.getall("kinds", []))
    fields = fields_of(request, "events")
    if isinstance(fields, web.Response):
        return fields
    try:
        body = await on_reader(request, lambda svc: encode(pick(svc.events(who, since, kind, owner=owner, kinds=kinds), fields)))
    except UsageError as e:  # a kind the event log does not know
        return error(400, str(e))
    return web.Response(body=body, content_type="application/json")


async def last_plan(request: web.Request) -> web.Response:
    from epfiot.api.app import BACKEND

    who = caller(request)
    last = request.app[BACKEND].last_run()
    if last is None:
        return json_response({"at": None, "reasons": [], "outcome": None, "plan": None, "outcomes": []})
    if not who.is_admin:
        last = scoped_run(last, who)
    return json_response(last)


def scoped_run(last: dict[str, Any], who: Caller) -> dict[str, Any]:
    """The last run as one tenant may see it: its own actions and outcomes; the summary counts those."""
    plan = last.get("plan")
    scoped = dict(last)
    if plan is not None:
        actions = [a for a in plan["actions"] if who.may_touch(a["owner"])]
        summary = {verb: sum(1 for a in actions if a["action"] == verb) for verb in plan["summary"]}
        scoped["plan"] = {"actions": actions, "problems": [], "summary": summary}
    scoped["outcomes"] = [o for o in last.get("outcomes", []) if who.may_touch(o["owner"])]
    return scoped


async def openapi_document(request: web.Request) -> web.Response:
    return json_response(openapi())


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    from epfiot.api.app import BACKEND

    ready, why = request.app[BACKEND].ready()
    return json_response({"status": "ready" if ready else "not ready", "reason": why}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    from epfiot.api.app import METRICS
    from epfiot.api.metrics import CONTENT_TYPE

    who = caller(request)
    if not who.is_admin:
        return error(403, "metrics are for the administrator")
    counts = request.app[METRICS]

    async def refresh() -> None:
        vms, _ = await rows(request, "vms", who)
        things, _ = await rows(request, "things", who)
        counts.vm_states(str(v["state"]) for v in vms)
        counts.thing_statuses(str(t["status"]) for t in things)

    # VMs by state (watch's latest observation) and things by status (the registry); before the first
    # observation is made, the values of the last refresh are served rather than making the scrape wait.
    with contextlib.suppress(TimeoutError, EpfiotError):
        await asyncio.wait_for(asyncio.shield(refresh()), SCRAPE_WAIT)
    response = web.Response(body=counts.exposition())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


@web.middleware
async def count_requests(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Counts every answer by route and status, and answers errors as JSON problems: libvirt out of reach is
    a 503, another epfiot error a 409, a bug a 500 (its traceback goes to the service's log, not the client)."""
    from epfiot.api.app import METRICS
    from epfiot.errors import EpfiotError, HostError
    from epfiot.service import NotFound

    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        if e.status >= 400:  # aiohttp's own (404, 405, 413...): as JSON problems too
            allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else {}
            return error(e.status, e.reason, **allow)
        raise
    except NotFound as e:
        status = 404
        return error(404, str(e))
    except HostError as e:
        status = 503
        return error(503, str(e))
    except EpfiotError as e:
        status = 409
        return error(409, str(e))
    except Exception:
        logging.getLogger("epfiot.api").exception("%s %s failed", request.method, request.path)
        return error(500, "internal error (a bug in epfiot); the service's log says where")
    finally:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        request.app[METRICS].api_requests.labels(route, str(status)).inc()


def setup(app: web.Application) -> None:
    from epfiot.api import changes

    app.middlewares.append(count_requests)
    r = app.router
    for resource in LISTS:
        r.add_get(f"{PREFIX}/{resource}", lister(resource))
    r.add_get(PREFIX + "/vms/{owner}/{name}", get_vm)
    r.add_get(f"{PREFIX}/events", list_events)
    r.add_get(f"{PREFIX}/plan", last_plan)
    r.add_get(f"{PREFIX}/openapi.json", openapi_document)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    changes.setup(app)
