"""The image pool on the test driver: base images, overlays, seeds. The test driver keeps volumes in memory,
backing stores included, but has no volume upload: seed content is tested on the real daemon
(test_provisioning_daemon.py)."""

from __future__ import annotations

import dataclasses
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from epfiot.errors import HostError
from epfiot.libvirt import storage
from epfiot.model import VmSpec, is_epfiot_volume, overlay_volume_name, seed_volume_name

MIB = 1024**2
GIB = 1024**3


@pytest.fixture
def conn() -> Iterator[Any]:
    c = libvirt.open("test:///default")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def pool(conn: Any) -> Iterator[str]:
    """A fresh dir pool with two base images: a 16 MiB qcow2 with dots in its name, and an 8 MiB raw one."""
    name = f"images-{uuid.uuid4().hex[:8]}"
    storage.ensure_pool(conn, name, f"/srv/{name}")
    found = conn.storagePoolLookupByName(name)
    found.createXML(volume_xml("alpine-3.19.qcow2", 16 * MIB, "qcow2"), 0)
    found.createXML(volume_xml("edge-raw.img", 8 * MIB, "raw"), 0)
    try:
        yield name
    finally:
        for vol in found.listAllVolumes(0):
            vol.delete(0)
        found.destroy()
        found.undefine()


def volume_xml(name: str, capacity: int, fmt: str) -> str:
    return (
        f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"
        f"<target><format type='{fmt}'/></target></volume>"
    )


def vm(**changes: Any) -> VmSpec:
    base = VmSpec(
        owner="charlie",
        stack="edge",
        name="example1",
        memory_mib=256,
        vcpu=1,
        max_memory_mib=256,
        max_vcpu=1,
        image="alpine-3.19.qcow2",
    )
    return dataclasses.replace(base, **changes)


def volume(conn: Any, pool: str, name: str) -> ET.Element:
    return ET.fromstring(conn.storagePoolLookupByName(pool).storageVolLookupByName(name).XMLDesc(0))


def names(conn: Any, pool: str) -> list[str]:
    return [v.name for v in storage.observe_volumes(conn, pool)]


# --- naming ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        (overlay_volume_name("charlie", "example1"), True),
        (seed_volume_name("charlie", "example1"), True),
        ("charlie.example1.epfiot-disk.qcow2", True),
        ("debian-12.qcow2", False),
        ("alpine-3.19.qcow2", False),  # <label>.<label>.qcow2: what the plain owner.name naming would mistake
        ("charlie.example1.qcow2", False),
        ("a.b.c.epfiot-disk.qcow2", False),
        ("Charlie.example1.epfiot-disk.qcow2", False),
        ("epfiot-disk.qcow2", False),
    ],
)
def test_which_volumes_are_epfiots(name: str, ours: bool) -> None:
    assert is_epfiot_volume(name) is ours
    assert storage.is_epfiot_volume(name) is ours


# --- the pool --------------------------------------------------------------------------------------------


def test_ensure_pool_is_idempotent(conn: Any, pool: str) -> None:
    storage.ensure_pool(conn, pool, "/elsewhere")  # an existing pool is used as it is
    found = conn.storagePoolLookupByName(pool)
    assert found.isActive() and found.autostart()
    assert ET.fromstring(found.XMLDesc(0)).findtext("target/path") == f"/srv/{pool}"


def test_a_missing_pool_has_no_volumes(conn: Any) -> None:
    assert storage.observe_volumes(conn, "no-such-pool") == ()
    assert storage.base_images(conn, "no-such-pool") == ()
    storage.delete_volume(conn, "no-such-pool", overlay_volume_name("charlie", "x"))  # nothing to do


def test_a_stopped_pool_has_no_volumes(conn: Any, pool: str) -> None:
    conn.storagePoolLookupByName(pool).destroy()
    assert storage.observe_volumes(conn, pool) == ()
    conn.storagePoolLookupByName(pool).create(0)


def test_overlays_need_the_pool(conn: Any) -> None:
    with pytest.raises(HostError, match="storage pool no-such-pool does not exist"):
        storage.create_overlay(conn, "no-such-pool", vm())


# --- overlays --------------------------------------------------------------------------------------------


def test_overlay_is_backed_by_the_base_image(conn: Any, pool: str) -> None:
    storage.create_overlay(conn, pool, vm())
    name = overlay_volume_name("charlie", "example1")
    xml = volume(conn, pool, name)
    base_path = volume(conn, pool, "alpine-3.19.qcow2").findtext("target/path")
    assert xml.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert xml.findtext("backingStore/path") == base_path
    assert xml.find("backingStore/format").get("type") == "qcow2"  # type: ignore[union-attr]
    observed = {v.name: v for v in storage.observe_volumes(conn, pool)}
    assert observed[name].capacity_bytes == 16 * MIB  # the base's size when none is asked for
    assert observed[name].backing == base_path
    assert observed["alpine-3.19.qcow2"].backing is None


