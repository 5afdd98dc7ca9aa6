"""Fixtures shared by the whole suite.

- `system_uri`: "qemu:///system", the real libvirt daemon with the QEMU driver (scripts/libvirtd.sh start).
  A test that needs it fails, not skips, when it is missing: a green run must have exercised the real
  thing. Mark such tests `@pytest.mark.daemon`.
- `tenant`: a unique owner name for one test ("t" + 8 hex digits). epfiot names libvirt objects
  "<owner>.<name>"; after a test that used `system_uri`, every domain, network and storage volume named
  "<tenant>.*" (or "<tenant>b.*", for a test's second tenant) on the real daemon is removed, whatever the
  test left behind.
- `test_host_xml`: a factory that writes a libvirt test-driver host file under the test's tmp_path and returns
  its "test:///ABS/PATH" URI: no domains, a dir pool "default", and a few USB devices (see `USB_DEVICES`).
  Each libvirt.open() of that URI is a private in-memory copy.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import escape

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

PCI = "devices/pci0000:00/0000:00:14.0"


@dataclass(frozen=True)
class UsbDevice:
    """One USB device of a test host file. `port` is the kernel's port path ("1-2"), or "usb1" for a root hub.

    The test driver keeps <name>, <path>, <devnode>, <parent> and the capability's bus, device, vendor and
    product (ids and names); it drops anything else (a serial, a port, a driver). So, as on a real host, the
    serial number and device class are files in the device's sysfs directory (<path>), which the fixture
    makes under tmp_path: serial, bDeviceClass, idVendor, idProduct, busnum, devnum, devpath.
    """

    port: str
    vendor: str
    product: str
    vendor_name: str
    product_name: str
    bus: int
    device: int
    serial: str | None = None
    device_class: str = "00"

    @property
    def name(self) -> str:
        return "usb_" + self.port.replace("-", "_").replace(".", "_")

    @property
    def sysfs(self) -> str:
        """The sysfs path relative to the (fake) /sys."""
        return f"{PCI}/usb{self.bus}" if self.port.startswith("usb") else f"{PCI}/usb{self.bus}/{self.port}"


ROOT_HUB = UsbDevice("usb1", "1d6b", "0002", "Linux Foundation", "2.0 root hub", 1, 1, device_class="09")
CORAL_UNICHIP = UsbDevice("1-2", "1a6e", "089a", "Global Unichip Corp.", "", 1, 4)
SERIAL_A1 = UsbDevice("1-3", "10c4", "ea60", "Silicon Labs", "CP210x UART Bridge", 1, 5, serial="A1")
SERIAL_B2 = UsbDevice("1-4", "10c4", "ea60", "Silicon Labs", "CP210x UART Bridge", 1, 6, serial="B2")
# A Coral re-enumerates as 18d1:9302 after its first inference: same port, a new device number.
CORAL_GOOGLE = UsbDevice("1-2", "18d1", "9302", "Google Inc.", "", 1, 7)
# With coral_identity="both": a second Coral, already re-enumerated, on another port.
CORAL_GOOGLE_2 = UsbDevice("1-5", "18d1", "9302", "Google Inc.", "", 1, 8)

CoralIdentity = Literal["unichip", "google", "both"] | None


def usb_devices(coral_identity: CoralIdentity = "unichip") -> list[UsbDevice]:
    corals = {
        "unichip": [CORAL_UNICHIP],
        "google": [CORAL_GOOGLE],
        "both": [CORAL_UNICHIP, CORAL_GOOGLE_2],
        None: [],
    }[coral_identity]
    return [ROOT_HUB, *corals, SERIAL_A1, SERIAL_B2]


def _device_xml(d: UsbDevice, sys_root: Path) -> str:
    parent = "computer" if d.port.startswith("usb") else ROOT_HUB.name
    return f"""  <device>
    <name>{d.name}</name>
    <path>{escape(str(sys_root / d.sysfs))}</path>
    <devnode type='dev'>/dev/bus/usb/{d.bus:03d}/{d.device:03d}</devnode>
    <parent>{parent}</parent>
    <capability type='usb_device'>
      <bus>{d.bus}</bus>
      <device>{d.device}</device>
      <product id='0x{d.product}'>{escape(d.product_name)}</product>
      <vendor id='0x{d.vendor}'>{escape(d.vendor_name)}</vendor>
    </capability>
  </device>
"""


def _write_sysfs(d: UsbDevice, sys_root: Path) -> None:
    folder = sys_root / d.sysfs
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "idVendor": d.vendor,
        "idProduct": d.product,
        "busnum": str(d.bus),
        "devnum": str(d.device),
        "devpath": "0" if d.port.startswith("usb") else d.port.split("-", 1)[1],
        "bDeviceClass": d.device_class,
    }
    if d.serial is not None:
        files["serial"] = d.serial
    for attr, value in files.items():
        (folder / attr).write_text(value + "\n")


COMPUTER = """  <device>
    <name>computer</name>
    <capability type='system'>
      <hardware>
        <vendor>epfiot tests</vendor>
        <version>1</version>
        <serial>0</serial>
        <uuid>5f2b2c46-6d1c-4b5e-9a60-3c0d2d8f0e01</uuid>
      </hardware>
      <firmware>
        <vendor>none</vendor>
        <version>1</version>
        <release_date>01/01/2024</release_date>
      </firmware>
    </capability>
  </device>
"""


@pytest.fixture
def test_host_xml(tmp_path: Path) -> Callable[..., str]:
    """Factory: `test_host_xml(coral_identity="unichip", *, devices=None, extra="", name="host.xml")` -> URI.

    coral_identity: "unichip" (1a6e:089a at port 1-2, bus 1 device 4), "google" (18d1:9302, same port,
    device 7), "both" (the unichip one and a second Coral as 18d1:9302 at port 1-5), or None (no Coral).
    devices: a list of UsbDevice to use instead (coral_identity is then ignored).
    extra: more XML inside <node> (<domain>, <network>, <pool> elements).
    The serial adapters are 10c4:ea60 at ports 1-3 and 1-4 (devices 5 and 6, serials A1 and B2) and the
    root hub is 1d6b:0002 (usb_usb1). The pool "default" is a dir pool of 100 GiB at tmp_path/pool.
    """

    def make(
        coral_identity: CoralIdentity = "unichip",
        *,
        devices: list[UsbDevice] | None = None,
        extra: str = "",
        name: str = "host.xml",
    ) -> str:
        chosen = usb_devices(coral_identity) if devices is None else devices
        sys_root = tmp_path / "sys"
        for d in chosen:
            _write_sysfs(d, sys_root)
        pool_dir = tmp_path / "pool"
        pool_dir.mkdir(exist_ok=True)
        pool = f"""  <pool type='dir'>
    <name>default</name>
    <capacity unit='GiB'>100</capacity>
    <allocation unit='bytes'>0</allocation>
    <available unit='GiB'>100</available>
    <target><path>{escape(str(pool_dir))}</path></target>
  </pool>
"""
        body = COMPUTER + "".join(_device_xml(d, sys_root) for d in chosen) + pool + extra
        path = tmp_path / name
        path.write_text(f"<node>\n{body}</node>\n")
        return f"test://{path.resolve()}"

    return make
