"""What the API reaches of the service: the live host, in watch's one worker thread.

Every operation runs in the thread that runs watch's reconciles, on the same libvirt connection and
registry handle: an apply through the API is serialised with watch's reconciles (they hold the host lock
too), and what the API shows is what watch sees (for the libvirt test driver, whose every connection has
a private host, that is the only way). A read waits while a reconcile is in progress.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
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


def service_for(live: Live, config: HostConfig) -> Service:
    """The caller-scoped operations (epfiot.service) on the live host connection."""
    from epfiot.service import Service

    c = live.config
    kind = Service if live.observer is None else _counting(live.observer)
    return kind.from_host_config(
        config, uri=c.uri, state_dir=live.state_dir, image_pool=c.image_pool, image_dir=c.image_dir,
        virt_type=c.virt_type, policy_path=c.policy, host=live.host,
    )


def _counting(observer: Observer) -> type[Service]:
    """A Service whose runs count their actions in `observer`, as watch's own do."""
    from epfiot.service import Service

    class Counting(Service):
        def apply_run(self, *args: Any, **kwargs: Any) -> Any:
            result = super().apply_run(*args, **kwargs)
            for outcome in result.outcomes:
                observer.action(outcome.action.kind.value, outcome.action.verb.value, outcome.ok)
            return result

    return Counting


class Backend(Protocol):
    """The service behind the API (watch, or a test's stand-in)."""

    async def call(self, operation: Callable[[Live], T]) -> T:
        """Run `operation` with the live host, in the thread that owns it."""
        ...

    def ready(self) -> tuple[bool, str]:
        """Whether the first reconcile is done and libvirt is reachable; why not, in words."""
        ...

    def last_run(self) -> dict[str, Any] | None:
        """What the last reconcile planned and did, as JSON (actions with their owner), or None yet."""
        ...


class WorkerBackend:
    """A Backend over watch's worker thread: `open_live` (called there) opens or reuses the connection."""

    def __init__(self, worker: Executor, open_live: Callable[[], Live], status: Callable[[], tuple[bool, str]], last: Callable[[], dict[str, Any] | None]) -> None:
        self.worker = worker
        self.open_live = open_live
        self.status = status
        self.last = last

    async def call(self, operation: Callable[[Live], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.worker, functools.partial(self._run, operation))

    def _run(self, operation: Callable[[Live], T]) -> T:
        return operation(self.open_live())

    def ready(self) -> tuple[bool, str]:
        return self.status()

    def last_run(self) -> dict[str, Any] | None:
        return self.last()
