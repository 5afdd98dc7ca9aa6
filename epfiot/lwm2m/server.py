"""The LwM2M bootstrap server (client-initiated bootstrap over CoAP/UDP, aiocoap).

Exchange, per the LwM2M bootstrap interface (1.0 and 1.1):

1. the client sends ``POST /bs?ep=<endpoint>[&pct=110]``; the server looks the endpoint up in the
   registry and answers 2.04 Changed (4.04 for an unknown endpoint, 4.03 for a thing that is waiting for
   its server, 4.00 for a malformed request, 4.05 for another method, 5.03 while it is stopping);
2. only after that answer is on the wire, the server sends, from the same socket to the client's
   address, the write plan of :mod:`epfiot.lwm2m.protocol` (:mod:`epfiot.lwm2m.exchange`);
3. the outcome goes to the registry: bootstrapped (time, client address, server URI written), or failed
   (an error response, no answer within the exchange timeout, or a re-bootstrap loop:
   :mod:`epfiot.lwm2m.rebootstrap`).

Refusals are answered at once, before aiocoap keeps any state for them (a flood of refused requests
costs no memory); everything that relies on aiocoap's internals is in :mod:`epfiot.lwm2m.aiocoap_compat`.
Status updates are written in small batches (:mod:`epfiot.lwm2m.registry_access`). At start-up, things a
stopped server left in ``bootstrapping`` become ``timeout``; on stop, the exchanges in progress may
finish (up to ``stop_timeout``) while new Bootstrap-Requests get 5.03.

CoAP over DTLS (``dtls_port``): a second aiocoap context (tinydtls_server) serves the same site; the PSK
identity of a client's handshake names the thing it is (:mod:`epfiot.lwm2m.bootstrap` refuses any other
endpoint), keys come from the registry's key file (:mod:`epfiot.psk`), read again when it changes.

Binding: the socket is an IPv6 UDP socket with IPV6_V6ONLY off, so binding ``"::"`` also accepts IPv4
(as v4-mapped addresses) where the OS allows dual-stack sockets; an IPv4 literal binds to that IPv4
address only.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiocoap

from epfiot.lwm2m import aiocoap_compat as compat
from epfiot.lwm2m.bootstrap import STOPPED_DURING_EXCHANGE, Bootstrapper, refusal
from epfiot.lwm2m.protocol import ProtocolError
from epfiot.lwm2m.rebootstrap import DEFAULT_COUNT, DEFAULT_WINDOW, RebootstrapRule
from epfiot.lwm2m.registry_access import StatusWriter, TargetCache
from epfiot.psk import KeyFileCache, key_file_path
from epfiot.registry import Registry, RegistryError
from epfiot.wording import counted

log = logging.getLogger("epfiot.lwm2m.server")

DEFAULT_PORT = 5683
DEFAULT_DTLS_PORT = 5684
DEFAULT_EXCHANGE_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0
DEFAULT_REBOOTSTRAP_COUNT = DEFAULT_COUNT
DEFAULT_REBOOTSTRAP_WINDOW = DEFAULT_WINDOW
DEFAULT_FLUSH_INTERVAL = 0.01
RECEIVE_BUFFER = 1 << 20
DEFAULT_MAX_CONCURRENT = 16

EventCallback = Callable[[str, dict[str, object]], None]

EVENT_TIMEOUT = "bootstrap.timeout"  # the others come from the exchanges: epfiot.lwm2m.bootstrap


class _Site:
    """aiocoap server site: every request aiocoap hands over goes through :meth:`render_to_pipe`, so the
    server decides what is answered and can start the exchange only after its answer."""

    def __init__(self, bootstrapper: Bootstrapper) -> None:
        self._bootstrapper = bootstrapper

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        client = compat.client_address(request.remote)
        start: Callable[[], None] | None = None
        try:
            bs_request, target = self._bootstrapper.vetted(request, client)
            start = self._bootstrapper.accept(bs_request, target, request.remote, client)
            response = aiocoap.Message(code=aiocoap.CHANGED)
        except ProtocolError as exc:
            response = refusal(exc)
        # The 2.04 goes on the wire synchronously here (piggybacked on the ACK); the exchange task only
        # runs after this coroutine returned.
        pipe.add_response(response, is_last=True)
        if start is not None:
            start()


class BootstrapServer:
    """The bootstrap server: ``await start()``, then ``await stop()`` (or ``async with``).

    ``port`` 0 binds an ephemeral port; :attr:`port` is the bound one after start(). A thing is failed
    for a re-bootstrap loop when it bootstraps ``rebootstrap_count`` times within ``rebootstrap_window``
    seconds (0 turns that off); stop() lets the exchanges in progress finish for up to ``stop_timeout``
    seconds.
    """

    def __init__(
        self,
        registry_path: Path,
        bind: str = "::",
        port: int = DEFAULT_PORT,
        *,
        on_event: EventCallback | None = None,
        exchange_timeout: float = DEFAULT_EXCHANGE_TIMEOUT,
        rebootstrap_count: int = DEFAULT_REBOOTSTRAP_COUNT,
        rebootstrap_window: float = DEFAULT_REBOOTSTRAP_WINDOW,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        dtls_port: int | None = None,
        dtls_bind: str | None = None,
    ) -> None:
        if exchange_timeout <= 0:
            raise ValueError("exchange_timeout must be positive")
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if not stop_timeout >= 0:
            raise ValueError("stop_timeout must not be negative")
        self.registry_path = Path(registry_path)
        self.bind = bind
        self.requested_port = port
        self.exchange_timeout = exchange_timeout
        self.rebootstrap = RebootstrapRule(rebootstrap_count, rebootstrap_window)
        self.stop_timeout = stop_timeout
        self.max_concurrent = max_concurrent
        self._flush_interval = flush_interval
        self._on_event = on_event
        self._registry: Registry | None = None
        self._writer: StatusWriter | None = None
        self._bootstrapper: Bootstrapper | None = None
        self._ctx: Any = None
        self.requested_dtls_port = dtls_port
        self.dtls_bind = bind if dtls_bind is None else dtls_bind
        self._dtls_ctx: Any = None
        self._dtls_port: int | None = None
        self._port: int | None = None
        self._closed: asyncio.Event | None = None
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("bootstrap server not started")
        return self._port

    @property
    def dtls_port(self) -> int:
        """The bound CoAP-over-DTLS port (``coaps``), after start() with a ``dtls_port``."""
        if self._dtls_port is None:
            raise RuntimeError("bootstrap server not listening on DTLS")
        return self._dtls_port

    @property
    def running(self) -> bool:
        return self._ctx is not None

    @property
    def in_progress(self) -> int:
        """How many exchanges are running."""
        return 0 if self._bootstrapper is None else len(self._bootstrapper.active)

    async def start(self) -> None:
        if self._ctx is not None:
            raise RuntimeError("bootstrap server already started")
        if self.requested_port != 0:
            compat.ensure_port_free(self.bind, self.requested_port)
        keys = KeyFileCache(key_file_path(self.registry_path))
        keys.keys()  # a key file that cannot be used stops the start, with its reason
        started = time.time()
        registry = Registry(self.registry_path, busy_timeout=0.1)
        try:
            self._expire_orphans(registry, started - self.exchange_timeout)
            ctx = await aiocoap.Context.create_server_context(
                None,
                bind=(self.bind, self.requested_port),
                loggername="epfiot.lwm2m.coap",
                transports=["udp6"],
            )
        except BaseException:
            registry.close()
            raise
        try:
            dtls_ctx = await self._start_dtls(keys) if self.requested_dtls_port is not None else None
        except BaseException:
            await ctx.shutdown()
            registry.close()
            raise
        endpoint = compat.udp_endpoint(ctx)
        if endpoint is not None:
            self._port = int(endpoint.sock.getsockname()[1])
            _enlarge_receive_buffer(endpoint.sock, RECEIVE_BUFFER)
            compat.guard_decoding(endpoint)
        elif self.requested_port != 0:
            log.warning(
                "aiocoap %s is not laid out as %s was: serving without the workarounds for it",
                importlib.metadata.version("aiocoap"),
                compat.CHECKED_VERSION,
            )
            self._port = self.requested_port
        else:
            if dtls_ctx is not None:
                await dtls_ctx.shutdown()
            await ctx.shutdown()
            registry.close()
            raise RuntimeError(
                "cannot find the port the bootstrap server was bound to (an aiocoap it does not know)"
            )
        self._registry = registry
        self._writer = StatusWriter(registry, self._flush_interval)
        self._bootstrapper = Bootstrapper(
            keys=keys,
            dtls_requester=None if dtls_ctx is None else compat.dtls_requester(dtls_ctx),
            cache=TargetCache(registry),
            writer=self._writer,
            requester=compat.Requester(ctx, endpoint),
            rule=self.rebootstrap,
            exchange_timeout=self.exchange_timeout,
            max_concurrent=self.max_concurrent,
            emit=self._emit,
        )
        # Set once the server can answer (aiocoap documents this for sites that need the context).
        ctx.serversite = _Site(self._bootstrapper)
        if dtls_ctx is not None:
            dtls_ctx.serversite = ctx.serversite
        if endpoint is not None:
            compat.screen_requests(endpoint, self._bootstrapper.screen)
        self._ctx = ctx
        self._closed = asyncio.Event()
        # Things in bootstrapping since before the start, whose exchange was still young then: had its
        # process lived, their exchange timeout would end within one timeout from now.
        self._sweep = asyncio.get_running_loop().call_later(
            self.exchange_timeout, self._sweep_orphans, started
        )
        log.info("LwM2M bootstrap server listening on %s port %d (udp)", self.bind, self._port)

    async def _start_dtls(self, keys: KeyFileCache) -> Any:
        assert self.requested_dtls_port is not None
        compat.claims_follow_the_latest_handshake()
        # aiocoap's DTLS server binds one address: "::" there would not accept IPv4 clients as udp6 does
        ctx = await aiocoap.Context.create_server_context(
            None,
            bind=compat.dtls_bind(self.dtls_bind, self.requested_dtls_port),
            loggername="epfiot.lwm2m.coaps",
            transports=["tinydtls_server"],
            server_credentials=compat.dtls_credentials(keys.bootstrap_key),
        )
        address = compat.dtls_udp_address(ctx)
        self._dtls_port = int(address[1]) if address is not None else self.requested_dtls_port
        self._dtls_ctx = ctx
        log.info("LwM2M bootstrap server listening on %s port %d (coaps)", self.dtls_bind, self._dtls_port)
        return ctx

    async def stop(self) -> None:
        """Stop serving: new Bootstrap-Requests are answered 5.03 Service Unavailable, the exchanges in
        progress get up to ``stop_timeout`` seconds to finish (the rest are cancelled and recorded as
        failed), pending status updates are written, the socket closed. Cancelling stop() (a second
        signal) cancels the exchanges at once."""
        if self._ctx is None or self._bootstrapper is None:
            return
        if self._bootstrapper.stopping:
            assert self._closed is not None
            await self._closed.wait()
            return
        self._bootstrapper.stopping = True
        try:
            await self._drain(self._bootstrapper)
        finally:
            await self._close(self._bootstrapper)

    async def _drain(self, bootstrapper: Bootstrapper) -> None:
        deadline = time.monotonic() + self.stop_timeout
        if running := [t for t in bootstrapper.tasks if not t.done()]:
            log.warning(
                "stopping: waiting up to %g s for %s in progress",
                self.stop_timeout,
                counted(len(running), "bootstrap"),
            )
        while running:  # again: an exchange accepted just before stopping may start after the first look
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("stopping: cancelling %s still in progress", counted(len(running), "bootstrap"))
                return
            await asyncio.wait(running, timeout=remaining)
            running = [t for t in bootstrapper.tasks if not t.done()]

    async def _close(self, bootstrapper: Bootstrapper) -> None:
        await bootstrapper.close()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        ctx, self._ctx = self._ctx, None
        dtls_ctx, self._dtls_ctx = self._dtls_ctx, None
        try:
            if dtls_ctx is not None:
                await dtls_ctx.shutdown()
            await ctx.shutdown()
        finally:
            if self._writer is not None:
                self._writer.close()
            if self._registry is not None:
                self._registry.close()
            self._writer = self._registry = self._bootstrapper = None
            assert self._closed is not None
            self._closed.set()
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

    def _sweep_orphans(self, started: float) -> None:
        self._sweep = None
        if self._registry is not None:
            self._expire_orphans(self._registry, started)

    def _expire_orphans(self, registry: Registry, updated_before: float) -> None:
        """Things left in ``bootstrapping`` by a bootstrap server that stopped without recording an
        outcome (killed, crashed) become ``timeout``: nothing else would ever end their exchange."""
        error = f"{STOPPED_DURING_EXCHANGE} and recorded no outcome"
        try:
            expired = registry.expire_bootstrapping(updated_before, error)
        except RegistryError as exc:
            log.warning("could not expire bootstrap exchanges left by a stopped server: %s", exc)
            return
        for record in expired:
            name, client = record.config.name, record.client_address or "?"
            log.warning("bootstrap of %s from %s: %s", name, client, error)
            self._emit(EVENT_TIMEOUT, endpoint=name, owner=record.config.owner, client=client, error=error)

    def _emit(self, kind: str, **fields: object) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, dict(fields))
        except Exception:
            log.exception("event callback failed for %s", kind)


def _enlarge_receive_buffer(sock: socket.socket, size: int) -> None:
    """Best effort (capped by net.core.rmem_max): many clients bootstrapping at once, e.g. after a power
    cut, arrive as a burst; the default buffer drops datagrams, each costing the client a retransmission
    timeout."""
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
    rebootstrap_count: int = DEFAULT_REBOOTSTRAP_COUNT,
    rebootstrap_window: float = DEFAULT_REBOOTSTRAP_WINDOW,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ready: Callable[[BootstrapServer], None] | None = None,
    dtls_port: int | None = None,
    dtls_bind: str | None = None,
) -> None:
    """Serve bootstrap requests until cancelled, then stop as :meth:`BootstrapServer.stop` does (letting
    the exchanges in progress finish). ``ready`` is called once the socket is bound (e.g. to print the
    port when ``port`` is 0). ``dtls_port`` (5684 is ``DEFAULT_DTLS_PORT``) also serves CoAP over DTLS, on
    ``dtls_bind`` (default ``bind``; it must be one address)."""
    server = BootstrapServer(
        registry_path,
        bind,
        port,
        on_event=on_event,
        exchange_timeout=exchange_timeout,
        rebootstrap_count=rebootstrap_count,
        rebootstrap_window=rebootstrap_window,
        stop_timeout=stop_timeout,
        dtls_port=dtls_port,
        dtls_bind=dtls_bind,
    )
    await server.start()
    try:
        if ready is not None:
            ready(server)
        await asyncio.Event().wait()
    finally:
        await server.stop()
