"""Provisioning against the real daemon (qemu:///system): networks with DHCP, real leases, fixed
reservations, overlay disks and the cloud-init seed.

The lease tests need no guest image: a TCG (`type='qemu'`) domain that boots from the network runs iPXE
from its virtio NIC's option ROM, which asks dnsmasq for an address (libvirt-here.md: with KVM no packet
was seen, so TCG). Everything waits by polling with a deadline; nothing sleeps a fixed time.

Each test works as one tenant: its domains and networks are named "<tenant>.*" and removed afterwards (the
`tenant` fixture, and the tests' own clean-up). Storage tests use a pool of their own in a temporary
directory, so the host's image pool is never touched.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from epfiot import cloudinit
from epfiot.addressing import dhcp_range
from epfiot.errors import HostError
from epfiot.libvirt import network, storage
from epfiot.model import (
    Credentials,
    NetworkMode,
    NetworkSpec,
    VmSpec,
    overlay_volume_name,
    seed_volume_name,
)

pytestmark = pytest.mark.daemon

LEASE_DEADLINE = 60.0
MIB = 1024**2
GIB = 1024**3
PASSWORD = "correct horse battery staple"
PASSWORD_HASH = (
    "$6$epfiottestsalt$CybhEfLuq0Ds.X/x5lcclg9WqHvxM4pFvotEjhDK5CVbOmzED86TPKupMTWgeOMQPOeZYog7pvAWkqlbduaei1"
)


@pytest.fixture
def conn(system_uri: str) -> Iterator[Any]:
    c = libvirt.open(system_uri)
    try:
        yield c
    finally:
        c.close()


# --- helpers ---------------------------------------------------------------------------------------------


def _host_routes() -> list[ipaddress.IPv4Network]:
    routes = []
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        destination = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        if int(mask) == 0:
            continue  # the default route overlaps everything and matters to nothing here
        routes.append(ipaddress.IPv4Network(f"{destination}/{mask}", strict=False))
    return routes


def free_subnet(conn: Any) -> str:
    """A random 10.2xx.y.0/24 that no host route and no libvirt network uses."""
    used = _host_routes()
    for net in network.observe_networks(conn):
        if net.cidr:
            used.append(ipaddress.IPv4Network(net.cidr))
    rng = random.Random()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{rng.randint(200, 249)}.{rng.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return str(candidate)
    raise AssertionError("no free 10.2xx.y.0/24 on this host")


def define_routed_network(conn: Any, tenant: str, name: str = "lan") -> NetworkSpec:
    """Define and start a routed network on a free subnet (another subnet if a parallel test took it)."""
    last: HostError | None = None
    for _ in range(5):
        spec = NetworkSpec(
            owner=tenant, stack="prov", name=name, mode=NetworkMode.ROUTE, cidr=free_subnet(conn)
        )
        try:
            network.define_network(conn, spec)
            return spec
        except HostError as e:
            last = e
            network.remove_network(conn, spec.libvirt_name)
    raise AssertionError(f"could not define a network: {last}")


def pxe_domain_xml(name: str, network_name: str, mac: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='network'/></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <interface type='network'>
      <mac address='{mac}'/>
      <source network='{network_name}'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>"""


def remove_domain(conn: Any, name: str) -> None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefine()


def wait_for_lease(
    conn: Any, network_name: str, mac: str, deadline: float = LEASE_DEADLINE
) -> tuple[tuple[str, ...], float]:
    """Poll the network's leases for `mac` until one appears: (addresses, seconds waited)."""
    start = time.monotonic()
    delay = 0.1
    while True:
        found = network.lease_addresses(conn, network_name, mac)
        elapsed = time.monotonic() - start
        if found:
            return found, elapsed
        if elapsed >= deadline:
            raise AssertionError(f"no DHCP lease for {mac} on {network_name} within {deadline:g}s")
        time.sleep(min(delay, deadline - elapsed))
        delay = min(delay * 1.5, 1.0)


def lease_macs_of_domain(dom: Any) -> dict[str, list[str]]:
    interfaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0) or {}
    return {i["hwaddr"]: [a["addr"] for a in i.get("addrs") or []] for i in interfaces.values()}


# --- networks --------------------------------------------------------------------------------------------


