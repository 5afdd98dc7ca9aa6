"""The asyncio side of watch: the triggers (watchfiles, libvirt events, timers, signals), the LwM2M bootstrap
server, and the loop that hands each run to the Reconciler in one worker thread."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epfiot.errors import EpfiotError, HostError
from epfiot.hostconfig import ADMIN
from epfiot.logs import Log
from epfiot.watch.config import WatchConfig, is_manifest_path
from epfiot.watch.schedule import CONNECT_BACKOFF, CRASH_EVENTS, MAX_DEBOUNCE, Backoff, Schedule
from epfiot.watch.scopes import is_under
from epfiot.watch.tenants import Member, Reconcilers, members, watched_paths

if TYPE_CHECKING:
    from epfiot.eventlog import EventLog
    from epfiot.policy import UsbPolicy


class Watcher:
    """`group`: whose manifests are reconciled, and as whom (epfiot.watch.tenants); default: config.paths
    as the administrator. `config.paths` are the paths watched for changes."""

    def __init__(self, config: WatchConfig, log: Log, group: Sequence[Member] | None = None, *, api_routes: Callable[[Any], None] | None = None) -> None:
        self.config = config
        self.api_routes = api_routes  # more routes on the API's aiohttp application (the web console's)
        self.group = list(group) if group is not None else [Member(ADMIN, config)]
        self.log = log
        self.schedule = Schedule(config.debounce, config.resync, time.monotonic())
        self.schedule.trigger("start")
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.prune_due: float | None = None
        self.retry_due: float | None = None
        self.managed: frozenset[str] = frozenset()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="epfiot-reconcile")
        self.events_conn: Any = None
        self.events_lost = asyncio.Event()
        self.reconciler: Reconcilers | None = None
        self.metrics: Any = None  # epfiot.api.metrics.Metrics, when the API is served

    # --- triggers -----------------------------------------------------------------------------------------

    def _trigger(self, reason: str) -> None:
        self.schedule.trigger(reason)
        self.wake.set()

    def _files_changed(self, changes: set[tuple[Any, str]]) -> None:
        paths = sorted({path for _, path in changes})
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        self.log("manifest.changed", shown, level="debug", files=paths[:50])
        self.schedule.files_changed(time.monotonic())
        self.wake.set()

    def _libvirt_event(self, domain: str, event: str) -> None:  # in the loop thread
        # The reconciler publishes the names before it acts: the events of a VM it is creating count.
        managed = self.reconciler.managed if self.reconciler is not None else self.managed
        if domain not in managed:
            return
        crash = event.startswith(CRASH_EVENTS)
        self.log("libvirt.event", event, subject=domain, level="warning" if crash else "info", domain=domain)
        if crash and (delay := self.schedule.crashed(time.monotonic())) is not None:
            self.log("crash.backoff", f"crashes again and again: restarted in {delay:g}s", subject=domain, level="warning", delay=delay)
        self._trigger("event")

    def _libvirt_closed(self, reason: str) -> None:  # in the loop thread
        self.log("libvirt.disconnected", f"connection to {self.config.uri} lost: {reason}", level="warning", reason=reason)
        self.events_lost.set()

    def _stop(self, signame: str) -> None:
        if self.stopping.is_set():
            self.log("watch.stopping", f"{signame} again: still finishing the reconcile in progress", level="warning")
            return
        self.log("watch.stopping", f"{signame}: finishing the reconcile in progress, then exiting")
        self.stopping.set()
        self.wake.set()

    # --- tasks --------------------------------------------------------------------------------------------

    async def _watch_files(self) -> None:
        from watchfiles import DefaultFilter, awatch

        roots = self.config.watch_roots
        dirs = tuple(p for p in self.config.paths if p.is_dir())
        files = frozenset(p for p in self.config.paths if not p.is_dir())
        default = DefaultFilter()

        def accept(change: Any, path: str) -> bool:
            if not default(change, path):
                return False
            p = Path(path)
            if p in files:
                return True
            root = next((d for d in dirs if is_under(p, d)), None)
            if root is None:
                return False
            # A manifest, or something without a suffix that is no file: a directory moved or removed.
            return is_manifest_path(p, root) or (p.suffix == "" and not p.is_file() and not p.name.startswith("."))

        async for changes in awatch(*roots, watch_filter=accept, step=50, debounce=int(max(MAX_DEBOUNCE, self.config.debounce) * 1000), stop_event=self.stopping):
            self._files_changed(changes)

    async def _libvirt_events(self) -> None:
        """Keep an event connection open; reconnect with backoff when it breaks, then trigger a reconcile."""
        from epfiot.libvirt.events import DomainEvents

        loop = asyncio.get_running_loop()
        backoff = Backoff(*CONNECT_BACKOFF)
        connected_once = False

        def on_event(domain: str, event: str) -> None:
            loop.call_soon_threadsafe(self._libvirt_event, domain, event)

        def on_closed(reason: str) -> None:
            loop.call_soon_threadsafe(self._libvirt_closed, reason)

        while not self.stopping.is_set():
            conn = DomainEvents(self.config.uri, on_event, on_closed)
            try:
                await loop.run_in_executor(None, conn.open)
            except HostError as error:
                delay = backoff.next()  # the reconcile reports the outage (once); this is the detail
                self.log("libvirt.unavailable", f"event connection: {error}; again in {delay:g}s", level="debug")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                continue
            self.events_conn = conn
            if connected_once or backoff.failures:
                self.log("libvirt.reconnected", f"connected to {self.config.uri} again", uri=self.config.uri)
                self._trigger("reconnect")
            connected_once = True
            backoff.reset()
            self.events_lost.clear()
            stop = asyncio.ensure_future(self.stopping.wait())
            lost = asyncio.ensure_future(self.events_lost.wait())
            await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            lost.cancel()
            self.events_conn = None
            await loop.run_in_executor(None, conn.close)
            if not self.stopping.is_set():
                self._trigger("reconnect")  # the host connection most likely died too: reopen it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), backoff.next())

    async def _reconcile_loop(self, reconciler: Reconcilers) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            now = time.monotonic()
            due = self.schedule.due(now, self.prune_due, self.retry_due)
            if due > now:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), due - now)
                continue
            reasons = self.schedule.take(now, self.prune_due, self.retry_due)
            if not reasons:  # pragma: no cover - due() and take() agree; never spin if they do not
                await asyncio.sleep(0.05)
                continue
            if "prune" in reasons:
                self.prune_due = None
            self.log("reconcile.start", ", ".join(sorted(reasons)), level="debug", reasons=sorted(reasons))
            # The resync reloads the manifests too (a change watchfiles missed), unless one is being debounced.
            load = bool(reasons & {"start", "manifest"}) or ("resync" in reasons and self.schedule.files_due is None)
            report = await loop.run_in_executor(self.worker, functools.partial(reconciler.run, reasons, load=load))
            self.managed = report.managed
            self.prune_due = report.prune_due
            self.retry_due = report.retry_due
            if report.outcome == "idle":
                self.schedule.finished(time.monotonic(), "ok")
                continue
            delay = self.schedule.finished(time.monotonic(), report.outcome)
            if delay is not None and report.outcome in ("failed", "disconnected"):
                self.log("retry.scheduled", f"next attempt in {delay:g}s", level="debug", delay=delay)

    async def run(self, events: EventLog, policy: UsbPolicy | None) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig.name)

        from epfiot.libvirt.events import ensure_event_loop

        ensure_event_loop()  # before any libvirt connection: keepalive and close callbacks need it
        reconciler = self.reconciler = Reconcilers(self.group, self.log, events, policy)
        server: Any = None
        api: Any = None
        if self.config.api_socket is not None or self.config.http is not None:
            from epfiot.api.metrics import Metrics
            from epfiot.snapshot import Snapshots

            self.metrics = Metrics()
            reconciler.observe_with(self.metrics)
            reconciler.snapshots = Snapshots()  # what the API reads, published by every run
        if self.config.serve:
            server = await self._start_server(events)
        if (server is not None or not self.config.serve) and self.metrics is not None:
            api = await self._start_api(reconciler)
            if api is None and server is not None:
                await server.stop()
                server = None
        if (self.config.serve and server is None) or (self.metrics is not None and api is None):
            await loop.run_in_executor(self.worker, reconciler.close)
            self.worker.shutdown()
            return 1
        paths = ", ".join(str(p) for p in self.config.paths)
        self.log(
            "watch.started",
            f"watching {paths} for {self.config.uri} (resync {self.config.resync:g}s, debounce {self.config.debounce:g}s, prune after {self.config.prune_after:g}s)",
            pid=os.getpid(),
            paths=[str(p) for p in self.config.paths],
            uri=self.config.uri,
        )
        tasks = [
            asyncio.create_task(self._watch_files(), name="files"),
            asyncio.create_task(self._libvirt_events(), name="libvirt-events"),
        ]
        main = asyncio.create_task(self._reconcile_loop(reconciler), name="reconcile")
        watched = [main, *tasks]
        code = 0
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    error = task.exception()
                    self.log("watch.failed", f"{task.get_name()}: {error!r}", level="error")
                    code = 1
                    self.stopping.set()
                    self.wake.set()
        finally:
            self.stopping.set()
            self.wake.set()
            with contextlib.suppress(Exception):
                await main  # the reconcile in progress finishes
            for task in tasks:
                if not task.done():
                    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                        await asyncio.wait_for(asyncio.shield(task), 2.0)
                    task.cancel()
            if api is not None:
                with contextlib.suppress(Exception):
                    await api.stop()
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.stop()
            if self.events_conn is not None:
                await loop.run_in_executor(None, self.events_conn.close)
            await loop.run_in_executor(self.worker, reconciler.close)
            self.worker.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        self.log("watch.stopped", "stopped", code=code)
        return code

    async def _start_server(self, events: EventLog) -> Any:
        from epfiot.eventlog import describe_bootstrap
        from epfiot.lwm2m.server import BootstrapServer
        from epfiot.registry import Registry

        Registry(self.config.state_dir / "registry.db").close()  # created with its schema before serving

        def on_event(kind: str, fields: dict[str, object]) -> None:
            if self.metrics is not None and kind != "bootstrap.started":
                self.metrics.bootstrap(kind.partition(".")[2])
            subject, message = describe_bootstrap(kind, fields)
            level = "warning" if kind.endswith(("failed", "refused")) else "info"
            extra = {k: v for k, v in fields.items() if k not in ("message", "subject", "level", "event")}
            self.log(kind, message, subject=subject, level=level, **extra)
            events.record(kind, subject, message, **fields)

        server = BootstrapServer(
            self.config.state_dir / "registry.db",
            self.config.bind,
            self.config.port,
            on_event=on_event,
            dtls_port=self.config.dtls_port,
            dtls_bind=self.config.dtls_bind,
        )
        try:
            await server.start()
        except OSError as error:
            self.log("serve.failed", f"cannot serve LwM2M bootstrap: {error}", level="error")
            return None
        if self.config.port is None:
            self.log("serve.listening", "LwM2M bootstrap server with plain CoAP off (--no-coap)", bind=self.config.bind, port=None)
        else:
            self.log("serve.listening", f"LwM2M bootstrap server on [{self.config.bind}]:{server.port}", bind=self.config.bind, port=server.port)
        dtls = self.config.dtls_note if self.config.dtls_port is None else f"CoAP over DTLS on [{self.config.dtls_bind}]:{server.dtls_port}"
        self.log("serve.dtls", dtls)
        return server


    async def _start_api(self, reconciler: Reconcilers) -> Any:
        """The API (epfiot.api) on the Unix socket and over HTTP; None (logged) if it cannot listen."""
        from epfiot.api.app import ApiServer, Limits, build_app
        from epfiot.api.auth import HostConfigSource
        from epfiot.api.backend import WorkerBackend

        config = self.config
        snapshots = reconciler.snapshots
        assert snapshots is not None, "the API reads the snapshots its runs publish"
        backend = WorkerBackend(self.worker, reconciler.live, lambda: reconciler.ready, lambda: reconciler.last_run, snapshots, config)
        try:
            hosts = HostConfigSource(config.host_config)
        except EpfiotError as error:
            self.log("api.failed", f"cannot serve the API: {error}", level="error")
            return None
        api = ApiServer(build_app(backend, hosts, metrics=self.metrics, extra_routes=self.api_routes, limits=Limits(rate=config.http_rate, burst=max(1, int(2 * config.http_rate)))), socket_path=config.api_socket, http=config.http)
        try:
            await api.start()
        except OSError as error:
            self.log("api.failed", f"cannot serve the API: {error}", level="error")
            return None
        if config.api_socket is not None:
            self.log("api.listening", f"API on unix:{config.api_socket}", socket=str(config.api_socket))
        if config.http is not None:
            host, _ = config.http
            shown = f"[{host}]" if ":" in host else host
            self.log("api.listening", f"API on http://{shown}:{api.http_port}", address=host, port=api.http_port)
        return api


def run_watch(args: argparse.Namespace, *, api_routes: Callable[[Any], None] | None = None) -> int:
    """epfiot watch: runs until SIGTERM or SIGINT; exit code 0 after a clean stop. `api_routes(app)` adds
    routes to the API's application (epfiot.api.app.build_app's extra_routes)."""
    from epfiot.cli.common import service
    from epfiot.errors import UsageError
    from epfiot.eventlog import EventLog
    from epfiot.state import ensure_state_dir

    svc, caller = service(args)  # the host's state directory, image pool and USB policy; who runs watch
    config = replace(WatchConfig.from_args(args), state_dir=svc.state_dir, image_pool=svc.image_pool, policy=svc.policy_path)
    group = members(config, svc.config, caller)
    if not any(m.config.paths for m in group):
        raise UsageError("watch needs -f PATH (or a host configuration whose tenants have manifest directories)")
    log = Log(sys.stderr, config.log_format, verbose=config.verbose)
    handler = log.bridge_logging("epfiot", "aiocoap", "aiohttp", level=10 if config.verbose else 30)
    ensure_state_dir(config.state_dir)
    policy = svc.policy()
    events = EventLog.in_state_dir(config.state_dir, config.event_retention)
    try:
        return asyncio.run(Watcher(replace(config, paths=watched_paths(group)), log, group, api_routes=api_routes).run(events, policy))
    finally:
        events.close()
        for name in ("epfiot", "aiocoap", "aiohttp"):
            import logging

            logging.getLogger(name).removeHandler(handler)
