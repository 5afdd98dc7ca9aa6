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

The registry model lives in :mod:`epfiot.registry`; request parsing and the write plan
in :mod:`epfiot.lwm2m.protocol` (no CoAP there). Status updates are written in small batches
(one transaction per ``flush_interval``) so the registry never paces the protocol.

Binding: the socket is an IPv6 UDP socket with IPV6_V6ONLY off, so binding ``"::"`` also
accepts IPv4 (as v4-mapped addresses) where the OS allows dual-stack sockets; an IPv4 literal
binds to that IPv4 address only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.error
from aiocoap.numbers.codes import Code
from aiocoap.transports.udp6 import UDP6EndpointAddress

try:  # the direct request path (see BootstrapServer._request); public API otherwise
    from aiocoap.interfaces import RequestInterface as _RequestInterface
    from aiocoap.pipe import Pipe as _Pipe
except ImportError:  # pragma: no cover - older aiocoap
    _Pipe = _RequestInterface = None

from epfiot.lwm2m.codec import CF_SENML_JSON
from epfiot.lwm2m.protocol import (
    BadRequest,
    BootstrapRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    Operation,
    ProtocolError,
    ServiceUnavailable,
    parse_bootstrap_query,
    plan_bootstrap,
)
from epfiot.registry import (
    STATUS_BOOTSTRAPPED,
    STATUS_BOOTSTRAPPING,
    STATUS_FAILED,
    BootstrapTarget,
    Registry,
    RegistryError,
    StatusUpdate,
    ThingConfig,
)

log = logging.getLogger("epfiot.lwm2m.server")

DEFAULT_PORT = 5683
DEFAULT_EXCHANGE_TIMEOUT = 30.0
DEFAULT_REBOOTSTRAP_WINDOW = 30.0
DEFAULT_FLUSH_INTERVAL = 0.01
RECEIVE_BUFFER = 1 << 20
DEFAULT_MAX_CONCURRENT = 16

EventCallback = Callable[[str, dict[str, object]], None]

EVENT_STARTED = "bootstrap.started"
EVENT_FINISHED = "bootstrap.finished"
EVENT_FAILED = "bootstrap.failed"
EVENT_REFUSED = "bootstrap.refused"

_METHODS = {"DELETE": Code.DELETE, "PUT": Code.PUT, "POST": Code.POST}
_FORMAT_NAMES = {CF_SENML_JSON: "senml-json"}


class _UnicastRemote(UDP6EndpointAddress):  # type: ignore[misc]
    """A client address known to be unicast on both ends. aiocoap re-derives ``is_multicast``
    by parsing the address text several times per message sent; a bootstrap sends five
    requests to the same client, so the answers are fixed once here."""

    is_multicast = False
    is_multicast_locally = False


def _sending_remote(remote: Any) -> Any:
    """The remote to address the bootstrap requests to (same socket, same client address)."""
    if type(remote) is not UDP6EndpointAddress:
        return remote
    packed = _packed(str(remote.sockaddr[0]))
    local = remote.pktinfo[:16] if isinstance(remote.pktinfo, bytes) and len(remote.pktinfo) >= 16 else None
    if packed is None or _is_multicast(packed) or (local is not None and _is_multicast(local)):
        return remote
    return _UnicastRemote(remote.sockaddr, remote.interface, pktinfo=remote.pktinfo)


class ClientRejected(Exception):
    """The client answered one of the bootstrap requests with an error code."""


_V4MAPPED = b"\x00" * 10 + b"\xff\xff"


def _packed(host: str) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
    except (OSError, ValueError):
        return None


def _is_multicast(packed: bytes) -> bool:
    if packed[:12] == _V4MAPPED:
        return 224 <= packed[12] <= 239
    return packed[0] == 0xFF