def test_network_lifecycle_and_reservations_live_and_persistent(conn: Any, tenant: str) -> None:
    spec = define_routed_network(conn, tenant)
    name = spec.libvirt_name
    try:
        observed = {n.libvirt_name: n for n in network.observe_networks(conn)}[name]
        assert observed.ownership is not None and observed.ownership.owner == tenant
        assert (observed.active, observed.mode, observed.cidr, observed.bridge) == (
            True,
            NetworkMode.ROUTE,
            spec.cidr,
            spec.bridge,
        )
        net = conn.networkLookupByName(name)
        assert net.autostart()
        base = ipaddress.IPv4Network(spec.cidr).network_address
        mac = "52:54:00:7e:00:01"
        for ip in (str(base + 10), str(base + 11)):  # add, then modify
            network.set_dhcp_host(conn, name, mac, ip, "vm1")
            for flags in (0, libvirt.VIR_NETWORK_XML_INACTIVE):  # the running dnsmasq and the definition
                hosts = ET.fromstring(net.XMLDesc(flags)).findall("ip/dhcp/host")
                assert [(h.get("mac"), h.get("ip"), h.get("name")) for h in hosts] == [(mac, ip, "vm1")]
        hostsfile = Path(f"/var/lib/libvirt/dnsmasq/{spec.bridge}.hostsfile")
        if hostsfile.exists():  # the daemon is local: dnsmasq itself was told
            assert f"{base + 11}" in hostsfile.read_text()
        network.remove_dhcp_host(conn, name, mac, str(base + 11))
        for flags in (0, libvirt.VIR_NETWORK_XML_INACTIVE):
            assert ET.fromstring(net.XMLDesc(flags)).findall("ip/dhcp/host") == []
        network.define_network(conn, spec)  # again, as after a crash: no error, same network
        assert conn.networkLookupByName(name).isActive()
    finally:
        network.remove_network(conn, name)
    assert name not in {n.libvirt_name for n in network.observe_networks(conn)}


def test_a_network_booting_tcg_guest_gets_a_lease(conn: Any, tenant: str) -> None:
    spec = define_routed_network(conn, tenant)
    mac = "52:54:00:7e:01:01"
    name = f"{tenant}.pxe"
    try:
        conn.defineXML(pxe_domain_xml(name, spec.libvirt_name, mac)).create()
        addresses, waited = wait_for_lease(conn, spec.libvirt_name, mac)
        print(f"\nTCG guest got its lease {addresses} after {waited:.1f}s")
        assert len(addresses) == 1
        start, end = (ipaddress.IPv4Address(a) for a in dhcp_range(spec))
        assert start <= ipaddress.IPv4Address(addresses[0]) <= end  # from the dynamic range
        assert lease_macs_of_domain(conn.lookupByName(name)) == {mac: [addresses[0]]}
    finally:
        remove_domain(conn, name)
        network.remove_network(conn, spec.libvirt_name)


def test_a_reservation_set_before_start_gives_the_guest_exactly_its_address(conn: Any, tenant: str) -> None:
    spec = define_routed_network(conn, tenant)
    mac = "52:54:00:7e:02:01"
    name = f"{tenant}.fixed"
    fixed = str(ipaddress.IPv4Network(spec.cidr).network_address + 42)  # in the lower half: not dynamic
    try:
        network.set_dhcp_host(conn, spec.libvirt_name, mac, fixed, "fixed")
        conn.defineXML(pxe_domain_xml(name, spec.libvirt_name, mac)).create()
        addresses, waited = wait_for_lease(conn, spec.libvirt_name, mac)
        print(f"\nTCG guest got its reserved lease {addresses} after {waited:.1f}s")
        assert addresses == (fixed,)
    finally:
        remove_domain(conn, name)
        network.remove_network(conn, spec.libvirt_name)


# --- storage ---------------------------------------------------------------------------------------------


