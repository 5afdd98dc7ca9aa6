#!/usr/bin/python3
"""A small LwM2M server for the guest image: it accepts the Registration interface and records every request.

It answers what a thing sends after its bootstrap (LwM2M 1.0/1.1, Registration interface):
  POST /rd?ep=NAME&lt=...&lwm2m=...&b=...   register    -> 2.01 Created, Location-Path rd/<id>
  POST /rd/<id>?lt=...                      update      -> 2.04 Changed
  DELETE /rd/<id>                           deregister  -> 2.02 Deleted
Each request is appended as one JSON object per line to the log file (default
/var/lib/lwm2m-server/registrations.jsonl), so a test or a person can read what arrived:
  {"event": "register", "ep": "prueba", "id": "1", "lt": 60, "lwm2m": "1.1", "b": "U",
   "links": "</1/0>,</3/0>", "peer": "10.128.0.1", "time": 1733123456.7}

The image carries aiocoap (installed from PyPI at build time under /opt/lwm2m-server); the unit
lwm2m-server.service runs this program; it is not enabled: a VM's user-data starts it when it wants it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from pathlib import Path
from urllib.parse import parse_qsl

import aiocoap
import aiocoap.resource as resource


class Recorder:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, **event: object) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({**event, "time": time.time()}, sort_keys=True) + "\n")


def _query(request: aiocoap.Message) -> dict[str, str]:
    return dict(parse_qsl("&".join(request.opt.uri_query), keep_blank_values=True))


def _peer(request: aiocoap.Message) -> str:
    return str(getattr(request.remote, "hostinfo", request.remote))


class Directory(resource.Resource):
    """/rd: new registrations."""

    def __init__(self, site: resource.Site, recorder: Recorder) -> None:
        super().__init__()
        self.site = site
        self.recorder = recorder
        self.ids = itertools.count(1)
        self.endpoints: dict[str, str] = {}  # registration id -> endpoint name

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        query = _query(request)
        endpoint = query.get("ep")
        if not endpoint:
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=b"ep is required")
        reg_id = str(next(self.ids))
        self.endpoints[reg_id] = endpoint
        self.site.add_resource(["rd", reg_id], Registration(self, reg_id))
        self.recorder.write(
            event="register",
            ep=endpoint,
            id=reg_id,
            lt=int(query.get("lt", "86400")),
            lwm2m=query.get("lwm2m", "1.0"),
            b=query.get("b", "U"),
            links=request.payload.decode("utf-8", "replace"),
            peer=_peer(request),
        )
        return aiocoap.Message(code=aiocoap.CREATED, location_path=("rd", reg_id))


class Registration(resource.Resource):
    """/rd/<id>: updates and de-registration of one registration."""

    def __init__(self, directory: Directory, reg_id: str) -> None:
        super().__init__()
        self.directory = directory
        self.reg_id = reg_id

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.directory.recorder.write(
            event="update",
            ep=self.directory.endpoints.get(self.reg_id),
            id=self.reg_id,
            peer=_peer(request),
            **_query(request),
        )
        return aiocoap.Message(code=aiocoap.CHANGED)

    async def render_delete(self, request: aiocoap.Message) -> aiocoap.Message:
        endpoint = self.directory.endpoints.pop(self.reg_id, None)
        self.directory.site.remove_resource(["rd", self.reg_id])
        self.directory.recorder.write(event="deregister", ep=endpoint, id=self.reg_id, peer=_peer(request))
        return aiocoap.Message(code=aiocoap.DELETED)


async def serve(bind: str, port: int, log: Path) -> None:
    site = resource.Site()
    site.add_resource(["rd"], Directory(site, Recorder(log)))
    await aiocoap.Context.create_server_context(site, bind=(bind, port))
    print(f"lwm2m-server: listening on {bind or '*'} port {port}, recording to {log}", flush=True)
    await asyncio.get_running_loop().create_future()  # until stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bind", default="::", help="address to listen on (default: every address)")
    parser.add_argument("--port", type=int, default=5683)
    parser.add_argument("--log", type=Path, default=Path("/var/lib/lwm2m-server/registrations.jsonl"))
    args = parser.parse_args()
    asyncio.run(serve(args.bind, args.port, args.log))


if __name__ == "__main__":
    main()
