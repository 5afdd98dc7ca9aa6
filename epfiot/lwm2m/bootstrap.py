"""What the bootstrap server does with requests while it runs: refuse, or accept a Bootstrap-Request and
run its exchange, then record the outcome (registry status, events, logs)."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import aiocoap
import aiocoap.error
from aiocoap.numbers.codes import Code

from epfiot.lwm2m import aiocoap_compat as compat
from epfiot.lwm2m import aiocoap_dtls as dtls
from epfiot.lwm2m import refusals
from epfiot.lwm2m.exchange import ClientRejected, Exchange, send_plan
from epfiot.lwm2m.protocol import (
    BadRequest,
    BootstrapRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ProtocolError,
    ServiceUnavailable,
    parse_bootstrap_query,
)
from epfiot.lwm2m.rebootstrap import FinishHistory, RebootstrapRule
from epfiot.lwm2m.refusals import RefusalCounter, Refusals
from epfiot.lwm2m.registry_access import StatusWriter, TargetCache
from epfiot.psk import KeyFileCache, PskCredential
from epfiot.registry import (
    STATUS_BOOTSTRAPPED,
    STATUS_BOOTSTRAPPING,
    STATUS_FAILED,
    BootstrapTarget,
    RegistryError,
    StatusUpdate,
)

log = logging.getLogger("epfiot.lwm2m.server")

Emit = Callable[..., None]
"""Emits an event: kind, then its fields as keyword arguments."""

EVENT_STARTED = "bootstrap.started"
EVENT_FINISHED = "bootstrap.finished"
EVENT_FAILED = "bootstrap.failed"
EVENT_REFUSED = "bootstrap.refused"

STOPPED_DURING_EXCHANGE = "the bootstrap server stopped during the exchange"


def refusal(exc: ProtocolError) -> aiocoap.Message:
    response = aiocoap.Message(code=Code(exc.code[0] * 32 + exc.code[1]))
    if isinstance(exc, BadRequest | MethodNotAllowed):
        response.payload = exc.reason.encode("utf-8")
    return response


class Bootstrapper:
    """Requests and exchanges of one run of the server. ``stopping`` turns new Bootstrap-Requests away
    (5.03) while the exchanges in progress go on."""

    def __init__(
        self,
        *,
        cache: TargetCache,
        writer: StatusWriter,
        requester: compat.Requester,
        rule: RebootstrapRule,
        exchange_timeout: float,
        max_concurrent: int,
        emit: Emit,
        keys: KeyFileCache | None = None,
        dtls_requester: compat.Requester | None = None,
        refusal_interval: float = refusals.DEFAULT_INTERVAL,
    ) -> None:
        self.cache = cache
        self._keys = keys
        self._dtls_requester = dtls_requester
        self._writer = writer
        self._requester = requester
        self._rule = rule
        self._exchange_timeout = exchange_timeout
        self._emit = emit
        self.stopping = False
        self.active: dict[str, Exchange] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._history = FinishHistory(rule)
        self._promotions: dict[str, asyncio.TimerHandle] = {}
        self._slots = asyncio.Semaphore(max_concurrent)
        self._refusals = RefusalCounter(self._report_refusals, refusal_interval)
        # requests aiocoap drops as duplicates are never handed over: weak keys let them go
        self._vetted: weakref.WeakKeyDictionary[aiocoap.Message, tuple[BootstrapRequest, BootstrapTarget]] = (
            weakref.WeakKeyDictionary()
        )

    async def close(self) -> None:
        """Cancel what still runs (recorded as failed) and report what is left to report."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for handle in self._promotions.values():
            handle.cancel()
        self._promotions.clear()
        self._refusals.close()

    # -- requests --------------------------------------------------------------------------------------

    def screen(self, request: aiocoap.Message, client: str) -> aiocoap.Message | None:
        """The refusal to answer at once, without aiocoap; None for a Bootstrap-Request to accept (what
        was found is kept with the request, for :meth:`vetted` when aiocoap hands it over)."""
        try:
            self._vetted[request] = self.check(request, client)
        except ProtocolError as exc:
            return refusal(exc)
        return None

    def vetted(self, request: aiocoap.Message, client: str) -> tuple[BootstrapRequest, BootstrapTarget]:
        """:meth:`check`, unless :meth:`screen` did it for this very request (a moment ago)."""
        found = self._vetted.pop(request, None)
        if found is None or self.stopping:
            return self.check(request, client)
        return found

    def check(self, request: aiocoap.Message, client: str) -> tuple[BootstrapRequest, BootstrapTarget]:
        """The Bootstrap-Request and its target, or the ProtocolError to answer (counted here)."""
        transport = "coaps" if dtls.is_dtls(request.remote) else "coap"

        def refuse(reason: str, endpoint: str | None = None, **extra: str | None) -> None:
            self._refusals.refused(reason, transport, endpoint, client, **extra)

        try:
            path = tuple(request.opt.uri_path)
            query = tuple(request.opt.uri_query)
        except (UnicodeDecodeError, ValueError) as exc:
            log.debug("malformed request from %s: %s", client, exc)
            refuse(refusals.BAD_REQUEST, detail="malformed options")
            raise BadRequest("malformed options") from None
        if path != ("bs",):
            refuse(refusals.NO_SUCH_RESOURCE, detail="/" + "/".join(path)[:64])
            raise NotFound("no such resource")
        if request.code != Code.POST:
            refuse(refusals.METHOD_NOT_ALLOWED, detail=str(request.code))
            raise MethodNotAllowed("only POST /bs is served")
        if self.stopping:
            raise ServiceUnavailable("the bootstrap server is stopping")
        try:
            req = parse_bootstrap_query(query)
        except BadRequest as exc:
            log.debug("bad bootstrap request from %s: %s", client, exc.reason)
            refuse(refusals.BAD_REQUEST, detail=exc.reason)
            raise
        try:
            target = self.cache.target(req.endpoint)
        except RegistryError as exc:
            refuse(refusals.REGISTRY_UNAVAILABLE, req.endpoint, detail=str(exc))
            raise ServiceUnavailable("registry unavailable") from None
        if target is None:
            refuse(refusals.UNKNOWN_ENDPOINT, req.endpoint)
            raise NotFound("unknown endpoint")
        owner = target.record.config.owner
        if (reason := self._identity_refusal(request.remote, req.endpoint)) is not None:
            refuse(reason, req.endpoint, owner=owner)
            secured = dtls.is_dtls(request.remote)
            raise Forbidden("authenticated as another thing" if secured else "this thing bootstraps over DTLS only")
        if target.record.config.server_uri is None:
            refuse(refusals.WAITING, req.endpoint, owner=owner)
            raise Forbidden("waiting for its server")
        return req, target

    def _identity_refusal(self, remote: Any, endpoint: str) -> str | None:
        """Over DTLS the handshake's identity decides which thing the client is; a thing that has
        bootstrap credentials bootstraps over DTLS only."""
        if dtls.is_dtls(remote):
            return None if dtls.authenticated_endpoint(remote) == endpoint else refusals.OTHER_IDENTITY
        keys = None if self._keys is None else self._keys.keys().get(endpoint)
        if keys is not None and keys.bootstrap is not None:
            return refusals.DTLS_ONLY
        return None

    def handshake_failed(self, client: str) -> None:
        """A DTLS handshake that did not complete (wrong key, unknown identity, a client gone silent)."""
        self._refusals.refused(refusals.HANDSHAKE_FAILED, "coaps", None, client)

    def _report_refusals(self, counted: Refusals) -> None:
        if counted.summary:
            endpoints = f"endpoints {', '.join(counted.endpoints)} " if counted.endpoints else ""
            log.warning(
                "%d more bootstrap requests refused over %s in %.0f s: %s (e.g. %sfrom %s)",
                counted.count,
                counted.transport,
                counted.seconds,
                counted.reason,
                endpoints,
                ", ".join(counted.clients),
            )
        else:
            endpoint = repr(counted.endpoints[0]) if counted.endpoints else "a request"
            log.warning(
                "bootstrap refused for %s from %s over %s: %s (more are counted, then summed up every %g s)",
                endpoint,
                counted.clients[0],
                counted.transport,
                counted.reason,
                self._refusals.interval,
            )
        self._emit(EVENT_REFUSED, **counted.fields())

    def accept(
        self, req: BootstrapRequest, target: BootstrapTarget, remote: Any, client: str
    ) -> Callable[[], None]:
        """Prepare the exchange of an accepted Bootstrap-Request; returns the function that starts it
        (after the 2.04 is sent)."""
        config = target.record.config
        endpoint = req.endpoint
        assert config.server_uri is not None
        if req.preferred_format is not None and req.preferred_format != req.content_format:
            log.info("%s asked for content format %d, writing TLV", endpoint, req.preferred_format)
        now = time.monotonic()

        previous = self.active.pop(endpoint, None)
        if previous is not None:
            previous.superseded = True
            if previous.task is not None:
                previous.task.cancel()
            self._fail(previous, "the client started a new bootstrap before this one finished")
        promotion = self._promotions.pop(endpoint, None)
        if promotion is not None:
            promotion.cancel()

        exchange = Exchange(
            endpoint=endpoint,
            owner=config.owner,
            revision=target.revision,
            remote=compat.sending_remote(remote),
            client=client,
            server_uri=config.server_uri,
            content_format=req.content_format,
            plan=self.cache.plan(target, req.content_format, self._server_psk(endpoint)),
            loop_error=self._history.loop_error(endpoint, target.revision, now),
            started=now,
        )
        self.active[endpoint] = exchange
        if exchange.loop_error is not None:
            self._fail(exchange, exchange.loop_error)
        else:
            self._put(StatusUpdate(endpoint, exchange.revision, STATUS_BOOTSTRAPPING, client_address=client))
        self._emit(
            EVENT_STARTED,
            endpoint=endpoint,
            owner=config.owner,
            client=client,
            content_format=exchange.format_name,
        )
        log.debug("bootstrap of %s from %s accepted", endpoint, client)

        def start() -> None:
            task = asyncio.get_running_loop().create_task(self._run(exchange), name=f"bootstrap {endpoint}")
            exchange.task = task
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        return start

    # -- the exchange and its outcome ------------------------------------------------------------------

    def _server_psk(self, endpoint: str) -> PskCredential | None:
        keys = None if self._keys is None else self._keys.keys().get(endpoint)
        return None if keys is None else keys.server

    def _send(self, message: aiocoap.Message, blockwise: bool) -> asyncio.Future[aiocoap.Message]:
        if self._dtls_requester is not None and dtls.is_dtls(message.remote):
            return self._dtls_requester.request(message, blockwise=blockwise)
        return self._requester.request(message, blockwise=blockwise)

    async def _run(self, ex: Exchange) -> None:
        try:
            async with self._slots, asyncio.timeout(self._exchange_timeout):
                await send_plan(ex, self._send)
        except TimeoutError:
            self._fail(ex, f"no answer to {ex.doing()} within {self._exchange_timeout:g} s")
        except ClientRejected as exc:
            self._fail(ex, str(exc))
        except aiocoap.error.Error as exc:
            self._fail(ex, f"{ex.doing()} failed: {type(exc).__name__} {exc}".strip())
        except asyncio.CancelledError:
            if not ex.superseded:
                self._fail(ex, STOPPED_DURING_EXCHANGE)
            raise
        except Exception as exc:  # a bug: record it, never let it take the server down
            log.exception("bootstrap of %s: unexpected error", ex.endpoint)
            self._fail(ex, f"internal error: {type(exc).__name__}")
        else:
            self._finished(ex)
        finally:
            if self.active.get(ex.endpoint) is ex:
                del self.active[ex.endpoint]

    def _finished(self, ex: Exchange) -> None:
        now_wall, now = time.time(), time.monotonic()
        self._history.finished(ex.endpoint, ex.revision, now)
        duration_ms = round((now - ex.started) * 1000, 2)
        # A bootstrap that made a loop stays failed until a Finish stands for the whole window.
        self._put(
            StatusUpdate(
                ex.endpoint,
                ex.revision,
                STATUS_BOOTSTRAPPED if ex.loop_error is None else STATUS_FAILED,
                at=now_wall,
                client_address=ex.client,
                written_server_uri=ex.server_uri,
                bootstrapped_at=now_wall,
                error=ex.loop_error,
            )
        )
        if ex.loop_error is not None:
            self._promotions[ex.endpoint] = asyncio.get_running_loop().call_later(
                self._rule.window, self._promote, ex.endpoint, ex.revision, ex.client, now
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
            content_format=ex.format_name,
        )

    def _promote(self, endpoint: str, revision: int, client: str, finished: float) -> None:
        self._promotions.pop(endpoint, None)
        if self._history.last(endpoint) != (revision, finished) or endpoint in self.active:
            return
        self._put(StatusUpdate(endpoint, revision, STATUS_BOOTSTRAPPED, client_address=client))
        log.info(
            "%s: no new bootstrap within %g s of its last Finish, bootstrapped", endpoint, self._rule.window
        )

    def _fail(self, ex: Exchange, error: str) -> None:
        self._put(
            StatusUpdate(ex.endpoint, ex.revision, STATUS_FAILED, client_address=ex.client, error=error)
        )
        log.warning("bootstrap of %s from %s failed: %s", ex.endpoint, ex.client, error)
        self._emit(EVENT_FAILED, endpoint=ex.endpoint, owner=ex.owner, client=ex.client, error=error)

    def _put(self, update: StatusUpdate) -> None:
        self._writer.put(update)
