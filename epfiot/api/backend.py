"""What the API reaches of the service: watch's latest observation of the host for reads, the live host in
watch's one worker thread for changes.

Reads render from the latest Snapshot (epfiot.snapshot) in a small pool of reader threads: they neither
observe the host again nor wait while a reconcile holds the worker thread. Things and events are read from
the state directory's registry and event log, in the same pool. Changes (plan, apply, delete) run in the
thread that runs watch's reconciles, on the same libvirt connection and registry handle: an apply through
the API is serialised with watch's reconciles (they hold the host lock too), it sees the live host, and
what the API shows is what watch sees (for the libvirt test driver, whose every connection has a private
host, that is the only way); the observation each ends with becomes the snapshot.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from epfiot.eventlog import EventLog
    from epfiot.host import Host
    from epfiot.hostconfig import HostConfig
    from epfiot.policy import UsbPolicy
    from epfiot.registry import Registry
    from epfiot.service import Service
    from epfiot.snapshot import Snapshot, Snapshots
    from epfiot.watch.config import WatchConfig
    from epfiot.watch.runs import Observer

T = TypeVar("T")


@dataclass(frozen=True)
class Live:
    """The host as the worker thread holds it, for one operation."""

    host: Host
    registry: Registry | None
    state_dir: Path
    events: EventLog
    policy: UsbPolicy | None
    config: WatchConfig
    observer: Observer | None = None  # the service's metrics, which count the API's actions too
    snapshots: Snapshots | None = None  # where the observations of the API's plans and applies go


def service_for(live: Live, config: HostConfig) -> Service:
    """The caller-scoped operations (epfiot.service) on the live host connection."""
    c = live.config
    return _watching(live.observer, live.snapshots).from_host_config(
        config, uri=c.uri, state_dir=live.state_dir, image_pool=c.image_pool, image_dir=c.image_dir,
        virt_type=c.virt_type, policy_path=c.policy, host=live.host,
    )


def reader_for(watch: WatchConfig, config: HostConfig) -> Service:
    """The operations for the reads that need no host connection (things, events: the state directory's
    files) and those that render a snapshot; it opens none."""
    from epfiot.service import Service

    return Service.from_host_config(
        config, uri=watch.uri, state_dir=watch.state_dir, image_pool=watch.image_pool, image_dir=watch.image_dir,
        virt_type=watch.virt_type, policy_path=watch.policy,
    )


def _watching(observer: Observer | None, snapshots: Snapshots | None) -> type[Service]:
    """A Service whose runs count their actions in `observer`, as watch's own do, and publish the
    observation they end with to `snapshots`."""
    from epfiot.service import Service

    if observer is None and snapshots is None:
        return Service

    class Watching(Service):
        def plan_run(self, *args: Any, **kwargs: Any) -> Any:
            at = time.time()
            result = super().plan_run(*args, **kwargs)
            if snapshots is not None and self.host is not None:
                snapshots.publish(self.host, result.observed, at)
            return result

        def apply_run(self, *args: Any, **kwargs: Any) -> Any:
            at = time.time()
            result = super().apply_run(*args, **kwargs)
            if observer is not None:
                for outcome in result.outcomes:
                    observer.action(outcome.action.kind.value, outcome.action.verb.value, outcome.ok)
            if snapshots is not None and self.host is not None:
                snapshots.publish(self.host, result.observed, at)  # the host after applying
            return result

    return Watching


class Backend(Protocol):
    """The service behind the API (watch, or a test's stand-in)."""

    async def call(self, operation: Callable[[Live], T]) -> T:
        """Run `operation` with the live host, in the thread that owns it (changes)."""
        ...

    async def snapshot(self) -> Snapshot:
        """The latest observation of the host; the first one is made in the worker thread."""
        ...

    async def read(self, operation: Callable[[Service], T], config: HostConfig) -> T:
        """Run `operation` in a reader thread, on a Service that opens no host connection (reader_for)."""
        ...

    def ready(self) -> tuple[bool, str]:
        """Whether the first reconcile is done and libvirt is reachable; why not, in words."""
        ...

    def last_run(self) -> dict[str, Any] | None:
        """What the last reconcile planned and did, as JSON (actions with their owner), or None yet."""
        ...


READERS = 2  # threads that render reads: the rows and their JSON, off the event loop


class WorkerBackend:
    """A Backend over watch's worker thread: `open_live` (called there) opens or reuses the connection;
    `snapshots` holds what watch last observed; `watch` says where the state directory is."""

    def __init__(
        self,
        worker: Executor,
        open_live: Callable[[], Live],
        status: Callable[[], tuple[bool, str]],
        last: Callable[[], dict[str, Any] | None],
        snapshots: Snapshots,
        watch: WatchConfig,
    ) -> None:
        self.worker = worker
        self.open_live = open_live
        self.status = status
        self.last = last
        self.snapshots = snapshots
        self.watch = watch
        self.readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="epfiot-read")

    async def call(self, operation: Callable[[Live], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.worker, functools.partial(self._run, operation))

    def _run(self, operation: Callable[[Live], T]) -> T:
        return operation(self.open_live())

    async def snapshot(self) -> Snapshot:
        latest = self.snapshots.latest
        if latest is not None:
            return latest
        return await self.call(lambda live: self.snapshots.observe(live.host))

    async def read(self, operation: Callable[[Service], T], config: HostConfig) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.readers, operation, reader_for(self.watch, config))

    def ready(self) -> tuple[bool, str]:
        return self.status()

    def last_run(self) -> dict[str, Any] | None:
        return self.last()

    def close(self) -> None:
        self.readers.shutdown(wait=False)
