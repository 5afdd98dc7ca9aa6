"""Fixtures shared by the whole suite.

- `system_uri`: "qemu:///system", the real libvirt daemon with the QEMU driver (scripts/libvirtd.sh start).
  A test that needs it fails, not skips, when it is missing: a green run must have exercised the real
  thing. Mark such tests `@pytest.mark.daemon`.
- `tenant`: a unique owner name for one test ("t" + 8 hex digits). epfiot names libvirt objects
  "<owner>.<name>"; after a test that used `system_uri`, every domain, network and storage volume named
  "<tenant>.*" (or "<tenant>b.*", for a test's second tenant) on the real daemon is removed, whatever the
  test left behind.

Test-driver hosts with USB node devices (and the sysfs files real hosts have) come from tests/hosts/usbhost.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

SYSTEM_URI = "qemu:///system"


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; tests read errors from the exceptions."""


libvirt.registerErrorHandler(_silence, None)


@pytest.fixture(scope="session")
def system_uri() -> str:
    try:
        conn = libvirt.open(SYSTEM_URI)
    except libvirt.libvirtError as error:
        pytest.fail(
            f"no libvirt daemon at {SYSTEM_URI}: run scripts/libvirtd.sh start ({error.get_error_message()})",
            pytrace=False,
        )
    conn.close()
    return SYSTEM_URI


@pytest.fixture
def tenant(request: pytest.FixtureRequest) -> Iterator[str]:
    name = "t" + secrets.token_hex(4)
    yield name
    if "system_uri" in request.fixturenames:  # the test (or one of its fixtures) used the real daemon
        remove_tenant(SYSTEM_URI, name)


_GONE = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_NETWORK,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_OPERATION_INVALID,  # e.g. destroying a domain that has just stopped
}


def _quietly(call: Callable[..., Any], *args: Any) -> None:
    """Run one clean-up call; an object that went away meanwhile is fine, anything else is raised."""
    try:
        call(*args)
    except libvirt.libvirtError as error:
        if error.get_error_code() not in _GONE:
            raise


def remove_tenant(uri: str, tenant: str) -> None:
    """Remove every domain, network and volume named "<tenant>.*" or "<tenant>b.*" at `uri`."""
    prefixes = (f"{tenant}.", f"{tenant}b.")
    undefine = (
        libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    )
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains():
            if dom.name().startswith(prefixes):
                _quietly(dom.destroy)
                _quietly(dom.undefineFlags, undefine)  # a transient domain is gone once destroyed
        for net in conn.listAllNetworks():
            if net.name().startswith(prefixes):
                _quietly(net.destroy)
                _quietly(net.undefine)
        for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            try:
                pool.refresh()
                volumes = pool.listAllVolumes()
            except libvirt.libvirtError:
                continue  # another test's pool whose directory is gone: not this tenant's to clean
            for vol in volumes:
                if vol.name().startswith(prefixes):
                    _quietly(vol.delete)
    finally:
        conn.close()


# --- test-driver host files --------------------------------------------------------------------------------
