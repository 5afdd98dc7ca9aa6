#!/usr/bin/python3
"""A small LwM2M server for the guest image: it accepts the Registration interface and records every request.

It answers what a thing sends after its bootstrap (LwM2M 1.0/1.1, Registration interface):
  POST /rd?ep=NAME&lt=...&lwm2m=...&b=...   register    -> 2.01 Created, Location-Path rd/<id>
  POST /rd/<id>?lt=...                      update      -> 2.04 Changed
  DELETE /rd/<id>                           deregister  -> 2.02 Deleted
Each request is appended as one JSON object per line to the log file (default
/var/lib/lwm2m-server/registrations.jsonl), so a test or a person can read what arrived:
  {"event": "register", "ep": "prueba", "id": "1", "lt": 60, "lwm2m": "1.1", "b": "U",
   "links": "</1/0>,</3/0>", "peer": "10.128.0.1", "transport": "coap", "time": 1733123456.7}

CoAP over DTLS with a pre-shared key (what a thing is sent with epfiot's `server_security:`): when the
PSK file exists (default /etc/lwm2m-server/psk, e.g. written by cloud-init's write_files), the server also
listens on coaps port 5684, as JSON {"identity": "...", "key": "<hex>"} says, with an optional "bind": the
one address DTLS listens on (aiocoap's DTLS server cannot bind the any-address; default: the address
this host sends from on its default route). Its registrations are recorded with "transport": "coaps" and
the client's "identity".

The image carries aiocoap (installed from PyPI at build time under /opt/lwm2m-server) and DTLSSocket
(tinydtls); the unit lwm2m-server.service runs this program; it is not enabled: a VM's user-data starts it
when it wants it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import sys
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


def _peer(request: aiocoap.Message) -> dict[str, object]:
    """Who sent it, and how: the client's address, the transport, and over DTLS the PSK identity."""
    remote = request.remote
    found: dict[str, object] = {"peer": str(getattr(remote, "hostinfo", remote))}
    if getattr(remote, "scheme", None) == "coaps":
        found["transport"] = "coaps"
        claims = getattr(remote, "authenticated_claims", None) or []
        if claims and isinstance(claims[0], str):
            found["identity"] = claims[0]
    else:
        found["transport"] = "coap"
    return found


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
            **_peer(request),
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
            **_query(request),
            **_peer(request),
        )
        return aiocoap.Message(code=aiocoap.CHANGED)

    async def render_delete(self, request: aiocoap.Message) -> aiocoap.Message:
        endpoint = self.directory.endpoints.pop(self.reg_id, None)
        self.directory.site.remove_resource(["rd", self.reg_id])
        self.directory.recorder.write(event="deregister", ep=endpoint, id=self.reg_id, **_peer(request))
        return aiocoap.Message(code=aiocoap.DELETED)


class Psk:
    """The one PSK identity and key this server accepts over DTLS."""

    def __init__(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self.identity = str(data["identity"]).encode()
            self.key = bytes.fromhex(str(data["key"]))
            self.bind = str(data["bind"]) if data.get("bind") else None
        except (OSError, ValueError, KeyError, TypeError) as error:
            sys.exit(f"lwm2m-server: {path}: not a PSK file ({{\"identity\": ..., \"key\": \"<hex>\"}}): {type(error).__name__}")
        if not self.identity or not self.key:
            sys.exit(f"lwm2m-server: {path}: the identity and the key must not be empty")

    def credentials(self) -> object:
        """aiocoap's server credentials for its tinydtls_server transport: aiocoap 0.4.17 asks
        find_dtls_psk(identity) at each handshake, and reports the name returned with the key as the
        remote's authenticated claim (recorded as "identity")."""
        from aiocoap.credentials import CredentialsMap

        psk = self

        class OnePsk(CredentialsMap):  # type: ignore[misc]
            def __bool__(self) -> bool:  # holds no entries, and an empty map is replaced by aiocoap's own
                return True

            def find_dtls_psk(self, identity: bytes) -> tuple[bytes, str]:
                if bytes(identity) != psk.identity:
                    raise KeyError(identity)
                return psk.key, psk.identity.decode("utf-8", "replace")

        return OnePsk()


def default_route_address() -> str:
    """The address this host sends from on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError as error:
            sys.exit(f"lwm2m-server: no default route to find the DTLS address by ({error}): set \"bind\" in the PSK file")
        return str(probe.getsockname()[0])


async def serve(bind: str, port: int, log: Path, psk: Psk | None, dtls_port: int) -> None:
    site = resource.Site()
    site.add_resource(["rd"], Directory(site, Recorder(log)))
    await aiocoap.Context.create_server_context(site, bind=(bind, port))
    print(f"lwm2m-server: listening on {bind or '*'} port {port}, recording to {log}", flush=True)
    if psk is not None:
        address = psk.bind or default_route_address()
        # aiocoap 0.4.17 adds the difference between the CoAPS and CoAP default ports (1) to the port a
        # tinydtls_server is given: bind port - 1 to listen on port
        await aiocoap.Context.create_server_context(
            site, bind=(address, dtls_port - 1), transports=["tinydtls_server"], server_credentials=psk.credentials()
        )
        print(f"lwm2m-server: CoAP over DTLS on {address} port {dtls_port} (PSK identity {psk.identity.decode('utf-8', 'replace')})", flush=True)
    await asyncio.get_running_loop().create_future()  # until stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bind", default="::", help="address to listen on (default: every address)")
    parser.add_argument("--port", type=int, default=5683)
    parser.add_argument("--log", type=Path, default=Path("/var/lib/lwm2m-server/registrations.jsonl"))
    parser.add_argument("--psk", type=Path, default=Path("/etc/lwm2m-server/psk"),
                        help="JSON {identity, key (hex), bind}: also listen on CoAP over DTLS when it exists")
    parser.add_argument("--dtls-port", type=int, default=5684)
    args = parser.parse_args()
    psk = Psk(args.psk) if args.psk.exists() else None
    asyncio.run(serve(args.bind, args.port, args.log, psk, args.dtls_port))


if __name__ == "__main__":
    main()