def format_address(sockaddr: tuple[Any, ...]) -> str:
    """``host:port`` for IPv4 (also v4-mapped), ``[host]:port`` for IPv6."""
    host, port = str(sockaddr[0]), int(sockaddr[1])
    if ":" not in host:
        return f"{host}:{port}"
    packed = _packed(host)
    if packed is not None and packed[:12] == _V4MAPPED:
        return f"{socket.inet_ntop(socket.AF_INET, packed[12:])}:{port}"
    return f"[{host}]:{port}"


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
        except RegistryError as exc:
            log.warning("could not write %d bootstrap status updates (will retry): %s", len(batch), exc)
            self._pending[:0] = batch
            return False
        return True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.flush()


class _TargetCache:
    """Bootstrap targets and their encoded write plans, valid while no other connection has
    committed to the registry (``PRAGMA data_version``). Only config and revision are used
    from cached records; status is written, never read, by the server."""

    MAX_ENTRIES = 10_000

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._version: int | None = None
        self._targets: dict[str, BootstrapTarget | None] = {}
        self._plans: dict[tuple[str, int, int], list[Operation]] = {}

    def _check(self) -> None:
        version = self._registry.data_version()
        if version != self._version or len(self._targets) > self.MAX_ENTRIES:
            self._version = version
            self._targets.clear()
            self._plans.clear()

    def target(self, name: str) -> BootstrapTarget | None:
        self._check()
        try:
            return self._targets[name]
        except KeyError:
            target = self._targets[name] = self._registry.bootstrap_target(name)
            return target

    def plan(self, target: BootstrapTarget, content_format: int) -> list[Operation]:
        key = (target.record.config.name, target.revision, content_format)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = plan_bootstrap(target.record.config, content_format)
        return plan


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
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    ) -> None:
        if exchange_timeout <= 0:
            raise ValueError("exchange_timeout must be positive")
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
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
        self._cache: _TargetCache | None = None
        self._ctx: Any = None
        self._tman: Any = None
        self._port: int | None = None
        self._active: dict[str, _Exchange] = {}
        self._last_finish: dict[str, tuple[float, int]] = {}
        self._prune_at = 4096
        self._promotions: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.max_concurrent = max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)

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
        if self.requested_port != 0:
            _ensure_port_free(self.bind, self.requested_port)
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
        self._cache = _TargetCache(registry)
        self._ctx = ctx
        sock = _server_socket(ctx)
        self._port = int(sock.getsockname()[1])
        _enlarge_receive_buffer(sock, RECEIVE_BUFFER)
        _guard_decoding(ctx)
        interfaces = list(getattr(ctx, "request_interfaces", ()))
        if _Pipe is not None and len(interfaces) == 1 and isinstance(interfaces[0], _RequestInterface):
            self._tman = interfaces[0]
        log.info("LwM2M bootstrap server listening on %s port %d (udp)", self.bind, self._port)

    async def stop(self) -> None:
        """Stop serving: in-flight exchanges are cancelled (and recorded as failed), pending
        status updates written, the socket closed."""
        if self._ctx is None:
            return
        ctx, self._ctx = self._ctx, None
        self._tman = None
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
            self._cache = None
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
        assert self._cache is not None
        endpoint = req.endpoint
        try:
            target = self._cache.target(endpoint)
        except RegistryError as exc:
            log.warning("bootstrap of %r from %s: registry unavailable: %s", endpoint[:64], client, exc)
            raise ServiceUnavailable("registry unavailable") from None
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
        plan = self._cache.plan(target, fmt)
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
            remote=_sending_remote(remote),
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
            async with self._slots, asyncio.timeout(self.exchange_timeout):
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
        response = await self._request(message, blockwise=len(op.payload) > 512)
        if not response.code.is_successful():
            detail = _diagnostic(response.payload)
            raise ClientRejected(
                f"{op.describe()} answered {_code_text(response.code)}" + (f": {detail}" if detail else "")
            )

    def _request(self, message: Any, blockwise: bool) -> asyncio.Future[Any]:
        """Send a request from the server context; the future gets the response.

        Small requests go straight to the context's request interface (the UDP token manager)
        through a :class:`aiocoap.pipe.Pipe` whose first event resolves a future of our own:
        ``Context.request`` would add a task, a remote lookup and a generator-driven
        ``Request`` per message (a noticeable part of the server's CPU per bootstrap), and
        cancelling the future it returns races with a response arriving in the same loop
        iteration (aiocoap then sets a result on a cancelled future inside its receive path).
        Here a cancelled waiter just leaves the late event unused."""
        loop = asyncio.get_running_loop()
        tman = self._tman
        if blockwise or tman is None:
            future: asyncio.Future[Any] = loop.create_future()
            inner = self._ctx.request(message, handle_blockwise=blockwise).response

            def transfer(done: asyncio.Future[Any]) -> None:
                if future.done():
                    if not done.cancelled():
                        done.exception()  # retrieved: nobody waits for it any more
                elif done.cancelled():
                    future.cancel()
                elif done.exception() is not None:
                    future.set_exception(done.exception())  # type: ignore[arg-type]
                else:
                    future.set_result(done.result())

            inner.add_done_callback(transfer)
            return future

        future = loop.create_future()
        pipe = _Pipe(message, self._ctx.log)

        def on_event(event: Any) -> bool:
            if not future.done():
                if event.message is not None:
                    future.set_result(event.message)
                else:
                    future.set_exception(event.exception or aiocoap.error.LibraryShutdown())
            return False  # one response is all we want; this ends the request's interest

        pipe.on_event(on_event)
        tman.request(pipe)
        return future

    def _finished(self, ex: _Exchange) -> None:
        now_wall = time.time()
        now = time.monotonic()
        if len(self._last_finish) >= self._prune_at:  # amortised: at most every doubling
            horizon = now - self.rebootstrap_window
            self._last_finish = {k: v for k, v in self._last_finish.items() if v[0] >= horizon}
            self._prune_at = max(4096, 2 * len(self._last_finish))
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
            "bootstrapped %s from %s with server %s in %.1f ms",
            ex.endpoint,
            ex.client,
            ex.server_uri,
            duration_ms,
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
        log.info(
            "%s: no new bootstrap within %g s of its last Finish, bootstrapped",
            endpoint,
            self.rebootstrap_window,
        )

    def _fail(self, ex: _Exchange, error: str) -> None:
        self._put(
            StatusUpdate(ex.endpoint, ex.revision, STATUS_FAILED, client_address=ex.client, error=error)
        )
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


