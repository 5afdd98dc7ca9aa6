"""The image pool: base images, the VMs' copy-on-write overlays and their cloud-init seed ISOs.

The pool is a libvirt `dir` pool (default name "epfiot-images", directory /var/lib/epfiot/images; the CLI's
--image-pool chooses the name). Base images are put there by people (copied in, or uploaded with virsh) and
are only ever read: a VM with `image:` gets its own qcow2 overlay whose backing store is the base volume,
created through libvirt's storage API (qemu-img underneath), never a copy of the file.

Which volumes are epfiot's (epfiot.model): a VM's overlay is "<owner>.<name>.epfiot-disk.qcow2" and its seed
"<owner>.<name>.epfiot-seed.iso", where owner and name are DNS labels (no dots). Only names of exactly that
form are epfiot's (`is_epfiot_volume`); everything else in the pool is a base image, including names with
dots like "debian-12.qcow2" or "alpine-3.19.qcow2". So `base_images` and `epfiot get images` never list an
overlay, and deleting a VM's volumes can never hit a base image.
"""

from __future__ import annotations

import contextlib
from typing import Any

import libvirt

from epfiot.errors import HostError
from epfiot.libvirt.connection import error_code, host_error, host_errors, is_test_driver, lookup_or_none
from epfiot.libvirt.xmlmodel import ScaledInteger, XmlChild, XmlObject, text
from epfiot.model import (
    ObservedVolume,
    VmSpec,
    is_epfiot_volume,
    overlay_volume_name,
    seed_volume_name,
)

__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_POOL_PATH",
    "base_images",
    "create_overlay",
    "delete_volume",
    "ensure_pool",
    "is_epfiot_volume",
    "observe_volumes",
    "pool_running",
    "write_seed",
]

DEFAULT_POOL = "epfiot-images"
DEFAULT_POOL_PATH = "/var/lib/epfiot/images"
GIB = 1024**3
_CHUNK = 256 * 1024


# --- the pool --------------------------------------------------------------------------------------------


def _lookup_pool(conn: Any, pool: str) -> Any | None:
    return lookup_or_none(
        conn.storagePoolLookupByName,
        pool,
        f"look up storage pool {pool}",
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_SUPPORT,
    )


def pool_running(conn: Any, pool: str) -> bool:
    """Is there a storage pool called `pool`, started? (False on a driver without storage pools.) A stopped
    pool lists no volumes: it counts as none, so that apply starts it (ensure_pool)."""
    found = _lookup_pool(conn, pool)
    if found is None:
        return False
    with host_errors(f"read storage pool {pool}"):
        return bool(found.isActive())


def _require_pool(conn: Any, pool: str) -> Any:
    found = _lookup_pool(conn, pool)
    if found is None:
        raise HostError(
            f"storage pool {pool} does not exist (create it with: epfiot's ensure_pool, or virsh pool-define-as)"
        )
    with host_errors(f"start storage pool {pool}"):
        if not found.isActive():
            found.create(0)
    return found


def pool_xml(name: str, path: str) -> str:
    import xml.etree.ElementTree as ET  # only a change writes XML: a no-op apply does not import it

    pool = ET.Element("pool", {"type": "dir"})
    ET.SubElement(pool, "name").text = name
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = path
    return ET.tostring(pool, encoding="unicode")


def ensure_pool(conn: Any, name: str = DEFAULT_POOL, path: str = DEFAULT_POOL_PATH) -> None:
    """Make sure the dir pool `name` exists, is built (its directory exists), started and autostarted.
    An existing pool of that name is used as it is, wherever its directory is."""
    pool = _lookup_pool(conn, name)
    if pool is None:
        with host_errors(f"define storage pool {name}"):
            pool = conn.storagePoolDefineXML(pool_xml(name, path), 0)
        with host_errors(f"build storage pool {name}"):
            pool.build(0)  # creates the directory; fine if it exists
    with host_errors(f"start storage pool {name}"):
        if not pool.isActive():
            pool.create(0)
    with host_errors(f"autostart storage pool {name}"):
        if not pool.autostart():
            pool.setAutostart(1)


