"""Provisioning through the CLI on the real daemon: a routed network with a fixed address, a network-booting
TCG guest that takes its lease (shown by `get vms`), and a VM with a copy-on-write disk and a cloud-init seed.

The guests are TCG (`EPFIOT_VIRT_TYPE=qemu`): under KVM, iPXE sent no DHCP request here.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from test_provisioning_daemon import free_subnet

from epfiot.cli import main
from epfiot.model import overlay_volume_name, seed_volume_name
from tests.stacks import vm, write_stack

pytestmark = pytest.mark.daemon

PASSWORD = "correct horse battery staple 4711"


@pytest.fixture
def conn(system_uri: str) -> Iterator[libvirt.virConnect]:
    c = libvirt.open(system_uri)
    yield c
    c.close()


@pytest.fixture
def image_pool(conn: libvirt.virConnect, tenant: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A pool of the test's own holding a 16 MiB qcow2 base image, "base.qcow2"."""
    name, path = f"{tenant}-pool", tmp_path / "images"
    path.mkdir()
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>"
    )
    pool.create()
    pool.createXML(
        "<volume><name>base.qcow2</name><capacity unit='MiB'>16</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    yield name, path
    pool.refresh()
    for volume in pool.listAllVolumes():
        volume.delete()
    pool.destroy()
    pool.undefine()


def test_network_address_disk_and_seed(
    conn: libvirt.virConnect,
    system_uri: str,
    tenant: str,
    tmp_path: Path,
    image_pool: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EPFIOT_VIRT_TYPE", "qemu")
    monkeypatch.setenv("EPFIOT_TEST_PASSWORD", PASSWORD)
    pool_name, pool_dir = image_pool
    cidr = ipaddress.IPv4Network(free_subnet(conn))
    fixed = str(cidr.network_address + 10)
    stack_dir = tmp_path / "stack"
    stack_dir.mkdir()

    def cli(*argv: str) -> tuple[int, str]:
        code = main(["--connect", system_uri, "--state-dir", str(tmp_path / "state"), "--image-pool", pool_name, *argv])
        out, err = capsys.readouterr()
        return code, out + err

    path = write_stack(
        stack_dir,
        tenant,
        networks=[{"name": "lan", "mode": "route", "cidr": str(cidr)}],
        vms=[
            vm("pxe", memory="128MiB", network="lan", address=fixed, wait_for_address="90s"),
            vm(
                "disk",
                image="base.qcow2",
                state="shutoff",
                credentials={"user": "charlie", "password": {"env": "EPFIOT_TEST_PASSWORD"}},
            ),
        ],
    )
    code, out = cli("plan", "-f", str(path), "--detailed-exitcode")
    assert code == 2, out
    assert PASSWORD not in out
    code, out = cli("apply", "-f", str(path))
    assert code == 0, out
    assert PASSWORD not in out

    # The guest booted iPXE, asked for an address and got exactly its reservation; get vms shows it.
    code, out = cli("get", "vms", "-o", "json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["pxe"]["address"] == fixed
    assert rows["disk"]["state"] == "shutoff"

    # The disk is an overlay on the base image, made through libvirt's storage API; the seed holds the user
    # and the password's SHA-512 crypt hash, never the password.
    pool = conn.storagePoolLookupByName(pool_name)
    pool.refresh()
    overlay = pool.storageVolLookupByName(overlay_volume_name(tenant, "disk"))
    assert "<backingStore>" in overlay.XMLDesc() and str(pool_dir / "base.qcow2") in overlay.XMLDesc()
    seed = (pool_dir / seed_volume_name(tenant, "disk")).read_bytes()
    assert b"charlie" in seed and b"$6$rounds=100000$" in seed  # a random salt, recorded in the state directory
    assert list(json.loads((tmp_path / "state" / "salts.json").read_text())) == [f"{tenant}/{tenant}-stack/disk"]
    assert PASSWORD.encode() not in seed and PASSWORD.encode("utf-16-be") not in seed
    domain_xml = conn.lookupByName(f"{tenant}.disk").XMLDesc()
    assert seed_volume_name(tenant, "disk") in domain_xml and PASSWORD not in domain_xml

    code, out = cli("get", "images", "-o", "json")
    assert [i["name"] for i in json.loads(out)] == ["base.qcow2"]
    assert cli("plan", "-f", str(path), "--detailed-exitcode")[0] == 0

    # A new password rebuilds the seed (shown by digest only) and nothing else.
    monkeypatch.setenv("EPFIOT_TEST_PASSWORD", PASSWORD + "!")
    code, out = cli("plan", "-f", str(path))
    assert "credentials: seed sha256:" in out and PASSWORD not in out
    assert cli("apply", "-f", str(path))[0] == 0
    assert cli("plan", "-f", str(path), "--detailed-exitcode")[0] == 0

    # Pruning the VMs deletes the overlay and the seed; the base image stays.
    write_stack(stack_dir, tenant, networks=[{"name": "lan", "mode": "route", "cidr": str(cidr)}], vms=[])
    code, out = cli("apply", "-f", str(path), "--force", "-y")
    assert code == 0, out
    pool.refresh()
    assert sorted(v.name() for v in pool.listAllVolumes()) == ["base.qcow2"]
    net = conn.networkLookupByName(f"{tenant}.lan")
    assert fixed not in net.XMLDesc()  # the reservation went with its VM
    assert json.loads((tmp_path / "state" / "salts.json").read_text()) == {}  # and the salt of its password
