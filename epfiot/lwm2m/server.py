"""The LwM2M bootstrap server (client-initiated bootstrap over CoAP/UDP, aiocoap).

Exchange, per the LwM2M bootstrap interface (1.0 and 1.1):

1. the client sends ``POST /bs?ep=<endpoint>[&pct=110]``; the server looks the endpoint up in
   the registry and answers 2.04 Changed (4.04 for an unknown endpoint, 4.03 for a thing that
   is waiting for its server, 4.00 for a malformed request, 4.05 for another method);
2. only after that answer is on the wire, the server sends, from the same socket to the
   client's address, the configured DELETEs, PUT /0/1 (Security), PUT /1/1 (Server), any extra
   writes (one PUT per object instance) and Bootstrap-Finish (``POST /bs``), one at a time,
   each waiting for the client's success response. TLV (11542) for clients that sent no
   ``pct``, SenML-JSON (110) for ``pct=110``;
3. the outcome goes to the registry: bootstrapped (time, client address, server URI written),
   or failed (an error response, no answer within the exchange timeout, or the endpoint
   bootstrapping again within the re-bootstrap window after a Finish: a client that rejected
   what it was written still acknowledges Finish and then starts over).

The registry model lives in :mod:`epfiot.lwm2m.registry`; request parsing and the write plan
in :mod:`epfiot.lwm2m.protocol` (no CoAP there). Status updates are written in small batches
(one transaction per ``flush_interval``) so the registry never paces the protocol.

Binding: the socket is an IPv6 UDP socket with IPV6_V6ONLY off, so binding ``"::"`` also
accepts IPv4 (as v4-mapped addresses) where the OS allows dual-stack sockets; an IPv4 literal
binds to that IPv4 address only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.error
from aiocoap.numbers.codes import Code

from epfiot.lwm2m.codec import CF_SENML_JSON
from epfiot.lwm2m.protocol import (
    BadRequest,
    BootstrapRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    Operation,
    ProtocolError,
    parse_bootstrap_query,
    plan_bootstrap,
)
from epfiot.lwm2m.registry import (
    STATUS_BOOTSTRAPPED,
    STATUS_BOOTSTRAPPING,
    STATUS_FAILED,
    Registry,
    StatusUpdate,
    ThingConfig,
)

log = logging.getLogger("epfiot.lwm2m.server")

DEFAULT_PORT = 5683
DEFAULT_EXCHANGE_TIMEOUT = 30.0
DEFAULT_REBOOTSTRAP_WINDOW = 30.0
DEFAULT_FLUSH_INTERVAL = 0.01

EventCallback = Callable[[str, dict[str, object]], None]

EVENT_STARTED = "bootstrap.started"
EVENT_FINISHED = "bootstrap.finished"
EVENT_FAILED = "bootstrap.failed"
EVENT_REFUSED = "bootstrap.refused"

_METHODS = {"DELETE": Code.DELETE, "PUT": Code.PUT, "POST": Code.POST}
_FORMAT_NAMES = {CF_SENML_JSON: "senml-json"}


class ClientRejected(Exception):
    """The client answered one of the bootstrap requests with an error code."""


def format_address(sockaddr: tuple[Any, ...]) -> str:
    """``host:port`` for IPv4 (also v4-mapped), ``[host]:port`` for IPv6."""
    host, port = str(sockaddr[0]), int(sockaddr[1])
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return f"{host}:{port}"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"{addr.ipv4_mapped}:{port}"
    if isinstance(addr, ipaddress.IPv6Address):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _code_text(code: Any) -> str:
    try:
        return f"{code.class_}.{code.detail:02d} {code.name_printable}"
    except AttributeError:
        return str(code)


def _diagnostic(payload: bytes) -> str:
    text = payload[:80].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


@dataclass(eq=False)
class _Exchange:
    endpoint: str
    owner: str
    revision: int
    remote: Any
    client: str
    server_uri: str
    content_format: int
    plan: list[Operation]
    retry_error: str | None  # set when this run follows a Finish within the window
    started: float = field(default_factory=time.monotonic)
    current: Operation | None = None
    superseded: bool = False
    task: asyncio.Task[None] | None = None


class _StatusWriter:
    """Collects status updates and writes them in one transaction per flush interval. A locked
    or failing database is retried later; nothing blocks the event loop for long."""

    MAX_PENDING = 100_000

    def __init__(self, registry: Registry, interval: float) -> None:
        self._registry = registry
        self._interval = interval
        self._pending: list[StatusUpdate] = []
        self._handle: asyncio.TimerHandle | None = None

    def put(self, update: StatusUpdate) -> None:
        self._pending.append(update)
        if len(self._pending) > self.MAX_PENDING:
            dropped = len(self._pending) - self.MAX_PENDING
            del self._pending[:dropped]
            log.error("registry unwritable: dropped %d status updates", dropped)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self._interval, self._flush_soon)

    def _flush_soon(self) -> None:
        self._handle = None
        if not self.flush():
            self._handle = asyncio.get_running_loop().call_later(0.5, self._flush_soon)

    def flush(self) -> bool:
        if not self._pending:
            return True
        batch = self._pending
        self._pending = []
        try:
            self._registry.apply_status(batch)
        except sqlite3.Error as exc:
            log.warning("could not write %d bootstrap status updates (will retry): %s", len(batch), exc)
            self._pending[:0] = batch
            return False
        return True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.flush()


class _Site:
    """aiocoap server site: every incoming request goes through :meth:`render_to_pipe`, so the
    server decides what is answered and can start the exchange only after its answer."""

    def __init__(self, server: BootstrapServer) -> None:
        self._server = server

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        start: Callable[[], None] | None = None
        try:
            start = self._server._handle_request(request)
            response = aiocoap.Message(code=Code.CHANGED)
        except ProtocolError as exc:
            response = aiocoap.Message(code=Code(exc.code[0] * 32 + exc.code[1]))
            if isinstance(exc, BadRequest | MethodNotAllowed):
                response.payload = exc.reason.encode("utf-8")
        # The 2.04 goes on the wire synchronously here (piggybacked on the ACK); the exchange
        # task only runs after this coroutine returned.
        pipe.add_response(response, is_last=True)
        if start is not None:
            start()


class BootstrapServer:
    """The bootstrap server: ``await start()``, then ``await stop()`` (or ``async with``).

    ``port`` 0 binds an ephemeral port; :attr:`port` is the bound one after start().
    """

    def __init__(
        self,
        registry_path: Path,
        bind: str = "::",
        port: int = DEFAULT_PORT,
        *,
        on_event: EventCallback | None = None,
        exchange_timeout: float = DEFAULT_EXCHANGE_TIMEOUT,
        rebootstrap_window: float = DEFAULT_REBOOTSTRAP_WINDOW,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        if exchange_timeout <= 0:
            raise ValueError("exchange_timeout must be positive")
        if rebootstrap_window < 0:
            raise ValueError("rebootstrap_window must not be negative")
        self.registry_path = Path(registry_path)
        self.bind = bind
        self.requested_port = port
        self.exchange_timeout = exchange_timeout
        self.rebootstrap_window = rebootstrap_window
        self._flush_interval = flush_interval
        self._on_event = on_event
        self._registry: Registry | None = None
        self._writer: _StatusWriter | None = None
        self._ctx: Any = None
        self._port: int | None = None
        self._active: dict[str, _Exchange] = {}
        self._last_finish: dict[str, tuple[float, int]] = {}
        self._promotions: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("bootstrap server not started")
        return self._port

    @property
    def running(self) -> bool:
        return self._ctx is not None

    async def start(self) -> None:
        if self._ctx is not None:
            raise RuntimeError("bootstrap server already started")
        registry = Registry(self.registry_path, busy_timeout=0.1)
        try:
            ctx = await aiocoap.Context.create_server_context(
                _Site(self),
                bind=(self.bind, self.requested_port),
                loggername="epfiot.lwm2m.coap",
                transports=["udp6"],
            )
        except BaseException:
            registry.close()
            raise
        self._registry = registry
        self._writer = _StatusWriter(registry, self._flush_interval)
        self._ctx = ctx
        self._port = _bound_port(ctx)
        log.info("LwM2M bootstrap server listening on %s port %d (udp)", self.bind, self._port)

    async def stop(self) -> None:
        """Stop serving: in-flight exchanges are cancelled (and recorded as failed), pending
        status updates written, the socket closed."""
        if self._ctx is None:
            return
        ctx, self._ctx = self._ctx, None
        for exchange in list(self._active.values()):
            if exchange.task is not None:
                exchange.task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in self._promotions.values():
            handle.cancel()
        self._promotions.clear()
        try:
            await ctx.shutdown()
        finally:
            if self._writer is not None:
                self._writer.close()
            if self._registry is not None:
                self._registry.close()
            self._writer = None
            self._registry = None
            log.info("LwM2M bootstrap server stopped")

    async def __aenter__(self) -> BootstrapServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def flush(self) -> None:
        """Write pending status updates now."""
        if self._writer is not None:
            self._writer.flush()

    # -- incoming requests -------------------------------------------------------------------

    def _handle_request(self, request: Any) -> Callable[[], None]:
        """Validate an incoming request; for an accepted Bootstrap-Request, prepare the
        exchange and return the function that starts it (after the 2.04 is sent)."""
        try:
            path = tuple(request.opt.uri_path)
            query = tuple(request.opt.uri_query)
        except (UnicodeDecodeError, ValueError) as exc:
            log.info("malformed request from %s: %s", self._client_of(request), exc)
            raise BadRequest("malformed options") from None
        if path != ("bs",):
            raise NotFound("no such resource")
        if request.code != Code.POST:
            raise MethodNotAllowed("only POST /bs is served")
        client = self._client_of(request)
        try:
            bs_request = parse_bootstrap_query(query)
        except BadRequest as exc:
            log.info("bad bootstrap request from %s: %s", client, exc.reason)
            raise
        return self._accept(bs_request, request.remote, client)

    def _client_of(self, request: Any) -> str:
        try:
            return format_address(request.remote.sockaddr)
        except (AttributeError, IndexError, TypeError, ValueError):
            return "?"

    def _accept(self, req: BootstrapRequest, remote: Any, client: str) -> Callable[[], None]:
        assert self._registry is not None
        endpoint = req.endpoint
        target = self._registry.bootstrap_target(endpoint)
        if target is None:
            self._refuse(endpoint, client, "unknown endpoint")
            raise NotFound("unknown endpoint")
        config: ThingConfig = target.record.config
        if config.server_uri is None:
            self._refuse(endpoint, client, "waiting for its server (the VM has no address yet)")
            raise Forbidden("waiting for its server")

        fmt = req.content_format
        if req.preferred_format is not None and req.preferred_format != fmt:
            log.info("%s asked for content format %d, writing TLV", endpoint, req.preferred_format)
        plan = plan_bootstrap(config, fmt)
        now = time.monotonic()

        previous = self._active.pop(endpoint, None)
        if previous is not None:
            previous.superseded = True
            if previous.task is not None:
                previous.task.cancel()
            self._fail(previous, "the client started a new bootstrap before this one finished")

        retry_error: str | None = None
        last = self._last_finish.get(endpoint)
        if last is not None and last[1] == target.revision and now - last[0] < self.rebootstrap_window:
            retry_error = (
                f"bootstrapped again {now - last[0]:.1f} s after Bootstrap-Finish "
                "(the client probably rejected the configuration or could not register)"
            )
        promotion = self._promotions.pop(endpoint, None)
        if promotion is not None:
            promotion.cancel()

        exchange = _Exchange(
            endpoint=endpoint,
            owner=config.owner,
            revision=target.revision,
            remote=remote,
            client=client,
            server_uri=config.server_uri,
            content_format=fmt,
            plan=plan,
            retry_error=retry_error,
            started=now,
        )
        self._active[endpoint] = exchange
        if retry_error is not None:
            self._fail(exchange, retry_error)
        else:
            self._status(exchange, STATUS_BOOTSTRAPPING)
        self._emit(
            EVENT_STARTED,
            endpoint=endpoint,
            owner=config.owner,
            client=client,
            content_format=_FORMAT_NAMES.get(fmt, "tlv"),
        )
        log.debug("bootstrap of %s from %s accepted", endpoint, client)

        def start() -> None:
            task = asyncio.get_running_loop().create_task(self._run(exchange), name=f"bootstrap {endpoint}")
            exchange.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return start

    def _refuse(self, endpoint: str, client: str, reason: str) -> None:
        log.warning("bootstrap refused for %r from %s: %s", endpoint[:64], client, reason)
        self._emit(EVENT_REFUSED, endpoint=endpoint[:64], client=client, reason=reason)

    # -- the exchange --------------------------------------------------------------------------

    async def _run(self, ex: _Exchange) -> None:
        try:
            async with asyncio.timeout(self.exchange_timeout):
                for op in ex.plan:
                    ex.current = op
                    await self._send(ex, op)
        except TimeoutError:
            what = ex.current.describe() if ex.current else "the exchange"
            self._fail(ex, f"no answer to {what} within {self.exchange_timeout:g} s")
        except ClientRejected as exc:
            self._fail(ex, str(exc))
        except aiocoap.error.Error as exc:
            what = ex.current.describe() if ex.current else "the exchange"
            self._fail(ex, f"{what} failed: {type(exc).__name__} {exc}".strip())
        except asyncio.CancelledError:
            if not ex.superseded:
                self._fail(ex, "the bootstrap server stopped during the exchange")
            raise
        except Exception as exc:  # a bug: record it, never let it take the server down
            log.exception("bootstrap of %s: unexpected error", ex.endpoint)
            self._fail(ex, f"internal error: {type(exc).__name__}")
        else:
            self._finished(ex)
        finally:
            if self._active.get(ex.endpoint) is ex:
                del self._active[ex.endpoint]

    async def _send(self, ex: _Exchange, op: Operation) -> None:
        assert self._ctx is not None
        message = aiocoap.Message(code=_METHODS[op.method], uri_path=op.uri_path, payload=op.payload)
        if op.content_format is not None:
            message.opt.content_format = op.content_format
        # same socket as the one that received POST /bs, to the client's address
        message.remote = ex.remote
        request = self._ctx.request(message, handle_blockwise=len(op.payload) > 512)
        response = await request.response
        if not response.code.is_successful():
            detail = _diagnostic(response.payload)
            raise ClientRejected(
                f"{op.describe()} answered {_code_text(response.code)}" + (f": {detail}" if detail else "")
            )

    def _finished(self, ex: _Exchange) -> None:
        now_wall = time.time()
        now = time.monotonic()
        self._last_finish[ex.endpoint] = (now, ex.revision)
        duration_ms = round((now - ex.started) * 1000, 2)
        if ex.retry_error is None:
            self._put(
                StatusUpdate(
                    ex.endpoint,
                    ex.revision,
                    STATUS_BOOTSTRAPPED,
                    at=now_wall,
                    client_address=ex.client,
                    written_server_uri=ex.server_uri,
                    bootstrapped_at=now_wall,
                )
            )
        else:
            # Stays failed until a Finish stands for the whole window without a new bootstrap.
            self._put(
                StatusUpdate(
                    ex.endpoint,
                    ex.revision,
                    STATUS_FAILED,
                    at=now_wall,
                    client_address=ex.client,
                    written_server_uri=ex.server_uri,
                    bootstrapped_at=now_wall,
                    error=ex.retry_error,
                )
            )
            loop = asyncio.get_running_loop()
            self._promotions[ex.endpoint] = loop.call_later(
                self.rebootstrap_window, self._promote, ex.endpoint, ex.revision, ex.client, now
            )
        log.info(
            "bootstrapped %s from %s with server %s in %.1f ms", ex.endpoint, ex.client, ex.server_uri, duration_ms
        )
        self._emit(
            EVENT_FINISHED,
            endpoint=ex.endpoint,
            owner=ex.owner,
            client=ex.client,
            server_uri=ex.server_uri,
            duration_ms=duration_ms,
            content_format=_FORMAT_NAMES.get(ex.content_format, "tlv"),
        )

    def _promote(self, endpoint: str, revision: int, client: str, finished: float) -> None:
        self._promotions.pop(endpoint, None)
        if self._last_finish.get(endpoint) != (finished, revision) or endpoint in self._active:
            return
        self._put(StatusUpdate(endpoint, revision, STATUS_BOOTSTRAPPED, client_address=client))
        log.info("%s: no new bootstrap within %g s of its last Finish, bootstrapped", endpoint, self.rebootstrap_window)

    def _fail(self, ex: _Exchange, error: str) -> None:
        self._put(StatusUpdate(ex.endpoint, ex.revision, STATUS_FAILED, client_address=ex.client, error=error))
        log.warning("bootstrap of %s from %s failed: %s", ex.endpoint, ex.client, error)
        self._emit(EVENT_FAILED, endpoint=ex.endpoint, owner=ex.owner, client=ex.client, error=error)

    def _status(self, ex: _Exchange, status: str) -> None:
        self._put(StatusUpdate(ex.endpoint, ex.revision, status, client_address=ex.client))

    def _put(self, update: StatusUpdate) -> None:
        if self._writer is not None:
            self._writer.put(update)

    def _emit(self, kind: str, **fields: object) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, dict(fields))
        except Exception:
            log.exception("event callback failed for %s", kind)


def _bound_port(ctx: Any) -> int:
    for interface in getattr(ctx, "request_interfaces", ()):
        transport = getattr(getattr(getattr(interface, "token_interface", None), "message_interface", None), "transport", None)
        if transport is None:
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            return int(sock.getsockname()[1])
    raise RuntimeError("could not determine the bound port of the bootstrap server")


async def run_bootstrap_server(
    registry_path: Path,
    bind: str = "::",
    port: int = DEFAULT_PORT,
    on_event: EventCallback | None = None,
    *,
    exchange_timeout: float = DEFAULT_EXCHANGE_TIMEOUT,
    rebootstrap_window: float = DEFAULT_REBOOTSTRAP_WINDOW,
    ready: Callable[[BootstrapServer], None] | None = None,
) -> None:
    """Serve bootstrap requests until cancelled. ``ready`` is called once the socket is bound
    (e.g. to print the port when ``port`` is 0)."""
    server = BootstrapServer(
        registry_path,
        bind,
        port,
        on_event=on_event,
        exchange_timeout=exchange_timeout,
        rebootstrap_window=rebootstrap_window,
    )
    await server.start()
    try:
        if ready is not None:
            ready(server)
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(server.stop())
