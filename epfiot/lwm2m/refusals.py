"""Reporting refused Bootstrap-Requests (unknown endpoints, things waiting for their server): a warning
and an event each, but a flood of refused requests must not become a flood of log lines and event-log
rows. Up to ``BURST`` refusals are reported at once and ``RATE`` per second after that; the others are
counted and reported as one line per ``SUMMARY_AFTER`` seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

Report = Callable[[str, str, str], None]
"""Reports one refusal: endpoint, client address, reason."""


class RefusalReports:
    BURST = 50
    RATE = 5.0
    SUMMARY_AFTER = 10.0

    def __init__(self, report: Report) -> None:
        self._report = report
        self._tokens = float(self.BURST)
        self._last = time.monotonic()
        self._unreported = 0
        self._summary: asyncio.TimerHandle | None = None

    def report(self, endpoint: str, client: str, reason: str) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.BURST), self._tokens + (now - self._last) * self.RATE)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._report(endpoint, client, reason)
            return
        self._unreported += 1
        if self._summary is None:
            self._summary = asyncio.get_running_loop().call_later(self.SUMMARY_AFTER, self._sum_up)

    def _sum_up(self) -> None:
        self._summary = None
        count, self._unreported = self._unreported, 0
        if count:
            self._report("*", "*", f"{count} more refusals, not reported one by one (a flood?)")

    def close(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
        self._sum_up()
