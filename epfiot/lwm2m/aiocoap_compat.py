"""Where the bootstrap server relies on aiocoap beyond its stable API.

aiocoap's stable API is ``Context.create_server_context``, ``Context.request``, ``Context.shutdown`` and
``Message`` (see aiocoap's "API stability" documentation); the rest of :mod:`epfiot.lwm2m` uses only that
and what this module offers. Everything below reaches into aiocoap's internals, each for a reason given
where it is done, all checked against aiocoap :data:`CHECKED_VERSION`. When an internal is not where it
was (another aiocoap version), :func:`udp_endpoint` returns None and the server falls back to the stable
API where there is one: requests through ``Context.request``, refusals answered by aiocoap, no decoding
guard. Only the bound port of a server started on port 0 has no fallback. CoAP over DTLS (aiocoap's
tinydtls_server transport) is in :mod:`epfiot.lwm2m.aiocoap_dtls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiocoap
import aiocoap.error
from aiocoap.numbers.types import Type

CHECKED_VERSION = "0.4.17"

log = logging.getLogger("epfiot.lwm2m.server")

Screen = Callable[[aiocoap.Message, str], "aiocoap.Message | None"]
"""Given an incoming request (decoded) and its client's address, the answer to send at once without
aiocoap, or None to let aiocoap handle the request."""


# -- the UDP transport of a server context --------------------------------------------------------------


@dataclass(frozen=True)
class UdpEndpoint:
    """The parts of a server context's UDP transport the workarounds below need. In aiocoap 0.4.17 a
    context made with ``transports=["udp6"]`` has one request interface, a TokenManager, whose
    ``token_interface`` is a MessageManager, whose ``message_interface`` is the MessageInterfaceUDP6 that
    owns the socket."""

    requests: Any  # aiocoap.tokenmanager.TokenManager
    messages: Any  # aiocoap.messagemanager.MessageManager
    datagrams: Any  # aiocoap.transports.udp6.MessageInterfaceUDP6
    sock: socket.socket


def udp_endpoint(ctx: aiocoap.Context) -> UdpEndpoint | None:
    """The UDP transport of a context created with ``transports=["udp6"]``; None when aiocoap is not laid
    out as in :data:`CHECKED_VERSION` (aiocoap has no public way to reach its socket, not even for the
    port a server bound to port 0 got)."""
    from aiocoap.interfaces import RequestInterface

    interfaces = list(getattr(ctx, "request_interfaces", ()))
    if len(interfaces) != 1 or not isinstance(interfaces[0], RequestInterface):
        return None
    requests = interfaces[0]
    messages = getattr(requests, "token_interface", None)
    datagrams = getattr(messages, "message_interface", None)
    transport = getattr(datagrams, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if not isinstance(sock, socket.socket) or not all(
        callable(getattr(part, name, None))
        for part, name in (
            (datagrams, "datagram_msg_received"),
            (datagrams, "send"),
            (messages, "dispatch_message"),
        )
    ):
        return None
    return UdpEndpoint(requests, messages, datagrams, sock)


def ensure_port_free(bind: str, port: int) -> None:
    """aiocoap binds server sockets with SO_REUSEPORT (0.4.17: whenever the platform has it and
    AIOCOAP_REUSE_PORT does not say otherwise), so a second bootstrap server on the same port would start
    silently and share the clients with the first. A plain socket (no SO_REUSEPORT) probes the port first."""
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


# -- client addresses -------------------------------------------------------------------------------------

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
    """``host:port`` for IPv4 (also v4-mapped, as the dual-stack socket reports it), ``[host]:port`` for
    IPv6. aiocoap's ``remote.hostinfo`` would parse the address with :mod:`ipaddress` on every call and
    drops the port when it is 5683."""
    host, port = str(sockaddr[0]), int(sockaddr[1])
    if ":" not in host:
        return f"{host}:{port}"
    packed = _packed(host)
    if packed is not None and packed[:12] == _V4MAPPED:
        return f"{socket.inet_ntop(socket.AF_INET, packed[12:])}:{port}"
    return f"[{host}]:{port}"


def client_address(remote: Any) -> str:
    """The address text of a request's remote (a udp6 ``UDP6EndpointAddress`` keeps the socket address
    in ``sockaddr``, 0.4.17); "?" for any other remote."""
    try:
        return format_address(remote.sockaddr)
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    try:  # a tinydtls_server remote keeps the socket address on its underlying plain address
        return format_address(remote._underlying_address.address)
    except (AttributeError, IndexError, TypeError, ValueError):
        return "?"


def sending_remote(remote: Any) -> Any:
    """The remote to send a bootstrap's requests to: the client's address, from the socket that received
    its POST /bs. aiocoap 0.4.17 re-derives ``is_multicast`` and ``is_multicast_locally`` by parsing the
    address text with :mod:`ipaddress` several times per message sent; a bootstrap sends five requests to
    the same client, so the answers are worked out once here, on a subclass whose only change is that."""
    if _UnicastRemote is None or type(remote) is not _UDP6Address:
        return remote
    packed = _packed(str(remote.sockaddr[0]))
    local = remote.pktinfo[:16] if isinstance(remote.pktinfo, bytes) and len(remote.pktinfo) >= 16 else None
    if packed is None or _is_multicast(packed) or (local is not None and _is_multicast(local)):
        return remote
    return _UnicastRemote(remote.sockaddr, remote.interface, pktinfo=remote.pktinfo)


def _udp6_remote_classes() -> tuple[Any, Any]:
    try:
        from aiocoap.transports.udp6 import UDP6EndpointAddress
    except ImportError:  # pragma: no cover - another aiocoap layout
        return None, None

    class UnicastRemote(UDP6EndpointAddress):  # type: ignore[misc]
        is_multicast = False
        is_multicast_locally = False

    return UDP6EndpointAddress, UnicastRemote


_UDP6Address, _UnicastRemote = _udp6_remote_classes()


# -- sending requests ----------------------------------------------------------------------------------


class Requester:
    """Sends requests from a server context; :meth:`request` returns a future for the first response.

    ``Context.request`` (the stable API) adds a task, a remote lookup and a generator-driven ``Request``
    per message, about 30% of the server's CPU per bootstrap (bench_bootstrap, aiocoap 0.4.17), and
    cancelling the future it returns races with a response arriving in the same loop iteration (aiocoap
    then sets a result on the cancelled future inside its receive path). So requests that need no
    blockwise transfer go straight to the context's request interface through an ``aiocoap.pipe.Pipe``
    whose first event resolves a future of our own; a cancelled waiter just leaves the late event unused.
    The others, and every request when :func:`udp_endpoint` found nothing, use ``Context.request``
    without ever cancelling its future."""

    def __init__(self, ctx: aiocoap.Context, endpoint: UdpEndpoint | None, requests: Any = None) -> None:
        self._ctx = ctx
        self._requests = endpoint.requests if endpoint is not None else requests
        try:
            from aiocoap.pipe import Pipe
        except ImportError:  # pragma: no cover - another aiocoap layout
            self._requests = None
        else:
            self._pipe = Pipe

    def request(self, message: aiocoap.Message, *, blockwise: bool) -> asyncio.Future[aiocoap.Message]:
        future: asyncio.Future[aiocoap.Message] = asyncio.get_running_loop().create_future()
        if blockwise or self._requests is None:
            self._ctx.request(message, handle_blockwise=blockwise).response.add_done_callback(
                lambda done: _transfer(done, future)
            )
            return future

        def on_event(event: Any) -> bool:
            if not future.done():
                if event.message is not None:
                    future.set_result(event.message)
                else:
                    future.set_exception(event.exception or aiocoap.error.LibraryShutdown())
            return False  # one response is all we want; this ends the request's interest

        pipe = self._pipe(message, self._ctx.log)
        pipe.on_event(on_event)
        self._requests.request(pipe)
        return future


def _transfer(done: asyncio.Future[aiocoap.Message], future: asyncio.Future[aiocoap.Message]) -> None:
    if future.done():
        if not done.cancelled():
            done.exception()  # retrieved: nobody waits for it any more
    elif done.cancelled():
        future.cancel()
    elif (exc := done.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(done.result())


# -- incoming datagrams ----------------------------------------------------------------------------------


def guard_decoding(endpoint: UdpEndpoint) -> None:
    """aiocoap 0.4.17 turns undecodable datagrams into a warning, but a string option (Uri-Path,
    Uri-Query, Location-Path) that is not UTF-8 raises UnicodeDecodeError out of its receive callback,
    which the event loop logs as an ERROR with a traceback, once per datagram. One line at INFO instead,
    by wrapping the transport's ``datagram_msg_received`` on this one instance (aiocoap has no hook there)."""
    receive = endpoint.datagrams.datagram_msg_received

    def received(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        try:
            receive(data, ancdata, flags, address)
        except UnicodeDecodeError:
            log.info("ignoring a datagram from %s: an option is not UTF-8", format_address(address))

    endpoint.datagrams.datagram_msg_received = received


def screen_requests(endpoint: UdpEndpoint, screen: Screen) -> None:
    """Put ``screen`` in front of aiocoap's message layer for every incoming request, and send the
    refusals it gives at once, without aiocoap.

    A refused request answered by aiocoap leaves duplicate-detection state behind: in 0.4.17 its
    MessageManager keeps each request's (remote, message ID) and the response (and through it the
    request), with a timer, for EXCHANGE_LIFETIME (247 s): about 2.4 KB per datagram, so a flood of
    refused requests grew memory with the attack rate (bench_flood). A refusal depends only on the request
    and the registry, so a retransmitted one is simply refused again. The MessageManager's
    ``dispatch_message`` (which the UDP transport calls with each decoded message) is wrapped on this one
    instance; requests the screen lets through, and all other messages, go on to aiocoap unchanged."""
    dispatch = endpoint.messages.dispatch_message
    send = endpoint.datagrams.send
    next_mid = getattr(endpoint.messages, "_next_message_id", None)

    def dispatched(message: aiocoap.Message) -> None:
        if message.code.is_request() and message.mtype in (Type.CON, Type.NON):
            answer = screen(message, client_address(message.remote))
            if answer is not None:
                # As aiocoap answers: piggybacked on the ACK of a CON, a NON (with a message ID from the
                # MessageManager's own sequence, never one it sends this client soon after) to a NON.
                if message.mtype == Type.CON:
                    answer.mtype, answer.mid = Type.ACK, message.mid
                else:
                    answer.mtype = Type.NON
                    answer.mid = next_mid() if next_mid is not None else (message.mid + 0x8000) & 0xFFFF
                answer.token = message.token
                answer.remote = message.remote.as_response_address()
                send(answer)
                return
        dispatch(message)

    endpoint.messages.dispatch_message = dispatched