# --- reading ---------------------------------------------------------------------------------------------


class VolumeXml(XmlObject):
    """What epfiot reads of a storage volume document."""

    TAG = "volume"

    name = text("name")
    capacity = XmlChild(ScaledInteger, "capacity")  # bytes without a unit
    path = text("target/path")
    format = text("target/format/@type")
    backing = text("backingStore/path")

    @property
    def capacity_bytes(self) -> int:
        return self.capacity.bytes("bytes") if self.capacity is not None else 0


def parse_volume(pool: str, xml: str) -> ObservedVolume:
    doc = VolumeXml.from_xml(xml)
    backing = (doc.backing or "").strip()
    return ObservedVolume(
        pool=pool,
        name=(doc.name or "").strip(),
        capacity_bytes=doc.capacity_bytes,
        backing=backing or None,
    )


def observe_volumes(conn: Any, pool: str) -> tuple[ObservedVolume, ...]:
    """The volumes of the pool, sorted by name; () when the pool does not exist or is not running.

    The pool is refreshed first, so that base images copied into its directory by hand appear. A refresh
    that fails (another client is creating a volume in it right now) is not an error: the last listing is used.
    """
    found = _lookup_pool(conn, pool)
    if found is None:
        return ()
    with host_errors(f"read storage pool {pool}"):
        if not found.isActive():
            return ()
    try:
        found.refresh(0)
    except libvirt.libvirtError as e:
        if error_code(e) == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return ()
    with host_errors(f"list volumes of storage pool {pool}"):
        volumes = found.listAllVolumes(0)
    observed = []
    for vol in volumes:
        try:
            xml = vol.XMLDesc(0)
        except libvirt.libvirtError as e:
            if error_code(e) == libvirt.VIR_ERR_NO_STORAGE_VOL:
                continue  # deleted between the listing and now
            raise host_error(f"read volume {vol.name()} of storage pool {pool}", e) from e
        observed.append(parse_volume(pool, xml))
    observed.sort(key=lambda v: v.name)
    return tuple(observed)


def base_images(conn: Any, pool: str) -> tuple[ObservedVolume, ...]:
    """The base images of the pool: every volume that is not a VM's overlay or seed."""
    return tuple(v for v in observe_volumes(conn, pool) if not is_epfiot_volume(v.name))


def _lookup_volume(pool: Any, name: str) -> Any | None:
    return lookup_or_none(
        pool.storageVolLookupByName, name, f"look up volume {name}", libvirt.VIR_ERR_NO_STORAGE_VOL
    )


# --- overlays --------------------------------------------------------------------------------------------


def overlay_xml(name: str, capacity: int, backing_path: str, backing_format: str) -> str:
    import xml.etree.ElementTree as ET

    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", {"unit": "bytes"}).text = str(capacity)
    target = ET.SubElement(volume, "target")
    ET.SubElement(target, "format", {"type": "qcow2"})
    backing = ET.SubElement(volume, "backingStore")
    ET.SubElement(backing, "path").text = backing_path
    ET.SubElement(backing, "format", {"type": backing_format})
    return ET.tostring(volume, encoding="unicode")


def create_overlay(conn: Any, pool: str, spec: VmSpec) -> None:
    """Create the VM's qcow2 overlay backed by its base image `spec.image` (a volume of the same pool), with
    capacity max(base capacity, disk_size_gib). An existing overlay backed by that base is kept as it is
    (never resized: the VM may be using it); one backed by anything else is an error, never replaced."""
    if not spec.image:
        raise HostError(f"create disk of {spec.libvirt_name}: the VM has no image")
    if is_epfiot_volume(spec.image):
        raise HostError(
            f"create disk of {spec.libvirt_name}: {spec.image!r} is a VM's disk or seed, not a base image"
        )
    name = overlay_volume_name(spec.owner, spec.name)
    found = _require_pool(conn, pool)
    base = _lookup_volume(found, spec.image)
    if base is None:
        raise HostError(
            f"create disk of {spec.libvirt_name}: image {spec.image!r} not found in storage pool {pool}"
        )
    with host_errors(f"read image {spec.image} of storage pool {pool}"):
        base_doc = VolumeXml.from_xml(base.XMLDesc(0))
    base_path = (base_doc.path or "").strip()
    base_format = base_doc.format or "raw"
    if base_format in ("iso", "none", "auto", "unknown"):
        base_format = "raw"
    existing = _lookup_volume(found, name)
    if existing is not None:
        with host_errors(f"read volume {name}"):
            current = parse_volume(pool, existing.XMLDesc(0))
        if current.backing == base_path:
            return
        raise HostError(
            f"create disk of {spec.libvirt_name}: volume {name} exists in storage pool {pool} "
            f"backed by {current.backing or 'nothing'}, not by {base_path}; delete it first"
        )
    capacity = max(base_doc.capacity_bytes, (spec.disk_size_gib or 0) * GIB)
    with host_errors(f"create disk {name} in storage pool {pool}"):
        found.createXML(overlay_xml(name, capacity, base_path, base_format), 0)