@pytest.fixture
def pool(conn: Any, tenant: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A dir pool of this test's own, with a 16 MiB qcow2 base image made through the storage API."""
    name = f"{tenant}-images"
    directory = tmp_path / "images"
    storage.ensure_pool(conn, name, str(directory))
    storage.ensure_pool(conn, name, str(directory))  # idempotent
    found = conn.storagePoolLookupByName(name)
    found.createXML(
        "<volume><name>base-1.0.qcow2</name><capacity unit='MiB'>16</capacity>"
        "<target><format type='qcow2'/></target></volume>",
        0,
    )
    try:
        yield name, directory
    finally:
        for vol in found.listAllVolumes(0):
            vol.delete(0)
        found.destroy()
        found.undefine()


def vm(tenant: str, name: str = "disk", **changes: Any) -> VmSpec:
    spec = VmSpec(
        owner=tenant,
        stack="prov",
        name=name,
        memory_mib=128,
        vcpu=1,
        max_memory_mib=128,
        max_vcpu=1,
        image="base-1.0.qcow2",
        disk_size_gib=1,
    )
    return dataclasses.replace(spec, **changes)


def qemu_img_info(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True, check=True
    )
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def test_overlay_is_created_on_the_base_and_deleted_while_the_base_survives(
    conn: Any, tenant: str, pool: tuple[str, Path]
) -> None:
    pool_name, directory = pool
    spec = vm(tenant)
    storage.create_overlay(conn, pool_name, spec)
    storage.create_overlay(conn, pool_name, spec)  # idempotent
    overlay = directory / overlay_volume_name(tenant, "disk")
    base = directory / "base-1.0.qcow2"
    info = qemu_img_info(overlay)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 1 * GIB
    assert info["backing-filename"] == str(base)
    assert info.get("backing-filename-format", "qcow2") == "qcow2"
    observed = {v.name: v for v in storage.observe_volumes(conn, pool_name)}
    assert observed[overlay.name].backing == str(base)
    assert [v.name for v in storage.base_images(conn, pool_name)] == ["base-1.0.qcow2"]

    storage.delete_volume(conn, pool_name, overlay.name)
    storage.delete_volume(conn, pool_name, overlay.name)  # absent: nothing to do
    assert not overlay.exists()
    assert base.exists()
    assert qemu_img_info(base)["virtual-size"] == 16 * MIB
    assert [v.name for v in storage.observe_volumes(conn, pool_name)] == ["base-1.0.qcow2"]


def test_a_base_image_copied_in_by_hand_appears_and_can_back_an_overlay(
    conn: Any, tenant: str, pool: tuple[str, Path]
) -> None:
    pool_name, directory = pool
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(directory / "debian-12.qcow2"), "8M"], check=True
    )
    images = {v.name: v for v in storage.base_images(conn, pool_name)}  # the pool is refreshed first
    assert set(images) == {"base-1.0.qcow2", "debian-12.qcow2"}
    assert images["debian-12.qcow2"].capacity_bytes == 8 * MIB
    storage.create_overlay(conn, pool_name, vm(tenant, image="debian-12.qcow2", disk_size_gib=None))
    info = qemu_img_info(directory / overlay_volume_name(tenant, "disk"))
    assert (info["virtual-size"], info["backing-filename"]) == (8 * MIB, str(directory / "debian-12.qcow2"))


def download(conn: Any, vol: Any) -> bytes:
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, 0)
    chunks = []
    while True:
        data = stream.recv(256 * 1024)
        if not data:
            break
        chunks.append(data)
    stream.finish()
    return b"".join(chunks)


def test_the_seed_iso_is_uploaded_and_boots_as_a_cdrom_next_to_the_overlay(
    conn: Any, tenant: str, pool: tuple[str, Path]
) -> None:
    pool_name, directory = pool
    credentials = Credentials(
        user="edge", password_hash=PASSWORD_HASH, ssh_authorized_keys=("ssh-ed25519 AAAAkey",)
    )
    spec = vm(tenant, credentials=credentials)
    iso = cloudinit.build_seed_iso(cloudinit.seed_files(spec))
    storage.create_overlay(conn, pool_name, spec)
    storage.write_seed(conn, pool_name, spec.libvirt_name, iso)
    seed_name = seed_volume_name(tenant, "disk")
    vol = conn.storagePoolLookupByName(pool_name).storageVolLookupByName(seed_name)
    uploaded = download(conn, vol)
    assert uploaded == iso
    files = cloudinit.read_seed_iso(uploaded)
    assert b"name: edge" in files["user-data"]
    assert PASSWORD_HASH.encode() in files["user-data"]
    assert PASSWORD.encode() not in uploaded

    # new credentials: the seed is replaced, whatever its new size
    changed = dataclasses.replace(
        spec, credentials=dataclasses.replace(credentials, user_data="#!/bin/sh\n" + "true\n" * 2000)
    )
    iso2 = cloudinit.build_seed_iso(cloudinit.seed_files(changed))
    assert len(iso2) != len(iso)
    storage.write_seed(conn, pool_name, spec.libvirt_name, iso2)
    vol = conn.storagePoolLookupByName(pool_name).storageVolLookupByName(seed_name)
    assert download(conn, vol) == iso2
    assert (directory / seed_name).read_bytes() == iso2

    name = spec.libvirt_name
    xml = f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='{pool_name}' volume='{overlay_volume_name(tenant, "disk")}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='volume' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source pool='{pool_name}' volume='{seed_name}'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
  </devices>
</domain>"""
    try:
        dom = conn.defineXML(xml)
        dom.create()  # qemu opens the overlay (with its backing chain) and the ISO
        disks = ET.fromstring(dom.XMLDesc(0)).findall("devices/disk")
        by_device = {d.get("device"): d for d in disks}
        cdrom = by_device["cdrom"].find("source")
        assert cdrom is not None
        assert (cdrom.get("pool"), cdrom.get("volume")) == (pool_name, seed_name)
        assert by_device["disk"].find("backingStore/source") is not None  # libvirt sees the chain
    finally:
        remove_domain(conn, name)
