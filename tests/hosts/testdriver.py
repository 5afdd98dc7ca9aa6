"""A libvirt test-driver host for the driver's tests (test:///<tmp>/host.xml gives each connection a private
copy): a network o.net, the image pool, one CP210x; and the VM specs and credentials they define."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from epfiot.libvirt.domain import render_domain_xml
from epfiot.libvirt.host import LibvirtHost
from epfiot.model import Credentials, HostUsbDevice, ObservedVm, UsbId, VmSpec

POOL = "epfiot-images"
CP210X = HostUsbDevice(nodedev="usb_1_4", id=UsbId("10c4", "ea60"), bus=1, device=4)
CORAL = HostUsbDevice(nodedev="usb_1_2", id=UsbId("18d1", "9302"), bus=1, device=6)
SECRET_HASH = "$6$saltsalt$0123456789abcdefSECRETHASH"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIsecretkey user@example"
USER_DATA = "#cloud-config\nruncmd: [echo topsecret-user-data]\n"
CREDENTIALS = Credentials(
    user="charlie", password_hash=SECRET_HASH, ssh_authorized_keys=(SSH_KEY,), hostname="h1", user_data=USER_DATA
)

HOST_FILE = f"""<node>
  <network>
    <name>o.net</name>
    <bridge name='epftest0'/>
    <ip address='10.9.0.1' netmask='255.255.255.0'>
      <dhcp><range start='10.9.0.100' end='10.9.0.200'/></dhcp>
    </ip>
  </network>
  <pool type='dir'>
    <name>{POOL}</name>
    <target><path>/var/lib/epfiot/images</path></target>
  </pool>
  <device>
    <name>usb_1_4</name>
    <parent>computer</parent>
    <capability type='usb_device'>
      <bus>1</bus><device>4</device>
      <product id='0xea60'>CP210x UART Bridge</product>
      <vendor id='0x10c4'>Silicon Labs</vendor>
    </capability>
  </device>
</node>
"""


@contextmanager
def open_test_driver(directory: Path) -> Iterator[LibvirtHost]:
    path = directory / "host.xml"
    path.write_text(HOST_FILE)
    with LibvirtHost.open(f"test://{path}") as host:
        yield host


def vm(name: str = "vm", **changes: object) -> VmSpec:
    spec = VmSpec(owner="o", stack="s", name=name, memory_mib=64, vcpu=1, max_memory_mib=128, max_vcpu=2)
    return replace(spec, **changes)  # type: ignore[arg-type]


def render(
    spec: VmSpec,
    usb: tuple[tuple[HostUsbDevice, bool], ...] = (),
    *,
    uuid: str | None = None,
    seed_digest: str = "sha256:seed",
    virt_type: str = "test",
) -> str:
    return render_domain_xml(spec, usb, uuid=uuid, seed_digest=seed_digest, virt_type=virt_type, image_pool=POOL)


def only(host: LibvirtHost, name: str) -> ObservedVm:
    return next(v for v in host.observe().vms if v.libvirt_name == name)
