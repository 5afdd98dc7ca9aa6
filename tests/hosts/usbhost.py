"""A libvirt test-driver host file with USB node devices, and the fake sysfs tree behind it.

libvirt's node device XML has no serial number; epfiot.libvirt.usb reads it from the device's sysfs path
(<path>), as on a real host. The test driver keeps <path> as written, so the devices here point into a
directory tree under the test's temp dir holding `serial` and `bDeviceClass` files, like /sys does.

The devices, modelled on a real host (names and paths as libvirt's udev backend makes them):
    usb_usb1     1d6b:0002 root hub                      bus 1 device 1
    usb_1_1      05e3:0610 external hub (interface class 9)  bus 1 device 2   port 1-1
    usb_1_1_1    10c4:ea60 CP210x, serial A1             bus 1 device 4   port 1-1.1
    usb_1_1_2    10c4:ea60 CP210x, serial B2             bus 1 device 5   port 1-1.2
    usb_1_2      a Coral: 1a6e:089a (device 3) before its first inference, 18d1:9302 (device 6) after
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

PCI = "devices/pci0000:00/0000:00:14.0"

CORAL_BOOT = "1a6e:089a"  # Global Unichip, as it first enumerates
CORAL_GOOGLE = "18d1:9302"  # after its first inference


@dataclass(frozen=True)
class FakeUsb:
    name: str
    parent: str
    sysfs: str  # relative to the fake sysfs root, e.g. "devices/pci.../usb1/1-1/1-1.1"
    vendor: str
    product: str
    vendor_name: str
    product_name: str
    bus: int
    device: int
    serial: str | None = None
    device_class: str = "00"
    hub_interface: bool = False


def coral(identity: str = CORAL_BOOT) -> FakeUsb:
    vendor, product = identity.split(":")
    if identity == CORAL_BOOT:
        return FakeUsb("usb_1_2", "usb_usb1", f"{PCI}/usb1/1-2", vendor, product, "Global Unichip Corp.", "", 1, 3)
    return FakeUsb("usb_1_2", "usb_usb1", f"{PCI}/usb1/1-2", vendor, product, "Google Inc.", "", 1, 6)


def standard_devices(*, coral_identity: str | None = CORAL_BOOT) -> list[FakeUsb]:
    devices = [
        FakeUsb("usb_usb1", "pci_0000_00_14_0", f"{PCI}/usb1", "1d6b", "0002", "Linux Foundation", "2.0 root hub", 1, 1, device_class="09"),
        FakeUsb(
            "usb_1_1", "usb_usb1", f"{PCI}/usb1/1-1", "05e3", "0610", "Genesys Logic, Inc.", "GL850G", 1, 2, hub_interface=True
        ),
        FakeUsb(
            "usb_1_1_1", "usb_1_1", f"{PCI}/usb1/1-1/1-1.1", "10c4", "ea60", "Silicon Labs", "CP210x UART Bridge", 1, 4, serial="A1"
        ),
        FakeUsb(
            "usb_1_1_2", "usb_1_1", f"{PCI}/usb1/1-1/1-1.2", "10c4", "ea60", "Silicon Labs", "CP210x UART Bridge", 1, 5, serial="B2"
        ),
    ]
    if coral_identity is not None:
        devices.append(coral(coral_identity))
    return devices


def device_xml(d: FakeUsb, sysfs_root: Path) -> str:
    path = escape(str(sysfs_root / d.sysfs))
    xml = f"""  <device>
    <name>{d.name}</name>
    <path>{path}</path>
    <devnode type='dev'>/dev/bus/usb/{d.bus:03d}/{d.device:03d}</devnode>
    <parent>{d.parent}</parent>
    <capability type='usb_device'>
      <bus>{d.bus}</bus>
      <device>{d.device}</device>
      <product id='0x{d.product}'>{escape(d.product_name)}</product>
      <vendor id='0x{d.vendor}'>{escape(d.vendor_name)}</vendor>
    </capability>
  </device>
"""
    if d.hub_interface:
        xml += f"""  <device>
    <name>{d.name}_1_0</name>
    <path>{path}/{d.sysfs.rsplit("/", 1)[-1]}:1.0</path>
    <parent>{d.name}</parent>
    <capability type='usb'>
      <number>0</number>
      <class>9</class>
      <subclass>0</subclass>
      <protocol>1</protocol>
    </capability>
  </device>
"""
    return xml


def write_usb_host(directory: Path, devices: list[FakeUsb] | None = None, *, name: str = "usb-host.xml") -> str:
    """Write the host file and its fake sysfs tree under `directory`; return the test:/// URI."""
    devices = standard_devices() if devices is None else devices
    sysfs_root = directory / "sys"
    for d in devices:
        folder = sysfs_root / d.sysfs
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "bDeviceClass").write_text(d.device_class + "\n")
        (folder / "idVendor").write_text(d.vendor + "\n")
        (folder / "idProduct").write_text(d.product + "\n")
        if d.serial is not None:
            (folder / "serial").write_text(d.serial + "\n")
    body = "".join(device_xml(d, sysfs_root) for d in devices)
    path = directory / name
    path.write_text(f"<node>\n{body}</node>\n")
    return f"test://{path.resolve()}"