def test_overlay_size_is_at_least_the_base_images(conn: Any, pool: str) -> None:
    storage.create_overlay(conn, pool, vm(name="big", disk_size_gib=2))
    storage.create_overlay(conn, pool, vm(name="raw", image="edge-raw.img", disk_size_gib=None))
    observed = {v.name: v for v in storage.observe_volumes(conn, pool)}
    assert observed[overlay_volume_name("charlie", "big")].capacity_bytes == 2 * GIB
    assert observed[overlay_volume_name("charlie", "raw")].capacity_bytes == 8 * MIB
    raw = volume(conn, pool, overlay_volume_name("charlie", "raw"))
    assert raw.find("backingStore/format").get("type") == "raw"  # type: ignore[union-attr]


def test_overlay_creation_is_idempotent(conn: Any, pool: str) -> None:
    storage.create_overlay(conn, pool, vm())
    before = storage.observe_volumes(conn, pool)
    storage.create_overlay(conn, pool, vm(disk_size_gib=4))  # kept as it is: never resized in place
    assert storage.observe_volumes(conn, pool) == before


def test_an_overlay_backed_by_another_image_is_not_replaced(conn: Any, pool: str) -> None:
    storage.create_overlay(conn, pool, vm())
    with pytest.raises(HostError, match=r"backed by .*alpine-3\.19\.qcow2, not by .*edge-raw\.img"):
        storage.create_overlay(conn, pool, vm(image="edge-raw.img"))


def test_a_missing_base_image_is_an_error(conn: Any, pool: str) -> None:
    with pytest.raises(HostError, match=f"image 'debian-12' not found in storage pool {pool}"):
        storage.create_overlay(conn, pool, vm(image="debian-12"))
    with pytest.raises(HostError, match="has no image"):
        storage.create_overlay(conn, pool, vm(image=None))


def test_another_vms_disk_is_never_a_base_image(conn: Any, pool: str) -> None:
    storage.create_overlay(conn, pool, vm(owner="alice", name="secret"))
    with pytest.raises(HostError, match="is a VM's disk or seed, not a base image"):
        storage.create_overlay(conn, pool, vm(image=overlay_volume_name("alice", "secret")))


def test_a_seed_needs_a_vm_name(conn: Any, pool: str) -> None:
    with pytest.raises(HostError, match="not a VM's libvirt name"):
        storage.write_seed(conn, pool, "nodot", b"\0" * 2048)


# --- seeds -----------------------------------------------------------------------------------------------


def test_seed_volume_is_created_and_replaced(conn: Any, pool: str) -> None:
    storage.write_seed(conn, pool, "charlie.example1", b"\0" * (180 * 2048))
    name = seed_volume_name("charlie", "example1")
    observed = {v.name: v for v in storage.observe_volumes(conn, pool)}
    assert observed[name].capacity_bytes == 180 * 2048
    assert volume(conn, pool, name).find("target/format").get("type") == "raw"  # type: ignore[union-attr]
    storage.write_seed(conn, pool, "charlie.example1", b"\0" * (200 * 2048))
    observed = {v.name: v for v in storage.observe_volumes(conn, pool)}
    assert observed[name].capacity_bytes == 200 * 2048


# --- listing and deleting --------------------------------------------------------------------------------


def test_base_images_are_everything_but_overlays_and_seeds(conn: Any, pool: str) -> None:
    storage.create_overlay(conn, pool, vm())
    storage.write_seed(conn, pool, "charlie.example1", b"\0" * 2048)
    assert names(conn, pool) == [
        "alpine-3.19.qcow2",
        "charlie.example1.epfiot-disk.qcow2",
        "charlie.example1.epfiot-seed.iso",
        "edge-raw.img",
    ]
    assert [v.name for v in storage.base_images(conn, pool)] == ["alpine-3.19.qcow2", "edge-raw.img"]


def test_delete_removes_overlay_and_seed_but_never_a_base_image(conn: Any, pool: str) -> None:
    storage.create_overlay(conn, pool, vm())
    storage.write_seed(conn, pool, "charlie.example1", b"\0" * 2048)
    storage.delete_volume(conn, pool, overlay_volume_name("charlie", "example1"))
    storage.delete_volume(conn, pool, seed_volume_name("charlie", "example1"))
    storage.delete_volume(conn, pool, seed_volume_name("charlie", "example1"))  # absent: nothing to do
    assert names(conn, pool) == ["alpine-3.19.qcow2", "edge-raw.img"]
    with pytest.raises(HostError, match="base images are never deleted"):
        storage.delete_volume(conn, pool, "alpine-3.19.qcow2")
    assert names(conn, pool) == ["alpine-3.19.qcow2", "edge-raw.img"]
