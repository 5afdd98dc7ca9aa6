"""How the bootstrap server uses the registry without letting it pace the protocol: bootstrap targets
cached while nobody else writes, status updates written in batches."""

from __future__ import annotations

import asyncio
import logging

from epfiot.lwm2m.protocol import Operation, plan_bootstrap
from epfiot.psk import PskCredential
from epfiot.registry import BootstrapTarget, Registry, RegistryError, StatusUpdate

log = logging.getLogger("epfiot.lwm2m.server")


class StatusWriter:
    """Collects status updates and writes them in one transaction per flush interval. A locked or failing
    database is retried later; nothing blocks the event loop for long."""

    MAX_PENDING = 100_000

    def __init__(self, registry: Registry, interval: float) -> None:
        self._registry = registry
        self._interval = interval
        self._pending: list[StatusUpdate] = []
        self._handle: asyncio.TimerHandle | None = None

    def put(self, update: StatusUpdate) -> None:
        self._pending.append(update)
        if len(self._pending) > self.MAX_PENDING:
            dropped = len(self._pending) - self.MAX_PENDING
            del self._pending[:dropped]
            log.error("registry unwritable: dropped %d status updates", dropped)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self._interval, self._flush_soon)

    def _flush_soon(self) -> None:
        self._handle = None
        if not self.flush():
            self._handle = asyncio.get_running_loop().call_later(0.5, self._flush_soon)

    def flush(self) -> bool:
        if not self._pending:
            return True
        batch = self._pending
        self._pending = []
        try:
            self._registry.apply_status(batch)
        except RegistryError as exc:
            log.warning("could not write %d bootstrap status updates (will retry): %s", len(batch), exc)
            self._pending[:0] = batch
            return False
        return True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.flush()


class TargetCache:
    """Bootstrap targets and their encoded write plans, valid while no other connection has committed to
    the registry (``PRAGMA data_version``). Only config and revision are used from cached records; status
    is written, never read, by the server."""

    MAX_ENTRIES = 10_000

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._version: int | None = None
        self._targets: dict[str, BootstrapTarget | None] = {}
        self._plans: dict[tuple[str, int, int, str | None], list[Operation]] = {}

    def _check(self) -> None:
        version = self._registry.data_version()
        if version != self._version or len(self._targets) > self.MAX_ENTRIES:
            self._version = version
            self._targets.clear()
            self._plans.clear()

    def target(self, name: str) -> BootstrapTarget | None:
        self._check()
        try:
            return self._targets[name]
        except KeyError:
            target = self._targets[name] = self._registry.bootstrap_target(name)
            return target

    def plan(
        self, target: BootstrapTarget, content_format: int, server_psk: PskCredential | None = None
    ) -> list[Operation]:
        # keys can change without the registry: a plan is cached for the server key it carries
        digest = None if server_psk is None else server_psk.digest
        key = (target.record.config.name, target.revision, content_format, digest)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = plan_bootstrap(target.record.config, content_format, server_psk)
        return plan
