"""Host USB devices from libvirt's node devices, and the USB <hostdev> elements of domain XML.

What libvirt tells about a USB device (node device capability 'usb_device', formatted by libvirt's
node_device_conf.c; the udev backend fills it in):
- <name>: "usb_" + the kernel's sysfs name with every non-alphanumeric character replaced by "_": the device
  at port path 1-2.3 is "usb_1_2_3", a root hub is "usb_usb1". <path> is the sysfs path
  (/sys/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2.3), <devnode type='dev'> /dev/bus/usb/001/004.
- <bus>, <device> (decimal), <vendor id='0x....'> and <product id='0x....'> with names from the hardware
  database or the device's strings.
- No serial number and no device class. The interfaces are separate node devices (capability 'usb', parent:
  the device) with <class> (decimal; 9 is a hub).

So, here:
- port path: the last component of <path> when it looks like one ("1-2.3"), else decoded from <name>
  ("usb_1_2_3" -> "1-2.3", only when its first number is the device's bus). The port path is what stays the
  same when a device re-enumerates.
- serial: read from sysfs (<path>/serial) when the connection is local (no host name in the URI), since
  libvirt does not report it. On a remote connection serials are unknown and a selector using serial: matches
  nothing (the planner says so and suggests port:). Tests point <path> of a test-driver host file at a
  directory with a `serial` file.
- hub: an interface of class 9, sysfs bDeviceClass 09 (local only), a root hub (name usb_usbN, or 1d6b:0001-0003),
  or a product name with the word "hub".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import libvirt

from epfiot.errors import HostError
from epfiot.libvirt.xmlmodel import XmlChild, XmlObject, text
from epfiot.model import AttachedUsb, HostUsbDevice, UsbId

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

_PORT_PATH = re.compile(r"^\d+-\d+(\.\d+)*$")
_PORT_NAME = re.compile(r"^usb_(\d+)_(\d+(?:_\d+)*)$")
_HEX4 = re.compile(r"^[0-9a-f]{4}$")
_HUB_WORD = re.compile(r"\bhub\b", re.IGNORECASE)
USB_CLASS_HUB = 9
ROOT_HUB_IDS = frozenset(UsbId("1d6b", p) for p in ("0001", "0002", "0003"))  # the kernel's root hubs


def observe_usb(conn: Any, *, read_sysfs: bool | None = None) -> tuple[HostUsbDevice, ...]:
    """The host's USB devices, sorted by (bus, device, name).

    `read_sysfs`: read serial numbers and device classes from the sysfs paths libvirt reports; by default
    only on a local connection (then the paths are this machine's).
    """
    if read_sysfs is None:
        read_sysfs = is_local(conn)
    try:
        devices = conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_USB_DEV)
        interfaces = conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_USB_INTERFACE)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
            return ()  # a driver without node devices: no USB devices to lend
        raise HostError(f"cannot list USB node devices: {e.get_error_message()}") from None
    hub_parents: set[str] = set()
    for interface in interfaces:
        doc = _node_device(interface)
        if doc is not None and _int(doc.interface_class) == USB_CLASS_HUB:
            hub_parents.add((doc.parent or "").strip())
    found = []
    for device in devices:
        doc = _node_device(device)
        parsed = parse_nodedev(doc, hub_parents=hub_parents, read_sysfs=read_sysfs) if doc is not None else None
        if parsed is not None:
            found.append(parsed)
    return tuple(sorted(found, key=lambda d: (d.bus, d.device, d.nodedev)))


def is_local(conn: Any) -> bool:
    """True when the connection's node devices are this machine's (sysfs paths can be read here)."""
    try:
        uri = conn.getURI()
    except libvirt.libvirtError:
        return False
    return urlsplit(uri).hostname in (None, "", "localhost")


class NodeDeviceXml(XmlObject):
    """What epfiot reads of a node device document: a USB device, or one of its interfaces."""

    TAG = "device"

    name = text("name")
    parent = text("parent")
    path = text("path")
    interface_class = text("capability[@type='usb']/class")
    usb_device = XmlChild(XmlObject, "capability[@type='usb_device']")
    bus = text("capability[@type='usb_device']/bus")
    device = text("capability[@type='usb_device']/device")
    vendor = text("capability[@type='usb_device']/vendor/@id")
    vendor_name = text("capability[@type='usb_device']/vendor")
    product = text("capability[@type='usb_device']/product/@id")
    product_name = text("capability[@type='usb_device']/product")


def _node_device(device: Any) -> NodeDeviceXml | None:
    try:
        return NodeDeviceXml.from_xml(device.XMLDesc(0))
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_NODE_DEVICE:
            return None  # unplugged between the listing and now
        raise HostError(f"cannot read USB node device: {e.get_error_message()}") from None


def parse_nodedev(
    doc: NodeDeviceXml | str, *, hub_parents: set[str] | frozenset[str] = frozenset(), read_sysfs: bool = False
) -> HostUsbDevice | None:
    """A HostUsbDevice from a node device's XML (<device>, as text or read), None when it is not a USB
    device."""
    if isinstance(doc, str):
        doc = NodeDeviceXml.from_xml(doc)
    if doc.usb_device is None:
        return None
    name = (doc.name or "").strip()
    vendor, product = _hex4(doc.vendor), _hex4(doc.product)
    if vendor is None or product is None:
        return None
    bus = _int(doc.bus) or 0
    number = _int(doc.device) or 0
    sysfs = (doc.path or "").strip()
    port = _port(sysfs, name, bus)
    serial = None
    device_class = None
    if read_sysfs and sysfs.startswith("/"):
        serial = _sysfs_attr(sysfs, "serial")
        device_class = _sysfs_attr(sysfs, "bDeviceClass")
    product_name = (doc.product_name or "").strip()
    is_hub = (
        name in hub_parents
        or (device_class is not None and _int(device_class, 16) == USB_CLASS_HUB)
        or name.startswith("usb_usb")
        or UsbId(vendor, product) in ROOT_HUB_IDS
        or bool(_HUB_WORD.search(product_name))
    )
    return HostUsbDevice(
        nodedev=name,
        id=UsbId(vendor, product),
        vendor_name=(doc.vendor_name or "").strip(),
        product_name=product_name,
        bus=bus,
        device=number,
        port=port,
        serial=serial or None,
        is_hub=is_hub,
    )


def _port(sysfs: str, name: str, bus: int) -> str | None:
    base = sysfs.rstrip("/").rsplit("/", 1)[-1] if sysfs else ""
    if _PORT_PATH.match(base):
        return base
    m = _PORT_NAME.match(name)
    if m and int(m.group(1)) == bus:
        return f"{m.group(1)}-{m.group(2).replace('_', '.')}"
    return None


def _sysfs_attr(sysfs: str, attr: str) -> str | None:
    try:
        value = (Path(sysfs) / attr).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return value or None


def _int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    text = text.strip()
    try:
        if base == 10 and text.lower().startswith("0x"):
            return int(text, 16)
        return int(text, base)
    except ValueError:
        return None


def _hex4(text: str | None) -> str | None:
    """'0x1A6E' -> '1a6e'; None unless it is a 16-bit hex number."""
    if text is None:
        return None
    value = _int(text if text.lower().startswith("0x") else "0x" + text)
    if value is None or not 0 <= value <= 0xFFFF:
        return None
    return f"{value:04x}"


# --- domain XML ------------------------------------------------------------------------------------------


def hostdev_element(device: HostUsbDevice, *, required: bool) -> ET.Element:
    """The <hostdev> that passes `device` through.

    Vendor and product, and the bus/device address: with two identical adapters, vendor/product alone is
    ambiguous to libvirt. The address changes when the device re-enumerates; the planner re-resolves every
    apply and replaces the hostdev then. An address of 0 (unknown) is left out. `required=False` adds
    startupPolicy='optional': the VM starts without the device when it is unplugged.
    """
    for part in (device.id.vendor, device.id.product):
        if not _HEX4.match(part):
            raise ValueError(f"not a USB id: {device.id}")
    import xml.etree.ElementTree as ET  # only a VM with USB devices needs it: a no-op apply does not

    hostdev = ET.Element("hostdev", {"mode": "subsystem", "type": "usb", "managed": "yes"})
    source = ET.SubElement(hostdev, "source", {} if required else {"startupPolicy": "optional"})
    ET.SubElement(source, "vendor", {"id": f"0x{device.id.vendor}"})
    ET.SubElement(source, "product", {"id": f"0x{device.id.product}"})
    if device.bus > 0 and device.device > 0:
        ET.SubElement(source, "address", {"bus": str(device.bus), "device": str(device.device)})
    return hostdev


def hostdev_xml(device: HostUsbDevice, *, required: bool) -> str:
    """hostdev_element as text (ElementTree escapes every value)."""
    import xml.etree.ElementTree as ET

    return ET.tostring(hostdev_element(device, required=required), encoding="unicode")


class UsbHostdev(XmlObject):
    """A <hostdev> of a domain's <devices>, as hostdev_element writes it and libvirt reads it back (with
    its own additions: managed='no', an <alias>, a guest-side <address type='usb'>)."""

    type = text("@type")
    mode = text("@mode")
    vendor = text("source/vendor/@id")
    product = text("source/product/@id")
    bus = text("source/address/@bus")
    device = text("source/address/@device")
    startup_policy = text("source/@startupPolicy")

    @property
    def attached(self) -> AttachedUsb | None:
        """Normalised: ids lower-case hex without 0x, bus/device as numbers (None when the hostdev has no
        address), required unless startupPolicy='optional'. None for anything but a USB passthrough with
        vendor and product (an address-only one cannot be compared with a selector)."""
        if self.type != "usb" or (self.mode or "subsystem") != "subsystem":
            return None
        vendor, product = _hex4(self.vendor), _hex4(self.product)
        if vendor is None or product is None:
            return None
        bus, number = _int(self.bus), _int(self.device)
        if bus is None or number is None:
            bus = number = None
        return AttachedUsb(
            id=UsbId(vendor, product), bus=bus, device=number, required=self.startup_policy != "optional"
        )


def attached_devices(hostdevs: Iterable[UsbHostdev]) -> tuple[AttachedUsb, ...]:
    """The USB passthroughs among `hostdevs`, normalised (UsbHostdev.attached) and sorted."""
    found = (a for a in (h.attached for h in hostdevs) if a is not None)
    return tuple(sorted(found, key=lambda a: (str(a.id), a.bus or 0, a.device or 0, not a.required)))