def _server_socket(ctx: Any) -> socket.socket:
    for interface in getattr(ctx, "request_interfaces", ()):
        message_interface = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        transport = getattr(message_interface, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if isinstance(sock, socket.socket):
            return sock
    raise RuntimeError("could not find the socket of the bootstrap server")


def _guard_decoding(ctx: Any) -> None:
    """aiocoap turns most undecodable datagrams into a warning, but a string option (Uri-Path,
    Uri-Query) that is not UTF-8 raises UnicodeDecodeError out of its receive callback: the
    server keeps serving, yet every such datagram would log an ERROR with a traceback. Catch
    that on this context's UDP interface and log one line instead."""
    for interface in getattr(ctx, "request_interfaces", ()):
        message_interface = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        receive = getattr(message_interface, "datagram_msg_received", None)
        if message_interface is None or receive is None:
            continue

        def guarded(data: bytes, ancdata: Any, flags: int, address: Any, receive: Any = receive) -> None:
            try:
                receive(data, ancdata, flags, address)
            except UnicodeDecodeError:
                log.info("ignoring a datagram from %s: an option is not UTF-8", format_address(address))

        message_interface.datagram_msg_received = guarded


def _ensure_port_free(bind: str, port: int) -> None:
    """aiocoap binds with SO_REUSEPORT, so a second bootstrap server on the same port would
    start silently and share the clients with the first; probe with a plain socket first."""
    try:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # aiocoap reports unresolvable addresses
    family, _type, _proto, _name, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {bind} port {port}: {exc.strerror}") from None


def _enlarge_receive_buffer(sock: socket.socket, size: int) -> None:
    """Best effort (capped by net.core.rmem_max): many clients bootstrapping at once, e.g.
    after a power cut, arrive as a burst; the default buffer drops datagrams, each costing the
    client a retransmission timeout."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError as exc:
        log.debug("could not enlarge the receive buffer: %s", exc)


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
        await server.stop()
