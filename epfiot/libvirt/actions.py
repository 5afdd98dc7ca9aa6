"""What epfiot does to domains through a libvirt connection: define, start, stop, pause, undefine, resize,
attach and detach USB devices. Each function does what it says or raises a HostError naming the operation
and the domain; asking for a state the domain is already in is not an error. Reading is epfiot.libvirt.facts.
"""

from __future__ import annotations

import time
from typing import Any

import libvirt

from epfiot.errors import HostError
from epfiot.libvirt.connection import error_code, host_error, host_errors
from epfiot.libvirt.facts import find_domain
from epfiot.libvirt.usb import hostdev_xml
from epfiot.model import AttachedUsb, HostUsbDevice

_LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
_CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
    # drivers that refuse some flags (the test driver has no NVRAM or checkpoints)
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    0,
)
_REFUSED_FLAGS = frozenset({libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT})


def _domain(conn: Any, name: str, operation: str) -> Any:
    with host_errors(f"{operation} {name}"):
        return conn.lookupByName(name)


def define(conn: Any, name: str, xml: str) -> None:
    """Define (create or replace) the persistent definition `xml` of the domain `name`."""
    with host_errors(f"define {name}"):
        conn.defineXML(xml)


def start(conn: Any, name: str, *, paused: bool = False) -> None:
    dom = _domain(conn, name, "start")
    with host_errors(f"start {name}"):
        if dom.isActive():
            return  # already started: nothing to do
        if not paused:
            dom.create()
            return
        try:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        except libvirt.libvirtError as e:
            if error_code(e) not in _REFUSED_FLAGS:
                raise
            dom.create()  # a driver without START_PAUSED (the test driver): start, then pause
            dom.suspend()


def shutdown(conn: Any, name: str, *, timeout: float) -> bool:
    """ACPI shutdown, polled until `timeout`, then destroy; True when it stopped by itself. A paused VM is
    resumed first: a guest that does not run cannot act on ACPI."""
    dom = _domain(conn, name, "shut down")
    deadline = time.monotonic() + max(0.0, timeout)
    with host_errors(f"shut down {name}"):
        if not dom.isActive():
            return True
        try:
            state = dom.state()[0]
            if state == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            elif state == libvirt.VIR_DOMAIN_PMSUSPENDED:
                dom.pMWakeup(0)
            dom.shutdown()
        except libvirt.libvirtError:
            if not dom.isActive():
                return True
            deadline = 0.0  # ACPI refused (no guest support): straight to destroy
        delay = 0.02
        while True:
            if not dom.isActive():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)
    _destroy(dom, name)
    return False


def destroy(conn: Any, name: str) -> None:
    _destroy(_domain(conn, name, "destroy"), name)


def _destroy(dom: Any, name: str) -> None:
    try:
        dom.destroy()
    except libvirt.libvirtError as e:
        try:
            active = dom.isActive()
        except libvirt.libvirtError:
            active = True
        if active:
            raise host_error(f"destroy {name}", e) from e
        # already off (or went off by itself meanwhile): done


def suspend(conn: Any, name: str) -> None:
    dom = _domain(conn, name, "suspend")
    with host_errors(f"suspend {name}"):
        if dom.state()[0] in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
            return
        dom.suspend()


def resume(conn: Any, name: str) -> None:
    dom = _domain(conn, name, "resume")
    with host_errors(f"resume {name}"):
        state = dom.state()[0]
        try:
            if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
                dom.pMWakeup(0)
            elif state == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
        except libvirt.libvirtError:
            if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
                raise  # else it got there by itself (it was still starting up)


def undefine(conn: Any, name: str) -> None:
    """Remove the definition with its nvram, managed save and snapshot metadata; refused while it runs."""
    dom = find_domain(conn, name)
    if dom is None:
        return  # already gone
    with host_errors(f"undefine {name}"):
        if dom.isActive():
            raise HostError(f"undefine {name}: the domain is running; stop it first")
        for flags in _UNDEFINE_FLAGS:
            try:
                if flags:
                    dom.undefineFlags(flags)
                else:
                    dom.undefine()
                return
            except libvirt.libvirtError as e:
                if flags == 0 or error_code(e) not in _REFUSED_FLAGS:
                    raise


def set_vcpus(conn: Any, name: str, count: int, *, live: bool) -> None:
    dom = _domain(conn, name, "set vcpus of")
    with host_errors(f"set the vcpus {'live ' if live else ''}of {name} to {count}"):
        dom.setVcpusFlags(count, _LIVE if live else _CONFIG)


def set_memory(conn: Any, name: str, mib: int, *, live: bool) -> None:
    dom = _domain(conn, name, "set memory of")
    with host_errors(f"set memory to {mib} MiB {'live ' if live else ''}on {name}"):
        dom.setMemoryFlags(mib * 1024, _LIVE if live else _CONFIG)


def attach_usb(conn: Any, name: str, device: HostUsbDevice, *, required: bool, live: bool) -> None:
    dom = _domain(conn, name, "attach USB to")
    xml = hostdev_xml(device, required=required)
    with host_errors(f"attach USB {device.id} {'live ' if live else ''}to {name}"):
        dom.attachDeviceFlags(xml, _LIVE if live else _CONFIG)


def detach_usb(conn: Any, name: str, device: AttachedUsb, *, live: bool) -> None:
    dom = _domain(conn, name, "detach USB from")
    host_device = HostUsbDevice(nodedev="", id=device.id, bus=device.bus or 0, device=device.device or 0)
    xml = hostdev_xml(host_device, required=device.required)
    with host_errors(f"detach USB {device.id} {'live ' if live else ''}from {name}"):
        dom.detachDeviceFlags(xml, _LIVE if live else _CONFIG)