# --- seeds -----------------------------------------------------------------------------------------------


def seed_xml(name: str, size: int) -> str:
    import xml.etree.ElementTree as ET

    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", {"unit": "bytes"}).text = str(size)
    target = ET.SubElement(volume, "target")
    ET.SubElement(target, "format", {"type": "raw"})
    return ET.tostring(volume, encoding="unicode")


def write_seed(conn: Any, pool: str, name: str, iso: bytes) -> None:
    """Create or replace the seed ISO volume of the VM `name` (its libvirt name, "<owner>.<vm>"): a raw volume
    of exactly len(iso) bytes, its content uploaded through a libvirt stream (so this works on a remote
    connection too). A failed upload leaves no volume behind.

    The test driver has no virStorageVolUpload (and keeps no content anyway): there the volume is created
    with the ISO's size and no content; the upload itself is tested against the real daemon."""
    owner, _, vm = name.partition(".")
    if not owner or not vm:
        raise HostError(f"write seed: {name!r} is not a VM's libvirt name (<owner>.<name>)")
    volume_name = seed_volume_name(owner, vm)
    found = _require_pool(conn, pool)
    existing = _lookup_volume(found, volume_name)
    if existing is not None:
        with host_errors(f"replace seed {volume_name}"):
            existing.delete(0)
    with host_errors(f"create seed {volume_name} in storage pool {pool}"):
        vol = found.createXML(seed_xml(volume_name, len(iso)), 0)
    try:
        _upload(conn, vol, iso)
    except libvirt.libvirtError as e:
        if error_code(e) == libvirt.VIR_ERR_NO_SUPPORT and is_test_driver(conn):
            return  # the test driver keeps no volume content (and has no virStorageVolUpload): the volume is it
        with contextlib.suppress(libvirt.libvirtError):  # the upload's error is the one worth reporting
            vol.delete(0)
        raise host_error(f"upload seed {volume_name} to storage pool {pool}", e) from e


def _upload(conn: Any, vol: Any, data: bytes) -> None:
    stream = conn.newStream(0)
    try:
        vol.upload(stream, 0, len(data), 0)
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            sent = stream.send(bytes(view[offset : offset + _CHUNK]))
            if sent < 0:  # -2: would block, only on a non-blocking stream
                raise HostError("seed upload: the stream refused data")
            offset += sent
        stream.finish()
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise


# --- deleting --------------------------------------------------------------------------------------------


def delete_volume(conn: Any, pool: str, volume: str) -> None:
    """Delete a volume of the pool. No error if it (or the pool) is absent. Only epfiot's own volumes
    (overlays and seeds) are ever deleted: a base image is refused."""
    if not is_epfiot_volume(volume):
        raise HostError(
            f"delete volume {volume}: not a VM disk or seed of epfiot; base images are never deleted"
        )
    found = _lookup_pool(conn, pool)
    if found is None:
        return
    with host_errors(f"read storage pool {pool}"):
        if not found.isActive():
            return
    vol = _lookup_volume(found, volume)
    if vol is None:
        return
    try:
        vol.delete(0)
    except libvirt.libvirtError as e:
        if error_code(e) == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return
        raise host_error(f"delete volume {volume} of storage pool {pool}", e) from e
