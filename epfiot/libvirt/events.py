"""libvirt domain lifecycle events and connection loss, delivered to plain Python callbacks.

libvirt dispatches events (and the keepalive that detects a dead daemon) only through an event loop
implementation registered before the connection is opened. `ensure_event_loop()` registers libvirt's own
default implementation once per process and runs it in a daemon thread; call it before opening any
connection whose loss should be noticed (epfiot watch calls it first thing).

`DomainEvents` opens its own connection, so the events keep flowing while another connection is busy with
a long call. Its callbacks run in the event loop thread: they must only hand the event over (epfiot watch
uses `loop.call_soon_threadsafe`), never call libvirt back or block.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import libvirt

from epfiot.errors import ConnectionFailed
from epfiot.libvirt.connection import open_connection

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None

# virDomainEventType, in libvirt's order, with the details of each (virDomainEvent*DetailType).
_EVENTS: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("defined", ("added", "updated", "renamed", "from-snapshot")),
    1: ("undefined", ("removed", "renamed")),
    2: ("started", ("booted", "migrated", "restored", "from-snapshot", "wakeup", "recreated")),
    3: ("suspended", ("paused", "migrated", "io-error", "watchdog", "restored", "from-snapshot", "api-error", "postcopy", "postcopy-failed")),
    4: ("resumed", ("unpaused", "migrated", "from-snapshot", "postcopy", "postcopy-failed")),
    5: ("stopped", ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot", "recreated")),
    6: ("shutdown", ("finished", "guest", "host")),
    7: ("pmsuspended", ("memory", "disk")),
    8: ("crashed", ("panicked", "crashloaded")),
}

_CLOSE_REASONS = {0: "error", 1: "end of file (the daemon went away)", 2: "keepalive timeout", 3: "closed by client"}


def describe_event(event: int, detail: int) -> str:
    """A lifecycle event as words: (5, 1) -> "stopped/destroyed"."""
    name, details = _EVENTS.get(event, (f"event-{event}", ()))
    return f"{name}/{details[detail]}" if 0 <= detail < len(details) else f"{name}/{detail}"


def describe_close_reason(reason: int) -> str:
    return _CLOSE_REASONS.get(reason, f"reason {reason}")


def ensure_event_loop() -> None:
    """Register libvirt's default event loop implementation and run it in a daemon thread (once)."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True)
        thread.start()
        _loop_thread = thread


def _run_event_loop() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:  # pragma: no cover - an iteration failed; the loop itself goes on
            continue


class DomainEvents:
    """Lifecycle events of every domain of one libvirt URI, and the loss of the connection.

    `on_event(domain_name, "stopped/destroyed")` for each lifecycle event; `on_closed(reason)` once, when
    the connection breaks (daemon restarted or gone, keepalive timeout). After that, open a new instance.
    """

    def __init__(
        self,
        uri: str,
        on_event: Callable[[str, str], None],
        on_closed: Callable[[str], None],
        *,
        keepalive: tuple[int, int] = (3, 3),
    ) -> None:
        self.uri = uri
        self._on_event = on_event
        self._on_closed = on_closed
        self._keepalive = keepalive
        self._conn: Any = None
        self._callback_id: int | None = None
        self._closed_reported = False

    def open(self) -> None:
        """Open the connection and register the callbacks. Raises ConnectionFailed (temporary)."""
        ensure_event_loop()
        conn = open_connection(self.uri)
        try:
            interval, count = self._keepalive
            with contextlib.suppress(libvirt.libvirtError):  # not every driver has keepalive (test:///)
                conn.setKeepAlive(interval, count)
            conn.registerCloseCallback(self._closed, None)
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
            )
        except libvirt.libvirtError as error:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            detail = " ".join(str(error.get_error_message() or error).split())
            raise ConnectionFailed(self.uri, f"registering for events: {detail}") from None
        self._conn = conn

    @property
    def is_open(self) -> bool:
        return self._conn is not None and not self._closed_reported

    def close(self) -> None:
        """Deregister and close. Safe to call twice, and on a connection the daemon already dropped."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._closed_reported = True  # a close we asked for is not a loss
        if self._callback_id is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(self._callback_id)
            self._callback_id = None
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    # --- called in the libvirt event loop thread -------------------------------------------------------

    def _lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: object) -> None:
        try:
            name = str(dom.name())
        except libvirt.libvirtError:  # pragma: no cover - the name is cached client-side
            return
        self._on_event(name, describe_event(event, detail))

    def _closed(self, _conn: Any, reason: int, _opaque: object) -> None:
        if self._closed_reported:
            return
        self._closed_reported = True
        self._on_closed(describe_close_reason(reason))
