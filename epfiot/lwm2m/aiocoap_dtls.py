"""Where CoAP over DTLS relies on aiocoap beyond its stable API: its tinydtls_server transport (with
DTLSSocket), checked against aiocoap :data:`epfiot.lwm2m.aiocoap_compat.CHECKED_VERSION` as the rest of
:mod:`epfiot.lwm2m.aiocoap_compat` is."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiocoap
import aiocoap.error

from epfiot.lwm2m.aiocoap_compat import Requester, format_address

log = logging.getLogger("epfiot.lwm2m.server")


def dtls_bind(host: str, port: int) -> tuple[str, int]:
    """The ``bind`` that makes a tinydtls_server context listen on ``port`` (0: an ephemeral one): aiocoap
    0.4.17 adds the difference between the CoAPS and CoAP default ports (1) to the port it is given, so
    5683 binds 5684 and 0 binds 1. That transport refuses the any-address ("::", "0.0.0.0"): it could
    not tell which of the host's addresses a client reached."""
    if host in ("::", "0.0.0.0", ""):
        raise ValueError(
            "CoAP over DTLS listens on one address (aiocoap's DTLS server cannot bind the any-address)"
        )
    return (host, port - 1)


def dtls_credentials(lookup: Callable[[bytes], tuple[bytes, str] | None]) -> Any:
    """The server credentials of a tinydtls_server context: ``lookup`` gives the key of a PSK identity
    and the endpoint it belongs to, asked at each handshake (so keys added while the server runs work at
    once). aiocoap 0.4.17 asks ``find_dtls_psk(identity)`` of its server credentials, and reports the
    name returned with the key as the remote's authenticated claim (:func:`authenticated_endpoint`):
    here the endpoint, so the handshake's identity decides which thing a client is."""
    from aiocoap.credentials import CredentialsMap

    class PskLookup(CredentialsMap):  # type: ignore[misc]
        def __bool__(self) -> bool:  # holds no entries, and an empty map is replaced by aiocoap's own
            return True

        def find_dtls_psk(self, identity: bytes) -> tuple[bytes, str]:
            found = lookup(bytes(identity))
            if found is None:
                raise KeyError(identity)
            return found

    return PskLookup()


def is_dtls(remote: Any) -> bool:
    return getattr(remote, "scheme", None) == "coaps"


def authenticated_endpoint(remote: Any) -> str | None:
    """The endpoint whose key a DTLS client's handshake used; None for plain CoAP (or no claim)."""
    if not is_dtls(remote):
        return None
    claims = getattr(remote, "authenticated_claims", None) or [None]
    claim = claims[0]
    return claim if isinstance(claim, str) else None


def dtls_udp_address(ctx: aiocoap.Context) -> tuple[Any, ...] | None:
    """The bound socket address of a tinydtls_server context (its pool's transport, aiocoap 0.4.17)."""
    for interface in getattr(ctx, "request_interfaces", []):
        messages = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        pool = getattr(messages, "_pool", None)
        transport = getattr(pool, "_transport", None)
        if transport is not None:
            return tuple(transport.get_extra_info("sockname"))
    return None


def claims_follow_the_latest_handshake() -> None:
    """In aiocoap 0.4.17 a tinydtls_server keeps one key store per client address and port for as long
    as it keeps the connection, and raises RuntimeError ("DTLS stack tried accessing different keys")
    when a new handshake from that address uses another identity: a device that comes back from the
    same port as another one before it (a NAT, a reboot, the kernel reusing an ephemeral port) could then
    never bootstrap. Here the claim is that of the latest handshake's identity, which is the session the
    DTLS stack now decrypts with. Done once, before the first DTLS server starts."""
    try:
        from aiocoap.transports import tinydtls_server
    except ImportError:  # pragma: no cover - DTLSSocket missing: the DTLS server cannot start anyway
        return
    store = tinydtls_server.SecurityStore
    if getattr(store, "_epfiot_latest_handshake", False):
        return

    class LatestHandshakeStore(store):  # type: ignore[misc,valid-type]
        _epfiot_latest_handshake = True

        def __getitem__(self, identity: bytes) -> bytes:
            psk, self._claims = self._server_credentials.find_dtls_psk(identity)
            return psk  # type: ignore[no-any-return]

    tinydtls_server.SecurityStore = LatestHandshakeStore


def dtls_requester(ctx: aiocoap.Context) -> Requester:
    """The :class:`Requester` of a tinydtls_server context. ``Context.request`` cannot send there: in
    aiocoap 0.4.17 that transport recognizes only plain-UDP remotes as its own (its DTLS remotes are not
    of that class), so a request to a DTLS client finds no interface (NoRequestInterface). Its token
    manager, handed the request directly, sends it through the client's DTLS session."""
    interfaces = getattr(ctx, "request_interfaces", [])
    return Requester(ctx, None, interfaces[0] if len(interfaces) == 1 else None)


