"""Counting refused datagrams (unknown endpoints, bad requests, things refused on plain CoAP, failed DTLS
handshakes ...): a flood of them must not become a flood of log lines and event-log rows, nor push the
real history out of the event log.

Refusals are counted per (reason, transport). The first refusal of a kind is reported at once, with its
endpoint and client, so that a misconfigured thing shows up without delay; the ones after it, for as long
as they keep coming, are reported as one summary per ``interval`` seconds: how many, over how long, and a
few of the endpoints and clients. A kind that stays quiet for a whole interval is forgotten, and its next
refusal is reported at once again. So a flood of any size costs a few events per interval."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_INTERVAL = 30.0
SAMPLES = 5  # endpoints and clients a summary names

# The reasons a datagram is refused for: a small, fixed set, so that the counters stay few whatever a
# flood sends (the detail of a bad request is in the first report's "detail", and in the debug log).
UNKNOWN_ENDPOINT = "unknown endpoint"
WAITING = "waiting for its server (the VM has no address yet)"
OTHER_IDENTITY = "the DTLS identity belongs to another thing"
DTLS_ONLY = "a thing with credentials bootstraps over DTLS only"
BAD_REQUEST = "bad request"
NO_SUCH_RESOURCE = "no such resource"
METHOD_NOT_ALLOWED = "method not allowed"
REGISTRY_UNAVAILABLE = "registry unavailable"
HANDSHAKE_FAILED = "DTLS handshake failed"


@dataclass
class Refusals:
    """The refusals of one reason over one transport: the first, or those of one summary interval."""

    reason: str
    transport: str  # "coap" or "coaps"
    count: int = 0
    summary: bool = False  # False: the first refusal, reported alone
    seconds: float = 0.0  # the time a summary covers
    endpoints: list[str] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)
    owner: str | None = None  # of the first refusal, when its endpoint is a declared thing
    detail: str | None = None

    def add(self, endpoint: str | None, client: str) -> None:
        self.count += 1
        if endpoint is not None and len(self.endpoints) < SAMPLES and endpoint[:64] not in self.endpoints:
            self.endpoints.append(endpoint[:64])
        if len(self.clients) < SAMPLES and client not in self.clients:
            self.clients.append(client)

    def fields(self) -> dict[str, object]:
        """The event's fields: a first refusal names its endpoint and client, a summary its samples."""
        found: dict[str, object] = {"reason": self.reason, "transport": self.transport, "count": self.count}
        if self.summary:
            found.update(seconds=round(self.seconds, 1), endpoints=self.endpoints, clients=self.clients)
        else:
            found.update({"endpoint": self.endpoints[0]} if self.endpoints else {}, client=self.clients[0])
        if self.owner is not None:
            found["owner"] = self.owner
        if self.detail is not None:
            found["detail"] = self.detail[:200]
        return found


Report = Callable[[Refusals], None]


class RefusalCounter:
    def __init__(self, report: Report, interval: float = DEFAULT_INTERVAL) -> None:
        if not interval > 0:
            raise ValueError("the refusal summary interval must be positive")
        self._report = report
        self.interval = interval
        self._open: dict[tuple[str, str], Refusals] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._closed = False

    def refused(
        self,
        reason: str,
        transport: str,
        endpoint: str | None,
        client: str,
        *,
        owner: str | None = None,
        detail: str | None = None,
    ) -> None:
        if self._closed:
            return  # the server is stopping: its listeners close in a moment
        key = (reason, transport)
        counted = self._open.get(key)
        if counted is not None:
            counted.add(endpoint, client)
            return
        first = Refusals(reason, transport, owner=owner, detail=detail)
        first.add(endpoint, client)
        self._report(first)
        self._open[key] = Refusals(reason, transport)
        self._timers[key] = asyncio.get_running_loop().call_later(self.interval, self._sum_up, key)

    def _sum_up(self, key: tuple[str, str]) -> None:
        counted = self._open.pop(key)
        del self._timers[key]
        if counted.count == 0:
            return  # quiet for a whole interval: the next refusal is reported at once
        counted.summary, counted.seconds = True, self.interval
        self._report(counted)
        self._open[key] = Refusals(*key)
        self._timers[key] = asyncio.get_running_loop().call_later(self.interval, self._sum_up, key)

    def close(self) -> None:
        """Report what was counted and not yet reported (the server stops)."""
        self._closed = True
        for key, timer in list(self._timers.items()):
            timer.cancel()
            counted = self._open.pop(key)
            if counted.count:
                counted.summary = True
                counted.seconds = self.interval - max(0.0, timer.when() - asyncio.get_running_loop().time())
                self._report(counted)
        self._timers.clear()
