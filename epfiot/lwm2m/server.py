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
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiocoap

from epfiot.lwm2m import aiocoap_compat as compat
from epfiot.lwm2m import aiocoap_dtls as dtls
from epfiot.lwm2m import refusals
from epfiot.lwm2m.bootstrap import STOPPED_DURING_EXCHANGE, Bootstrapper, refusal
from epfiot.lwm2m.listeners import Listener, open_dtls, open_plain
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
DEFAULT_MAX_CONCURRENT = 16
DEFAULT_REFUSAL_INTERVAL = refusals.DEFAULT_INTERVAL
DEFAULT_HANDSHAKE_TIMEOUT = 30.0  # a DTLS handshake not completed by then has failed
DEFAULT_MAX_DTLS_SESSIONS = 1024  # about 5 KiB each (bench_flood); sessions end when their client closes them

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

    ``port`` 0 binds an ephemeral port, None none (CoAP over DTLS only); :attr:`port` is the bound one
    after start(). A thing is failed
    for a re-bootstrap loop when it bootstraps ``rebootstrap_count`` times within ``rebootstrap_window``
    seconds (0 turns that off); stop() lets the exchanges in progress finish for up to ``stop_timeout``
    seconds.
    """

    def __init__(
        self,
        registry_path: Path,
        bind: str = "::",
        port: int | None = DEFAULT_PORT,
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
        refusal_interval: float = DEFAULT_REFUSAL_INTERVAL,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_dtls_sessions: int = DEFAULT_MAX_DTLS_SESSIONS,
    ) -> None:
        if port is None and dtls_port is None:
            raise ValueError("the bootstrap server needs plain CoAP or CoAP over DTLS to listen on")
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
        self._listeners: list[Listener] = []
        self._end_dtls_sessions: Callable[[], None] | None = None
        self.requested_dtls_port = dtls_port
        self.dtls_bind = bind if dtls_bind is None else dtls_bind
        self.refusal_interval = refusal_interval
        self.handshake_timeout = handshake_timeout
        self.max_dtls_sessions = max_dtls_sessions
        self._dtls_port: int | None = None
        self._port: int | None = None
        self._closed: asyncio.Event | None = None
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def port(self) -> int:
        """The bound plain CoAP port, after start() with a ``port`` (None: only CoAP over DTLS)."""
        if self._port is None:
            raise RuntimeError("bootstrap server not listening on plain CoAP")
        return self._port

    @property
    def dtls_port(self) -> int:
        """The bound CoAP-over-DTLS port (``coaps``), after start() with a ``dtls_port``."""
        if self._dtls_port is None:
            raise RuntimeError("bootstrap server not listening on DTLS")
        return self._dtls_port

    @property
    def running(self) -> bool:
        return bool(self._listeners)

    @property
    def in_progress(self) -> int:
        """How many exchanges are running."""
        return 0 if self._bootstrapper is None else len(self._bootstrapper.active)

    async def start(self) -> None:
        if self._bootstrapper is not None:
            raise RuntimeError("bootstrap server already started")
        keys = KeyFileCache(key_file_path(self.registry_path))
        keys.keys()  # a key file that cannot be used stops the start, with its reason
        started = time.time()
        registry = Registry(self.registry_path, busy_timeout=0.1)
        opened: list[Listener] = []
        try:
            self._expire_orphans(registry, started - self.exchange_timeout)
            plain = None if self.requested_port is None else await open_plain(self.bind, self.requested_port)
            opened += [plain] if plain is not None else []
            secured = None
            if self.requested_dtls_port is not None:
                secured = await open_dtls(self.dtls_bind, self.requested_dtls_port, keys)
                opened.append(secured)
        except BaseException:
            for listener in opened:
                await listener.ctx.shutdown()
            registry.close()
            raise
        self._registry = registry
        self._writer = StatusWriter(registry, self._flush_interval)
        dtls_requester = None if secured is None else dtls.dtls_requester(secured.ctx)
        requester = compat.Requester(plain.ctx, plain.endpoint) if plain is not None else dtls_requester
        assert requester is not None
        self._bootstrapper = Bootstrapper(
            keys=keys,
            dtls_requester=dtls_requester,
            cache=TargetCache(registry),
            writer=self._writer,
            requester=requester,
            rule=self.rebootstrap,
            exchange_timeout=self.exchange_timeout,
            max_concurrent=self.max_concurrent,
            emit=self._emit,
            refusal_interval=self.refusal_interval,
        )
        # Set once the server can answer (aiocoap documents this for sites that need the context).
        site = _Site(self._bootstrapper)
        for listener in opened:
            listener.ctx.serversite = site
        if plain is not None and plain.endpoint is not None:
            compat.screen_requests(plain.endpoint, self._bootstrapper.screen)
        if secured is not None:
            self._end_dtls_sessions = dtls.guard_dtls_sessions(
                secured.ctx,
                self._bootstrapper.handshake_failed,
                handshake_timeout=self.handshake_timeout,
                max_sessions=self.max_dtls_sessions,
            )
        self._listeners = opened
        self._port = None if plain is None else plain.port
        self._dtls_port = None if secured is None else secured.port
        self._closed = asyncio.Event()
        # Things in bootstrapping since before the start, whose exchange was still young then: had its
        # process lived, their exchange timeout would end within one timeout from now.
        self._sweep = asyncio.get_running_loop().call_later(
            self.exchange_timeout, self._sweep_orphans, started
        )
        if plain is not None:
            log.info("LwM2M bootstrap server listening on %s port %d (udp)", self.bind, plain.port)
        if secured is not None:
            log.info("LwM2M bootstrap server listening on %s port %d (coaps)", self.dtls_bind, secured.port)

    async def stop(self) -> None:
        """Stop serving: new Bootstrap-Requests are answered 5.03 Service Unavailable, the exchanges in
        progress get up to ``stop_timeout`` seconds to finish (the rest are cancelled and recorded as
        failed), pending status updates are written, the socket closed. Cancelling stop() (a second
        signal) cancels the exchanges at once."""
        if self._bootstrapper is None:
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
        listeners, self._listeners = self._listeners, []
        if self._end_dtls_sessions is not None:
            self._end_dtls_sessions()
            self._end_dtls_sessions = None
        try:
            for listener in reversed(listeners):
                await listener.ctx.shutdown()
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


async def run_bootstrap_server(
    registry_path: Path,
    bind: str = "::",
    port: int | None = DEFAULT_PORT,
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
    port when ``port`` is 0; None: no plain CoAP). ``dtls_port`` (5684 is ``DEFAULT_DTLS_PORT``) also serves CoAP over DTLS, on
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
