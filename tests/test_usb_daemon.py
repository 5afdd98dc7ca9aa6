"""USB hostdevs in a persistent domain definition, on the real daemon (qemu:///system).

These machines have no USB bus: a live attach, or starting a domain with a USB hostdev, fails here with
"cannot open directory '/sys/bus/usb/devices'". What the real daemon can check is the persistent half: the
hostdev XML epfiot renders is accepted into a shut-off domain's definition (AFFECT_CONFIG), reads back as
the same devices, and is removed again by detaching the same XML. The live half is covered through the Host
interface with tests/fakes.py:FakeLiveUsb.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt
import pytest

from epfiot.libvirt.domain import parse_usb_hostdevs
from epfiot.libvirt.usb import hostdev_xml
from epfiot.model import AttachedUsb, HostUsbDevice, UsbId

pytestmark = pytest.mark.daemon

A1 = HostUsbDevice("usb_1_1_1", UsbId("10c4", "ea60"), bus=1, device=4, port="1-1.1", serial="A1")
B2 = HostUsbDevice("usb_1_1_2", UsbId("10c4", "ea60"), bus=1, device=5, port="1-1.2", serial="B2")
CORAL_BOOT = HostUsbDevice("usb_1_2", UsbId("1a6e", "089a"), bus=1, device=3, port="1-2")
CORAL_GOOGLE = HostUsbDevice("usb_1_2", UsbId("18d1", "9302"), bus=1, device=6, port="1-2")

CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG


@pytest.fixture
def shut_off_domain(system_uri: str, tenant: str) -> Iterator[libvirt.virDomain]:
    conn = libvirt.open(system_uri)
    xml = f"""<domain type='qemu'>
  <name>{tenant}.usbvm</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><controller type='usb' model='qemu-xhci'/></devices>
</domain>"""
    dom = conn.defineXML(xml)
    try:
        yield dom
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()


def definition(dom: libvirt.virDomain) -> tuple[AttachedUsb, ...]:
    return parse_usb_hostdevs(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def attached(device: HostUsbDevice, required: bool) -> AttachedUsb:
    return AttachedUsb(device.id, device.bus, device.device, required)


def test_usb_hostdevs_are_added_to_and_removed_from_a_shut_off_definition(shut_off_domain: libvirt.virDomain) -> None:
    dom = shut_off_domain
    assert definition(dom) == ()

    dom.attachDeviceFlags(hostdev_xml(A1, required=True), CONFIG)
    dom.attachDeviceFlags(hostdev_xml(B2, required=False), CONFIG)  # the identical adapter, told apart by address
    assert definition(dom) == (attached(A1, True), attached(B2, False))
    assert not dom.isActive()

    dom.detachDeviceFlags(hostdev_xml(A1, required=True), CONFIG)
    assert definition(dom) == (attached(B2, False),)
    dom.detachDeviceFlags(hostdev_xml(B2, required=False), CONFIG)
    assert definition(dom) == ()


def test_a_reenumerated_coral_gets_its_hostdev_replaced(shut_off_domain: libvirt.virDomain) -> None:
    dom = shut_off_domain
    dom.attachDeviceFlags(hostdev_xml(CORAL_BOOT, required=True), CONFIG)
    assert definition(dom) == (attached(CORAL_BOOT, True),)
    # after its first inference the Coral is 18d1:9302 at a new device number: detach the old, attach the new
    dom.detachDeviceFlags(hostdev_xml(CORAL_BOOT, required=True), CONFIG)
    dom.attachDeviceFlags(hostdev_xml(CORAL_GOOGLE, required=True), CONFIG)
    assert definition(dom) == (attached(CORAL_GOOGLE, True),)


def test_libvirt_writes_the_hostdev_back_in_a_form_parse_usb_hostdevs_reads(shut_off_domain: libvirt.virDomain) -> None:
    dom = shut_off_domain
    dom.attachDeviceFlags(hostdev_xml(B2, required=False), CONFIG)
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    [hostdev] = root.findall("devices/hostdev")
    source = hostdev.find("source")
    assert source is not None and source.get("startupPolicy") == "optional"
    assert hostdev.find("address[@type='usb']") is not None  # libvirt gave it a guest-side USB port
    assert definition(dom) == (attached(B2, False),)
