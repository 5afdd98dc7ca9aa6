"""Opening a libvirt connection, mapping libvirt's errors to epfiot's, and choosing the domain type.

Every libvirt call in epfiot goes through `host_errors(operation)`: a libvirtError becomes a HostError that
names the operation and carries libvirt's own message, marked temporary when retrying is worth it (the
daemon is restarting, an RPC broke, another job holds the domain's state change lock).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
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

# A KVM module that offers /dev/kvm but cannot run a stock guest kernel: the PVM backend (a KVM for guests
# inside other VMs) fails a Debian kernel in early boot with "KVM internal error ... emulation failure" and
# leaves the domain paused. Where it is loaded, TCG is the working choice.
KVM_UNFIT_MODULES = {"/sys/module/kvm_pvm": "the PVM backend (kvm_pvm), which cannot boot a stock guest kernel"}

log = logging.getLogger("epfiot.libvirt")


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


def error_code(error: Any) -> int:
    """A libvirtError's virErrorNumber (0 when it has none)."""
    return int(error.get_error_code() or 0)


def lookup_or_none(lookup: Callable[[str], Any], name: str, operation: str, *missing: int) -> Any | None:
    """`lookup(name)`, or None when libvirt answers with one of the error codes `missing` (there is no
    such object); any other libvirtError is the HostError of `operation`."""
    try:
        return lookup(name)
    except libvirt.libvirtError as e:
        if error_code(e) in missing:
            return None
        raise host_error(operation, e) from e


def is_test_driver(conn: Any) -> bool:
    try:
        return str(conn.getType()).lower() == "test"
    except libvirt.libvirtError:
        return False


def kvm_unfit_reason(conn: Any) -> str | None:
    """Why this host's KVM cannot run real guests although libvirt offers it, or None. Only known for a
    daemon on this machine (the module list is the local kernel's)."""
    try:
        local = not conn.getURI().split("://", 1)[1].split("/", 1)[0]
    except (libvirt.libvirtError, IndexError):
        return None
    if not local:
        return None
    return next((why for path, why in KVM_UNFIT_MODULES.items() if os.path.exists(path)), None)


def virt_type(conn: Any, override: str | None = None) -> str:
    """The <domain type=...> to define: `override`, else $EPFIOT_VIRT_TYPE, else "test" on the test driver,
    "kvm" when the host can run KVM guests, else "qemu" (TCG, pure emulation), with a warning when KVM is
    there but unfit (see KVM_UNFIT_MODULES)."""
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
    unfit = kvm_unfit_reason(conn)
    if unfit:
        log.warning("KVM here is %s: new VMs run under TCG (--virt-type qemu), slower; "
                    "--virt-type kvm to use it anyway", unfit)
        return "qemu"
    return "kvm"
