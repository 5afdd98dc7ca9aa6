"""The one aiohttp application of the API, and the server that serves it on a Unix socket and over HTTP.

`build_app` makes the application: the authentication middleware (epfiot.api.auth), the routes of
epfiot.api.routes, and whatever `extra_routes` adds (the web console adds its pages that way; its handlers
find the caller in request[CALLER] and the service in request.app[BACKEND]). `ApiServer` serves one
application on both listeners: which one a request came in on decides how its caller is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from epfiot.api.auth import HostConfigSource, RateLimiter, authenticate
from epfiot.api.backend import Backend
from epfiot.api.metrics import Metrics
from epfiot.snapshot import Snapshot

BACKEND = web.AppKey("backend", Backend)
METRICS = web.AppKey("metrics", Metrics)
HOSTS = web.AppKey("hosts", HostConfigSource)
INFLIGHT = web.AppKey("inflight", dict[Hashable, "asyncio.Future[bytes]"])  # reads being computed (routes.shared)


class Rendered:
    """The answers rendered from the latest snapshot, by (resource, caller, fields): until the host is
    observed again, the same read is the same bytes. A newer snapshot forgets them."""

    LIMIT = 256  # answers kept per snapshot

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.bodies: dict[Hashable, bytes] = {}

    def get(self, snapshot: Snapshot, key: Hashable) -> bytes | None:
        return self.bodies.get(key) if snapshot is self.snapshot else None

    def put(self, snapshot: Snapshot, key: Hashable, body: bytes) -> None:
        if snapshot is not self.snapshot:
            if self.snapshot is not None and snapshot.at < self.snapshot.at:
                return
            self.snapshot, self.bodies = snapshot, {}
        if len(self.bodies) < self.LIMIT:
            self.bodies[key] = body


RENDERED = web.AppKey("rendered", Rendered)

MAX_BODY = 1024 * 1024  # a manifest body; larger ones are 413


@dataclass(frozen=True)
class Limits:
    max_body: int = MAX_BODY
    rate: float = 20.0  # HTTP requests a second per client address, on average
    burst: int = 40


def build_app(
    backend: Backend,
    hosts: HostConfigSource,
    *,
    metrics: Metrics | None = None,
    limits: Limits = Limits(),
    extra_routes: Callable[[web.Application], None] | None = None,
) -> web.Application:
    from epfiot.api import routes

    limiter = RateLimiter(limits.rate, limits.burst) if limits.rate > 0 else None
    app = web.Application(middlewares=[authenticate(hosts, limiter)], client_max_size=limits.max_body)
    app[BACKEND] = backend
    app[METRICS] = metrics if metrics is not None else Metrics()
    app[HOSTS] = hosts
    app[INFLIGHT] = {}
    app[RENDERED] = Rendered()
    routes.setup(app)
    if extra_routes is not None:
        extra_routes(app)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(text: str) -> tuple[str, int]:
    """ADDRESS:PORT, [V6]:PORT; raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not ADDRESS:PORT (e.g. 127.0.0.1:8080)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ValueError(f"{text!r} has no address (e.g. 127.0.0.1:8080)")
    return host, int(port)


class ApiServer:
    """Serves one application on a Unix socket (mode 0666: any local user may connect; the peer's uid says
    who they are) and, optionally, on HTTP."""

    def __init__(self, app: web.Application, *, socket_path: Path | None, http: tuple[str, int] | None) -> None:
        self.app = app
        self.socket_path = socket_path
        self.http = http
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.http_port: int | None = None
        self.bound = False  # the socket file is ours to remove

    async def start(self) -> None:
        await self.runner.setup()
        try:
            if self.socket_path is not None:
                path = self.socket_path
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                _remove_stale(path)
                site = web.UnixSite(self.runner, str(path))
                await site.start()
                self.bound = True
                os.chmod(path, 0o666)
            if self.http is not None:
                host, port = self.http
                tcp = web.TCPSite(self.runner, host, port)
                await tcp.start()
                server = tcp._server
                sockets = getattr(server, "sockets", None) or []
                self.http_port = sockets[0].getsockname()[1] if sockets else port
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await self.runner.cleanup()
        if self.socket_path is not None and self.bound:
            with contextlib.suppress(OSError):
                self.socket_path.unlink()


def _remove_stale(path: Path) -> None:
    """A socket file left by a process that died: removed. One that answers belongs to a running service."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise OSError(f"{path} exists and is no socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(f"another service answers on {path}")
