"""The sockets the bootstrap server listens on: plain CoAP (udp6) and CoAP over DTLS (tinydtls_server),
each an aiocoap server context with the workarounds of :mod:`epfiot.lwm2m.aiocoap_compat` and
:mod:`epfiot.lwm2m.aiocoap_dtls`. Either may be off (``epfiot serve --no-coap``, ``--no-dtls``).

An address or port that cannot be bound is a :class:`ListenError`, one line naming the listener, the
address and the port."""

from __future__ import annotations

import errno
import importlib.metadata
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import aiocoap

from epfiot.errors import EpfiotError
from epfiot.lwm2m import aiocoap_compat as compat
from epfiot.lwm2m import aiocoap_dtls as dtls
from epfiot.psk import KeyFileCache

log = logging.getLogger("epfiot.lwm2m.server")

RECEIVE_BUFFER = 1 << 20


class ListenError(EpfiotError, OSError):
    """The bootstrap server cannot listen where it was told to (an OSError, for callers that catch those)."""


@dataclass
class Listener:
    ctx: Any  # aiocoap.Context
    port: int
    endpoint: compat.UdpEndpoint | None = None  # plain CoAP, when aiocoap is laid out as checked


def _cannot(what: str, host: str, port: int, error: OSError) -> ListenError:
    reason = os.strerror(error.errno) if error.errno and not isinstance(error, socket.gaierror) else str(error)
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        reason += f" ({host} is not an address of this host)"
    return ListenError(f"cannot listen for {what} on {host} port {port}: {reason}")


def _ensure_port_free(what: str, host: str, port: int) -> None:
    try:
        compat.ensure_port_free(host, port)
    except OSError as error:
        raise _cannot(what, host, port, error) from None


async def open_plain(host: str, port: int) -> Listener:
    if port != 0:
        _ensure_port_free("CoAP", host, port)
    try:
        ctx = await aiocoap.Context.create_server_context(
            None, bind=(host, port), loggername="epfiot.lwm2m.coap", transports=["udp6"]
        )
    except OSError as error:
        raise _cannot("CoAP", host, port, error) from None
    endpoint = compat.udp_endpoint(ctx)
    if endpoint is not None:
        _enlarge_receive_buffer(endpoint.sock, RECEIVE_BUFFER)
        compat.guard_decoding(endpoint)
        return Listener(ctx, int(endpoint.sock.getsockname()[1]), endpoint)
    if port == 0:
        await ctx.shutdown()
        raise RuntimeError("cannot find the port the bootstrap server was bound to (an aiocoap it does not know)")
    log.warning(
        "aiocoap %s is not laid out as %s was: serving without the workarounds for it",
        importlib.metadata.version("aiocoap"),
        compat.CHECKED_VERSION,
    )
    return Listener(ctx, port)


async def open_dtls(host: str, port: int, keys: KeyFileCache) -> Listener:
    dtls.claims_follow_the_latest_handshake()
    # aiocoap's DTLS server binds one address: "::" there would not accept IPv4 clients as udp6 does
    try:
        bind = dtls.dtls_bind(host, port)
    except ValueError as error:
        raise ListenError(f"--dtls-bind {host or '(none)'}: {error}") from None
    if port != 0:
        _ensure_port_free("CoAP over DTLS", host, port)  # aiocoap binds with SO_REUSEPORT here too
    try:
        ctx = await aiocoap.Context.create_server_context(
            None,
            bind=bind,
            loggername="epfiot.lwm2m.coaps",
            transports=["tinydtls_server"],
            server_credentials=dtls.dtls_credentials(keys.bootstrap_key),
        )
    except OSError as error:
        raise _cannot("CoAP over DTLS", host, port, error) from None
    address = dtls.dtls_udp_address(ctx)
    return Listener(ctx, int(address[1]) if address is not None else port)


def _enlarge_receive_buffer(sock: socket.socket, size: int) -> None:
    """Best effort (capped by net.core.rmem_max): many clients bootstrapping at once, e.g. after a power
    cut, arrive as a burst; the default buffer drops datagrams, each costing the client a retransmission
    timeout."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError as exc:
        log.debug("could not enlarge the receive buffer: %s", exc)
