"""Names: of owners, stacks and resources, of their libvirt objects and volumes, and the MACs derived from them."""

from __future__ import annotations

import hashlib
import re

# Names of owners, stacks, VMs, networks and things: a DNS label. No dots, so that the libvirt name
# "<owner>.<name>" is unambiguous and two tenants can both have a VM called "example1".
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
LIBVIRT_NAME_SEPARATOR = "."


def libvirt_name(owner: str, name: str) -> str:
    """The libvirt object name of an epfiot resource: owner "charlie", VM "example1" -> "charlie.example1"."""
    return f"{owner}{LIBVIRT_NAME_SEPARATOR}{name}"


# epfiot's own volumes in the image pool: "<owner>.<name>.epfiot-disk.qcow2" and "<owner>.<name>.epfiot-seed.iso".
# Base images share the pool and are named by people ("debian-12.qcow2", "alpine-3.19.qcow2": dots too), so
# the owner.name prefix alone cannot tell them apart; the ".epfiot-" marker can. Names of that exact form are
# reserved; every other volume of the pool is a base image.
OVERLAY_VOLUME_SUFFIX = ".epfiot-disk.qcow2"
SEED_VOLUME_SUFFIX = ".epfiot-seed.iso"
_LABEL = NAME_PATTERN[1:-1]
_EPFIOT_VOLUME = re.compile(rf"{_LABEL}\.{_LABEL}(?:{re.escape(OVERLAY_VOLUME_SUFFIX)}|{re.escape(SEED_VOLUME_SUFFIX)})")


def vm_mac(libvirt_vm_name: str) -> str:
    """The MAC epfiot gives a VM: stable, locally administered, derived from its libvirt name (52:54:00 is
    QEMU's prefix)."""
    digest = hashlib.sha256(libvirt_vm_name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def overlay_volume_name(owner: str, name: str) -> str:
    """The VM's copy-on-write disk in the image pool."""
    return f"{libvirt_name(owner, name)}{OVERLAY_VOLUME_SUFFIX}"


def seed_volume_name(owner: str, name: str) -> str:
    """The VM's cloud-init NoCloud seed ISO in the image pool."""
    return f"{libvirt_name(owner, name)}{SEED_VOLUME_SUFFIX}"


def is_epfiot_volume(volume: str) -> bool:
    """Is this volume of the image pool a VM's overlay or seed (and not a base image)?"""
    return _EPFIOT_VOLUME.fullmatch(volume) is not None
