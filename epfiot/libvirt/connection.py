"""Opening a libvirt connection, mapping libvirt's errors to epfiot's, and choosing the domain type.

Every libvirt call in epfiot goes through `host_errors(operation)`: a libvirtError becomes a HostError that
names the operation and carries libvirt's own message, marked temporary when retrying is worth it (the
daemon is restarting, an RPC broke, another job holds the domain's state change lock).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import libvirt

from epfiot.errors import ConnectionFailed, HostError

DEFAULT_URI = "qemu:///system"
VIRT_TYPE_ENV = "EPFIOT_VIRT_TYPE"
VIRT_TYPES = ("kvm", "qemu", "test")

# Worth retrying: the daemon or the transport failed, or another job is busy with the same domain.
TEMPORARY_CODES = frozenset(
    code
    for code in (
        getattr(libvirt, "VIR_ERR_SYSTEM_ERROR", None),
        getattr(libvirt, "VIR_ERR_RPC", None),
        getattr(libvirt, "VIR_ERR_OPERATION_TIMEOUT", None),
        getattr(libvirt, "VIR_ERR_NO_CONNECT", None),
        getattr(libvirt, "VIR_ERR_AGENT_UNRESPONSIVE", None),
    )
    if code is not None
)
TEMPORARY_MESSAGES = ("cannot acquire state change lock",)


def _silence(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; epfiot reports them itself."""


libvirt.registerErrorHandler(_silence, None)


def default_uri() -> str:
    return os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def open_connection(uri: str | None = None) -> Any:
    """A read-write connection to `uri` (default: $LIBVIRT_DEFAULT_URI, else qemu:///system).

    Raises ConnectionFailed with libvirt's message, as one line.
    """
    target = uri or default_uri()
    try:
        conn = libvirt.open(target)
    except libvirt.libvirtError as e:
        raise ConnectionFailed(target, _message(e)) from None
    if conn is None:  # pragma: no cover - old bindings returned None instead of raising
        raise ConnectionFailed(target, "libvirt returned no connection")
    return conn


def _message(error: Any) -> str:
    text = error.get_error_message() or str(error)
    return " ".join(str(text).split())  # one line, always


def is_temporary(error: Any) -> bool:
    if error.get_error_code() in TEMPORARY_CODES:
        return True
    text = str(error.get_error_message() or "")
    return any(marker in text for marker in TEMPORARY_MESSAGES)


def host_error(operation: str, error: Any) -> HostError:
    """The HostError for a libvirtError raised by `operation` (e.g. "start charlie.example1")."""
    return HostError(f"{operation}: {_message(error)}", temporary=is_temporary(error))


@contextmanager
def host_errors(operation: str) -> Iterator[None]:
    """Map a libvirtError raised inside the block to HostError(operation: libvirt's message)."""
    try:
        yield
    except libvirt.libvirtError as e:
        raise host_error(operation, e) from e


def error_code(error: Any) -> int | None:
    code = error.get_error_code()
    return int(code) if code is not None else None


def is_test_driver(conn: Any) -> bool:
    try:
        return str(conn.getType()).lower() == "test"
    except libvirt.libvirtError:
        return False


def virt_type(conn: Any, override: str | None = None) -> str:
    """The <domain type=...> to define: `override`, else $EPFIOT_VIRT_TYPE, else "test" on the test driver,
    "kvm" when the host can run KVM guests, else "qemu" (TCG, pure emulation)."""
    chosen = override or os.environ.get(VIRT_TYPE_ENV) or None
    if chosen:
        if chosen not in VIRT_TYPES:
            raise HostError(f"unknown virtualisation type {chosen!r} (expected one of: {', '.join(VIRT_TYPES)})")
        return chosen
    if is_test_driver(conn):
        return "test"
    try:
        conn.getDomainCapabilities(None, None, None, "kvm", 0)
    except libvirt.libvirtError:
        return "qemu"
    return "kvm"
