"""Fixtures shared by the whole suite.

- `system_uri`: the real libvirt daemon with the QEMU driver (started by scripts/libvirtd.sh). A test that
  needs it fails, not skips, when it is missing: a green run must have exercised the real thing.
- `tenant`: a unique owner name for one test; afterwards every libvirt object of that tenant on the real
  daemon (domains, networks, volumes named "<tenant>.*") is removed, whatever the test left behind.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

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
        pytest.fail(f"no libvirt daemon at {SYSTEM_URI} ({error}): run scripts/libvirtd.sh start", pytrace=False)
    conn.close()
    return SYSTEM_URI


@pytest.fixture
def tenant(request: pytest.FixtureRequest) -> Iterator[str]:
    name = "t" + secrets.token_hex(4)
    yield name
    if "system_uri" in request.fixturenames:
        remove_tenant(SYSTEM_URI, name)


def remove_tenant(uri: str, tenant: str) -> None:
    """Remove every domain, network and volume named "<tenant>.*" (or "<tenant>b.*": tests' second tenant)."""
    prefixes = (f"{tenant}.", f"{tenant}b.")
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains():
            if dom.name().startswith(prefixes):
                if dom.isActive():
                    dom.destroy()
                flags = libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                dom.undefineFlags(flags | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        for net in conn.listAllNetworks():
            if net.name().startswith(prefixes):
                if net.isActive():
                    net.destroy()
                net.undefine()
        for pool in conn.listAllStoragePools():
            if not pool.isActive():
                continue
            pool.refresh()
            for vol in pool.listAllVolumes():
                if vol.name().startswith(prefixes):
                    vol.delete()
    finally:
        conn.close()