_DTLS_EVENT_CONNECTED = 0x01DE  # tinydtls: the handshake completed (level 0, no alert)
_CLOSE_NOTIFY_WARNING = (1, 0)  # alert level warning, close_notify: what a client sends as it closes


def _dtls_pool(ctx: aiocoap.Context) -> Any:
    for interface in getattr(ctx, "request_interfaces", []):
        messages = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        pool = getattr(messages, "_pool", None)
        if pool is not None:
            return pool
    return None


def guard_dtls_sessions(
    ctx: aiocoap.Context,
    on_handshake_failed: Callable[[str], None],
    *,
    handshake_timeout: float,
    max_sessions: int,
) -> Callable[[], None] | None:
    """Bound the DTLS sessions a tinydtls_server context keeps, and report handshakes that fail.

    In aiocoap 0.4.17 the transport makes a session (a tinydtls context and a task) for every client
    address and port a datagram comes from, and drops it only when the client sends a fatal alert: it
    never calls its own pool limit (``max_sockets``), and a failed handshake (a wrong key, an unknown
    identity: tinydtls answers with an alert and reports nothing) stays for good. So a flood of
    ClientHellos from many ports grew memory without end, and failures went unseen. Here a session ends
    when its client closes it (close_notify); a session whose handshake has not completed within
    ``handshake_timeout`` seconds is dropped and reported to ``on_handshake_failed`` (with the client's
    address); beyond ``max_sessions``, the least recently active session goes first, one still in its
    handshake before any other (also reported). The session class of this one pool is replaced by a
    subclass (the pool makes sessions through ``self._Address``); None when aiocoap is not laid out so.

    Returns the function to call before the context shuts down: it ends every session quietly while
    aiocoap can still take their errors (its own shutdown ends them after its message layer is gone,
    with a warning for each)."""
    pool = _dtls_pool(ctx)
    found = getattr(pool, "_connections", None)
    base = getattr(pool, "_Address", None)
    if not isinstance(found, dict) or not isinstance(base, type) or not hasattr(base, "_event"):
        return None
    connections: dict[Any, Any] = found
    loop = asyncio.get_running_loop()
    closing = False

    def drop(session: Any, why: str) -> None:
        sockaddr = session._underlying_address.address
        if sockaddr in connections and connections[sockaddr] is session:
            session._inject_error(aiocoap.error.LibraryShutdown(why))  # removes it from the pool too
        if sockaddr in connections and connections[sockaddr] is session:  # never loop on one kept anyway
            del connections[sockaddr]

    class GuardedSession(base):  # type: ignore[misc,valid-type]
        def __init__(self, protocol: Any, sockaddr: Any) -> None:
            self._epfiot_handshake = True  # until the handshake completes, or the session is reported
            super().__init__(protocol, sockaddr)
            self._epfiot_deadline = loop.call_later(handshake_timeout, self._epfiot_expire)
            while len(connections) >= max_sessions:  # the pool adds this session once it is made
                drop(self._epfiot_oldest(), "too many DTLS sessions")

        def _epfiot_oldest(self) -> Any:
            sessions = connections.values()
            return next((s for s in sessions if getattr(s, "_epfiot_handshake", False)), next(iter(sessions)))

        def _epfiot_failed(self) -> None:
            if self._epfiot_handshake:
                self._epfiot_handshake = False
                on_handshake_failed(format_address(self._underlying_address.address))

        def _epfiot_expire(self) -> None:
            if self._epfiot_handshake:
                drop(self, "the DTLS handshake did not complete")

        def _event(self, level: int, code: int) -> Any:
            if (level, code) == (0, _DTLS_EVENT_CONNECTED):
                self._epfiot_handshake = False
                self._epfiot_deadline.cancel()
            elif (level, code) == _CLOSE_NOTIFY_WARNING:
                # aiocoap ends a session on a fatal close_notify only, and logs this one as unhandled: the
                # client is gone, and a later client from its address and port must start afresh
                loop.call_soon(drop, self, "the client closed its DTLS session")
                return None
            return super()._event(level, code)

        def _inject_error(self, exception: BaseException) -> Any:
            self._epfiot_deadline.cancel()
            if not closing:
                self._epfiot_failed()
            return super()._inject_error(exception)

    def close() -> None:
        nonlocal closing
        closing = True
        for session in list(connections.values()):
            drop(session, "the bootstrap server stops")

    pool._Address = GuardedSession
    return close
