"""What tests leave on the real libvirt daemon, and its removal.

Tests name their tenants "t" or "g" + 8 hex digits (tests/conftest.py, tests/test_real_guest.py), and each
test removes its tenant's domains, networks and volumes when it ends. A run that was stopped halfway leaves
them behind, and a leftover overlay pins the base image it was made from (image/build.sh will not replace
a base that overlays use). `python tests/leftovers.py` removes every object named like a test tenant's: CI
runs it before building the image. Names of that shape are the tests' own; nothing else is touched.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

import libvirt

SYSTEM_URI = "qemu:///system"
TEST_TENANT = re.compile(r"[tg][0-9a-f]{8}b?\.")


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
    remove_matching(uri, lambda name: name.startswith(prefixes))


def remove_matching(uri: str, matches: Callable[[str], bool], *, start_pools: bool = False) -> list[str]:
    """Remove every domain, network and storage volume at `uri` whose name `matches`; return their names.
    `start_pools`: also look into pools that are not running, starting them (a daemon restarted on an old
    machine may not have autostarted the image pool, whose volumes still pin its base image)."""
    removed: list[str] = []
    undefine = (
        libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    )
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains():
            if matches(dom.name()):
                removed.append(dom.name())
                _quietly(dom.destroy)
                _quietly(dom.undefineFlags, undefine)  # a transient domain is gone once destroyed
        for net in conn.listAllNetworks():
            if matches(net.name()):
                removed.append(net.name())
                _quietly(net.destroy)
                _quietly(net.undefine)
        for pool in conn.listAllStoragePools():
            try:
                if not pool.isActive():
                    if not start_pools:
                        continue
                    pool.create(0)
                pool.refresh()
                volumes = pool.listAllVolumes()
            except libvirt.libvirtError:
                continue  # another test's pool whose directory is gone: not this tenant's to clean
            for vol in volumes:
                if matches(vol.name()):
                    removed.append(vol.name())
                    _quietly(vol.delete)
    finally:
        conn.close()
    return removed


def main() -> int:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    uri = sys.argv[1] if len(sys.argv) > 1 else SYSTEM_URI
    removed = remove_matching(uri, lambda name: TEST_TENANT.match(name) is not None, start_pools=True)
    print(f"leftovers: removed {len(removed)} test object(s) at {uri}" + "".join(f"\n  {n}" for n in removed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
