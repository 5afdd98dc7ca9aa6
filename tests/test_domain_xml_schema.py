"""Every shape of domain XML that templates/domain.xml.j2 can produce, and every golden domain and network
file (tests/golden/, see test_golden_xml.py), passes libvirt's own schema (virt-xml-validate FILE KIND, from
libvirt-clients)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from epfiot.libvirt.domain import render_domain_xml
from epfiot.model import Credentials, HostUsbDevice, PowerState, UsbId, VmSpec

VALIDATOR = shutil.which("virt-xml-validate")
CP210X = HostUsbDevice(nodedev="usb_1_1_1", id=UsbId("10c4", "ea60"), bus=1, device=4, port="1-1.1")
CORAL = HostUsbDevice(nodedev="usb_1_2", id=UsbId("1a6e", "089a"), bus=1, device=3, port="1-2")
UNADDRESSED = HostUsbDevice(nodedev="", id=UsbId("0403", "6001"))  # bus/device unknown: no <address>
CREDENTIALS = Credentials(user="charlie", password_hash="$6$salt$hash", ssh_authorized_keys=("ssh-ed25519 AAAA k",))

BASE = VmSpec(owner="alice", stack="edge", name="example1", memory_mib=64, vcpu=1, max_memory_mib=64, max_vcpu=1)

SHAPES: dict[str, tuple[VmSpec, tuple[tuple[HostUsbDevice, bool], ...]]] = {
    "bare": (BASE, ()),
    "headroom": (replace(BASE, memory_mib=256, max_memory_mib=1024, vcpu=1, max_vcpu=4), ()),
    "image": (replace(BASE, image="debian-12", disk_size_gib=8), ()),
    "credentials": (replace(BASE, credentials=CREDENTIALS), ()),
    "network": (replace(BASE, network="edge"), ()),
    "network-address": (replace(BASE, network="edge", address="10.128.0.10"), ()),
    "image-network-credentials": (replace(BASE, image="debian-12", network="edge", credentials=CREDENTIALS), ()),
    "usb-required": (BASE, ((CP210X, True),)),
    "usb-optional": (BASE, ((CORAL, False),)),
    "usb-unaddressed": (BASE, ((UNADDRESSED, True),)),
    "usb-several": (BASE, ((CP210X, True), (CORAL, False), (UNADDRESSED, False))),
    "paused": (replace(BASE, state=PowerState.PAUSED), ()),
    "shutoff": (replace(BASE, state=PowerState.SHUTOFF), ()),
    "everything": (
        replace(
            BASE, image="debian-12", network="edge", credentials=CREDENTIALS, memory_mib=512, max_memory_mib=2048, max_vcpu=2
        ),
        ((CP210X, True), (CORAL, False)),
    ),
}


@pytest.mark.parametrize("virt_type", ["kvm", "qemu", "test"])
@pytest.mark.parametrize("uuid", [None, "6c0e9a3e-7d4b-4f0e-9b1a-2f3c4d5e6f70"], ids=["new", "existing"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_domain_xml_is_valid(tmp_path: Path, shape: str, uuid: str | None, virt_type: str) -> None:
    assert VALIDATOR, "virt-xml-validate is missing: apt-get install libvirt-clients"
    spec, usb = SHAPES[shape]
    path = tmp_path / f"{shape}.xml"
    path.write_text(
        render_domain_xml(spec, usb, uuid=uuid, seed_digest="sha256:0123", virt_type=virt_type, image_pool="epfiot-images")
    )
    result = subprocess.run([VALIDATOR, str(path), "domain"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{path.read_text()}"


GOLDEN = sorted((Path(__file__).resolve().parent / "golden").rglob("*.xml"))


def test_there_are_golden_files() -> None:
    assert any(p.name.endswith(".domain.xml") for p in GOLDEN) and any(p.name.endswith(".network.xml") for p in GOLDEN)


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden_xml_is_valid(path: Path) -> None:
    assert VALIDATOR, "virt-xml-validate is missing: apt-get install libvirt-clients"
    kind = "network" if path.name.endswith(".network.xml") else "domain"
    result = subprocess.run([VALIDATOR, str(path), kind], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"
