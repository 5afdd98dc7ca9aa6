"""Who is asking: the caller of each request, decided once, before any route runs.

- On the Unix socket, the kernel says who the peer is (SO_PEERCRED on the connection's socket); the host
  configuration maps that uid to the administrator or a tenant (`caller_for_uid`). An unknown user is
  refused with 403 and nothing else. Without a host configuration, only root and the service's own user.
- Over HTTP, `Authorization: Bearer <token>` (`caller_for_token`); a missing or wrong token is 401, the same
  answer for both, with nothing else. The web console's browser carries the same token in its session cookie
  (HttpOnly, SameSite=Strict, set by its login form): accepted for reads (GET, HEAD) only, so a request
  another site makes the browser send can change nothing.
- A handler marked `answers_without_caller` (the console's login page, its files, its pages, which send an
  unknown caller to the login page) is called without a caller too: request.get(CALLER) is then None.

The host configuration is read again when its file changes (a token added takes effect at the next
request, without a restart). HTTP clients are also limited in their request rate (RateLimiter: 429).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from epfiot.hostconfig import Caller, HostConfig, host_config_path, load_host_config

CALLER = web.RequestKey("caller", Caller)
PEER_UID = web.RequestKey("peer_uid", int)  # on the Unix socket only
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths that answer without a caller: liveness and readiness say nothing about anyone's resources.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
SESSION_COOKIE = "epfiot_console"
READS = frozenset({"GET", "HEAD"})
_OPEN_HANDLERS: set[Handler] = set()


def answers_without_caller(handler: Handler) -> Handler:
    """Marks a handler that is called even when the request names no known caller."""
    _OPEN_HANDLERS.add(handler)
    return handler


class HostConfigSource:
    """The host configuration, read again whenever its file's mtime or size changes."""

    def __init__(self, path: Path | None = None, config: HostConfig | None = None) -> None:
        self.path, _ = host_config_path(path)
        self._explicit = path
        self._stamp: tuple[int, int] | None = None
        self._config = config if config is not None else load_host_config(path)
        self._stamp = self._current_stamp()

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def get(self) -> HostConfig:
        stamp = self._current_stamp()
        if stamp != self._stamp:
            # A configuration being edited may be invalid for a moment: the last valid one stays in force.
            self._stamp = stamp  # read once per change, valid or not
            with contextlib.suppress(Exception):
                self._config = load_host_config(self._explicit)
        return self._config


def peer_uid(request: web.Request) -> int | None:
    """The uid of the process at the other end of a Unix-socket connection, from the kernel."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def is_unix(request: web.Request) -> bool:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family == socket.AF_UNIX


def _may_ask(config: HostConfig, uid: int) -> bool:
    """Without a host configuration every caller would be the administrator (hostconfig): on a socket any
    local user may connect to, that is only root and the service's own user, who can reach libvirt anyway."""
    return config.has_tenants or uid in (0, os.geteuid())


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def session_token(request: web.Request) -> str | None:
    """The token of the console's session cookie, for a read; a browser sends cookies on its own, so they
    never authorize a change."""
    if request.method not in READS:
        return None
    return request.cookies.get(SESSION_COOKIE) or None


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"problems": [{"file": None, "line": None, "path": None, "message": message}]}, status=status, headers=headers or None)


def refused(status: int) -> web.Response:
    if status == 401:
        return error(401, "a valid API token is needed (Authorization: Bearer ...)", **{"WWW-Authenticate": 'Bearer realm="epfiot"'})
    return error(403, "not allowed")


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per client address: `rate` requests a second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: dict[str, _Bucket] = {}

    def allow(self, client: str) -> float | None:
        """None if the request may go on, else the seconds until it would."""
        now = self.clock()
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) > 10_000:  # many clients: forget the full buckets (they lose nothing)
                self.buckets = {k: b for k, b in self.buckets.items() if b.tokens + (now - b.at) * self.rate < self.burst}
            bucket = self.buckets[client] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate


def authenticate(hosts: HostConfigSource, limiter: RateLimiter | None) -> Middleware:
    """The middleware that sets request[CALLER], or answers 401/403/429 itself."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        unix = is_unix(request)
        if not unix and limiter is not None:
            wait = limiter.allow(request.remote or "?")
            if wait is not None:
                return error(429, "too many requests", **{"Retry-After": str(max(1, round(wait)))})
        if request.path in OPEN_PATHS:
            return await handler(request)
        config = hosts.get()
        caller: Caller | None
        if unix:
            uid = peer_uid(request)
            caller = config.caller_for_uid(uid) if uid is not None and _may_ask(config, uid) else None
            if caller is not None and uid is not None:
                request[PEER_UID] = uid
        else:
            token = bearer_token(request) or session_token(request)
            caller = config.caller_for_token(token) if token is not None else None
        if caller is not None:
            request[CALLER] = caller
        elif request.match_info.handler not in _OPEN_HANDLERS:
            return refused(403 if unix else 401)
        return await handler(request)

    return middleware
