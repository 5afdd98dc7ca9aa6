"""The host as watch last observed it: what the API and the console read, without observing again.

Every observation watch makes of the host (each reconcile's, on a libvirt lifecycle event, a manifest
change or the resync; each plan and apply through the API) is published here as a Snapshot: the Observed,
which is frozen and so safe to read from any thread, and the time it was taken. Reads render their rows
from the latest one (epfiot.queries, the functions `epfiot get` uses on a fresh observation), in the event
loop's thread pool, and never wait for the worker thread, which may be busy with a reconcile for as long as
a VM's graceful shutdown takes. Changes still run in the worker thread on the live host, and publish the
observation they end with.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from epfiot.host import Host
    from epfiot.model import Observed


@dataclass(frozen=True, eq=False)  # one snapshot is itself only: a key for what is rendered from it
class Snapshot:
    observed: Observed
    at: float  # when the observation began (time.time()): the data is at least this fresh

    @property
    def at_text(self) -> str:
        """`at` as RFC 3339 UTC with milliseconds (the Epfiot-Observed-At header)."""
        return datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.at)


class Snapshots:
    """The latest Snapshot. Published from the worker thread, read from any; an older observation that
    finishes after a newer one does not replace it."""

    def __init__(self) -> None:
        self._latest: Snapshot | None = None
        self._lock = threading.Lock()

    @property
    def latest(self) -> Snapshot | None:
        return self._latest

    def publish(self, host: Host, observed: Observed, at: float) -> Snapshot:
        """`observed` (begun at `at`, on `host`) as the latest, with the addresses its rows show."""
        from epfiot.queries import with_addresses

        snapshot = Snapshot(with_addresses(host, observed), at)
        with self._lock:
            if self._latest is None or at >= self._latest.at:
                self._latest = snapshot
            return self._latest

    def observe(self, host: Host) -> Snapshot:
        """A fresh observation of `host`, published (in the worker thread)."""
        at = time.time()
        return self.publish(host, host.observe(), at)
