"""A small LwM2M client for tests: client-initiated bootstrap, 1.0 or 1.1 behaviour.

* 1.0 sends ``POST /bs?ep=<name>`` (no pct) and accepts only TLV writes;
* 1.1 sends ``POST /bs?ep=<name>&pct=110`` and accepts only SenML-JSON writes.

It runs its own aiocoap server context (its own source port), keeps the objects it is written
(pre-populated with its bootstrap account /0/0 and a Device instance /3/0), acts on DELETE
(``DELETE /0`` and ``DELETE /`` keep /0/0), answers PUT with 2.04 and Bootstrap-Finish with
2.04, and records every request in order. Behaviour can be bent for tests: answer a given
operation with an error code, never answer it, or answer it only once released.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code

from epfiot.lwm2m.aiocoap_compat import udp_endpoint
from epfiot.lwm2m.codec import (
    CF_LWM2M_TLV,
    CF_LWM2M_TLV_LEGACY,
    CF_SENML_JSON,
    CodecError,
    ResourceKey,
    decode_senml,
    decode_tlv,
    tlv_instance_resources,
    tlv_to_bool,
    tlv_to_float,
    tlv_to_int,
    tlv_to_str,
)
from epfiot.registry.paths import PathError, parse_path

Stored = bytes | str | int | float | bool

# aiocoap binds server contexts with SO_REUSEPORT, and Linux may then hand the same ephemeral
# port to two sockets of the same user that bind port 0 (also across processes, e.g. parallel
# test runs): both get a share of the datagrams and the bootstrap server ends up talking to the
# wrong client. aiocoap reads AIOCOAP_REUSE_PORT when it binds; the tests bind without it.
os.environ.setdefault("AIOCOAP_REUSE_PORT", "0")

_LIVE_PORTS: set[int] = set()
"""Ports of the test clients alive in this process: a client whose port is taken (possible only
when SO_REUSEPORT is on after all) binds again."""


@dataclass
class Received:
    method: str
    path: str
    content_format: int | None
    payload: bytes
    answered: str = ""


@dataclass
class Lwm2mTestClient:
    endpoint: str
    server_host: str
    server_port: int
    version: str = "1.1"
    bind: str = "127.0.0.1"
    answer: dict[str, Code] = field(default_factory=dict)  # "PUT /1/1" -> error code to answer
    swallow: set[str] = field(default_factory=set)  # operations never answered
    hold: set[str] = field(default_factory=set)  # operations answered only after release()
    query_override: tuple[str, ...] | None = None  # raw Uri-Query to send instead
    psk: tuple[str, bytes] | None = None  # bootstrap over DTLS (coaps) with this identity and key

    def __post_init__(self) -> None:
        if self.version not in ("1.0", "1.1"):
            raise ValueError("version is 1.0 or 1.1")
        self.objects: dict[int, dict[int, dict[ResourceKey, Stored]]] = {
            0: {0: {0: "coap://bootstrap.invalid:5683", 1: True, 2: 3}},
            3: {0: {0: "epfiot-test", 1: "model"}},
        }
        self.received: list[Received] = []
        self.finishes = 0
        self.violations: list[str] = []
        self._ctx: Any = None
        self._finished = asyncio.Event()
        self._changed = asyncio.Event()
        self._hold: list[asyncio.Future[None]] = []
        self._released = asyncio.Event()
        self.request_code: Code | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.psk is not None:
            # aiocoap's tinydtls client transport: a DTLS session per server, whose incoming requests
            # (the bootstrap server's writes) go to this client's site like those of a server context
            ctx = await aiocoap.Context.create_client_context(transports=["tinydtls"])
            ctx.serversite = self
            self._add_psk(ctx, self._bootstrap_uri(), *self.psk)
            self._ctx = ctx
            return
        for _ in range(50):
            ctx = await aiocoap.Context.create_server_context(
                self, bind=(self.bind, 0), loggername="test-lwm2m-client", transports=["udp6"]
            )
            port = _port_of(ctx)
            if port not in _LIVE_PORTS and port != self.server_port:
                break
            await ctx.shutdown()
        else:  # pragma: no cover
            raise RuntimeError("no port of its own for the test client")
        _LIVE_PORTS.add(port)
        self.port = port
        self._ctx = ctx

    async def close(self) -> None:
        for fut in self._hold:
            fut.cancel()
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            _LIVE_PORTS.discard(self.port)
            await ctx.shutdown()

    async def __aenter__(self) -> Lwm2mTestClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- client side -------------------------------------------------------------------------

    @property
    def expected_format(self) -> int:
        return CF_SENML_JSON if self.version == "1.1" else CF_LWM2M_TLV

    def _bootstrap_uri(self) -> str:
        host = f"[{self.server_host}]" if ":" in self.server_host else self.server_host
        return f"{'coap' if self.psk is None else 'coaps'}://{host}:{self.server_port}"

    @staticmethod
    def _add_psk(ctx: Any, uri: str, identity: str, key: bytes) -> None:
        ctx.client_credentials.load_from_dict(
            {f"{uri}/*": {"dtls": {"psk": {"hex": key.hex()}, "client-identity": {"ascii": identity}}}}
        )

    async def register(self, timeout: float = 10.0) -> Code:
        """Register (``POST /rd``) at the LwM2M server of Security instance /0/1, with the identity and
        key it holds when the server URI is ``coaps://``; returns the server's response code."""
        security = self.objects[0][1]
        uri = security[0].decode() if isinstance(security[0], bytes) else str(security[0])
        if uri.startswith("coaps://"):
            identity, key = security[3], security[5]
            assert isinstance(identity, bytes) and isinstance(key, bytes)
            self._add_psk(self._ctx, uri, identity.decode(), key)
        message = aiocoap.Message(code=Code.POST, uri=f"{uri}/rd?ep={self.endpoint}&lwm2m={self.version}")
        response = await asyncio.wait_for(self._ctx.request(message).response, timeout)
        return response.code  # type: ignore[no-any-return]

    async def request_bootstrap(self) -> Code:
        """Send the Bootstrap-Request; returns the server's response code."""
        self._finished.clear()
        message = aiocoap.Message(code=Code.POST, uri=f"{self._bootstrap_uri()}/bs")
        if self.query_override is not None:
            message.opt.uri_query = self.query_override
        elif self.version == "1.1":
            message.opt.uri_query = (f"ep={self.endpoint}", "pct=110")
        else:
            message.opt.uri_query = (f"ep={self.endpoint}",)
        response = await self._ctx.request(message).response
        self.request_code = response.code
        return response.code  # type: ignore[no-any-return]

    async def bootstrap(self, timeout: float = 10.0) -> None:
        """Request bootstrap and wait for Bootstrap-Finish."""
        code = await self.request_bootstrap()
        if code != Code.CHANGED:
            raise AssertionError(f"{self.endpoint}: bootstrap request answered {code}")
        await self.wait_finished(timeout)

    async def wait_finished(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._finished.wait(), timeout)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (checked after every request received)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not reached")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def release(self) -> None:
        """Answer the held operations (those received so far and any later)."""
        self._released.set()

    def operations(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.received]

    def value(self, path: str, kind: str) -> Stored:
        """A stored resource value, decoded as ``kind`` (str, int, bool, float) for TLV."""
        ids = parse_path(path, min_depth=3, max_depth=4)
        key: ResourceKey = ids[2] if len(ids) == 3 else (ids[2], ids[3])
        raw = self.objects[ids[0]][ids[1]][key]
        if not isinstance(raw, bytes):
            return raw
        return {"str": tlv_to_str, "int": tlv_to_int, "bool": tlv_to_bool, "float": tlv_to_float}[kind](raw)

    # -- server side (what the bootstrap server sends us) -------------------------------------

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        path_elems = tuple(request.opt.uri_path)
        path = "/" + "/".join(path_elems)
        method = str(request.code).split(" ")[0] if request.code else "?"
        method = {Code.GET: "GET", Code.PUT: "PUT", Code.POST: "POST", Code.DELETE: "DELETE"}.get(
            request.code, method
        )
        entry = Received(method, path, request.opt.content_format, bytes(request.payload))
        self.received.append(entry)
        op = f"{method} {path}"
        self._changed.set()
        if op in self.swallow:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._hold.append(fut)
            await fut  # never answered (cancelled on close)
            return
        if op in self.hold:
            await self._released.wait()
        code = self.answer.get(op)
        if code is None:
            code = self._handle(method, path, request)
        entry.answered = str(code)
        pipe.add_response(aiocoap.Message(code=code), is_last=True)
        if method == "POST" and path == "/bs" and code == Code.CHANGED:
            self.finishes += 1
            self._finished.set()
        self._changed.set()

    def _handle(self, method: str, path: str, request: Any) -> Code:
        try:
            ids = parse_path(path, max_depth=3) if path != "/bs" else ()
        except PathError:
            self.violations.append(f"bad path {path}")
            return Code.BAD_REQUEST
        if method == "POST" and path == "/bs":
            return Code.CHANGED
        if method == "DELETE":
            return self._delete(ids)
        if method == "PUT":
            return self._write(ids, request)
        self.violations.append(f"unexpected {method} {path}")
        return Code.METHOD_NOT_ALLOWED

    def _delete(self, ids: tuple[int, ...]) -> Code:
        if len(ids) > 2:
            return Code.BAD_REQUEST
        if ids == (0, 0):
            self.violations.append("DELETE /0/0")
            return Code.BAD_REQUEST
        targets = list(self.objects) if not ids else [ids[0]]
        for obj in targets:
            instances = self.objects.get(obj, {})
            for inst in list(instances):
                if obj == 0 and inst == 0:
                    continue  # our bootstrap account survives
                if len(ids) == 2 and inst != ids[1]:
                    continue
                del instances[inst]
        return Code.DELETED

    def _write(self, ids: tuple[int, ...], request: Any) -> Code:
        if len(ids) < 2:
            self.violations.append("write to an object path")
            return Code.BAD_REQUEST
        if ids[:2] == (0, 0):
            self.violations.append("write to /0/0")
            return Code.BAD_REQUEST
        cf = request.opt.content_format
        accepted = (CF_SENML_JSON,) if self.version == "1.1" else (CF_LWM2M_TLV, CF_LWM2M_TLV_LEGACY)
        if cf not in accepted:
            self.violations.append(f"content format {cf} for a {self.version} client")
            return Code.UNSUPPORTED_CONTENT_FORMAT
        payload = bytes(request.payload)
        try:
            if cf == CF_SENML_JSON:
                values = self._senml_values(ids, payload)
            else:
                values = self._tlv_values(ids, payload)
        except (CodecError, PathError) as exc:
            self.violations.append(f"undecodable payload: {exc}")
            return Code.BAD_REQUEST
        instance = self.objects.setdefault(ids[0], {}).setdefault(ids[1], {})
        instance.update(values)
        return Code.CHANGED

    @staticmethod
    def _tlv_values(ids: tuple[int, ...], payload: bytes) -> dict[ResourceKey, Stored]:
        entries = decode_tlv(payload)
        if len(ids) == 3:
            # a single resource: one resource entry for that resource
            flat = tlv_instance_resources(entries)
            if any((k if isinstance(k, int) else k[0]) != ids[2] for k in flat):
                raise CodecError("resource write carries other resources")
            return dict(flat)
        return dict(tlv_instance_resources(entries))

    @staticmethod
    def _senml_values(ids: tuple[int, ...], payload: bytes) -> dict[ResourceKey, Stored]:
        out: dict[ResourceKey, Stored] = {}
        for name, value in decode_senml(payload).items():
            full = parse_path(name, min_depth=3, max_depth=4)
            if full[: len(ids)] != ids:
                raise CodecError(f"SenML record {name} outside {ids}")
            key: ResourceKey = full[2] if len(full) == 3 else (full[2], full[3])
            out[key] = value
        return out


def _port_of(ctx: Any) -> int:
    endpoint = udp_endpoint(ctx)
    if endpoint is None:
        raise RuntimeError("context without a UDP socket")
    return int(endpoint.sock.getsockname()[1])
