"""The test set-up itself: the real daemon runs a guest, and test_host_xml gives the USB devices it declares."""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest
from conftest import CORAL_GOOGLE, CORAL_GOOGLE_2, CORAL_UNICHIP, ROOT_HUB, SERIAL_A1, SERIAL_B2


@pytest.mark.daemon
def test_a_tiny_guest_runs_on_the_real_daemon(system_uri: str, tenant: str) -> None:
    virt_type = "kvm" if os.path.exists("/dev/kvm") else "qemu"
    name = f"{tenant}.smoke"
    xml = f"""<domain type='{virt_type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
</domain>"""
    conn = libvirt.open(system_uri)
    try:
        dom = conn.defineXML(xml)
        dom.create()
        state, _reason = dom.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING
        started = time.monotonic()
        dom.destroy()
        print(f"\ndestroy took {time.monotonic() - started:.2f}s")
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        assert name not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()


def usb_devices(uri: str) -> dict[str, ET.Element]:
    conn = libvirt.open(uri)
    try:
        devices = conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_USB_DEV)
        return {d.name(): ET.fromstring(d.XMLDesc()) for d in devices}
    finally:
        conn.close()


def ids(root: ET.Element) -> tuple[str, str, str, str, str]:
    cap = root.find("capability[@type='usb_device']")
    assert cap is not None
    return (
        cap.findtext("bus", ""),
        cap.findtext("device", ""),
        cap.find("vendor").get("id", ""),  # type: ignore[union-attr]
        cap.find("product").get("id", ""),  # type: ignore[union-attr]
        cap.findtext("vendor", ""),
    )


def test_test_host_xml_lists_the_usb_devices(test_host_xml: Callable[..., str]) -> None:
    uri = test_host_xml()
    assert uri.startswith("test:///")
    devices = usb_devices(uri)
    assert set(devices) == {"usb_usb1", "usb_1_2", "usb_1_3", "usb_1_4"}
    assert ids(devices["usb_1_2"]) == ("1", "4", "0x1a6e", "0x089a", "Global Unichip Corp.")
    assert ids(devices["usb_1_3"]) == ("1", "5", "0x10c4", "0xea60", "Silicon Labs")
    assert ids(devices["usb_1_4"]) == ("1", "6", "0x10c4", "0xea60", "Silicon Labs")
    assert ids(devices["usb_usb1"]) == ("1", "1", "0x1d6b", "0x0002", "Linux Foundation")
    assert devices["usb_1_3"].findtext("parent") == "usb_usb1"
    # No serial in libvirt's node device XML: it is in the sysfs directory the device's <path> names.
    for device, serial in ((SERIAL_A1, "A1"), (SERIAL_B2, "B2")):
        path = Path(devices[device.name].findtext("path", ""))
        assert (path / "serial").read_text().strip() == serial
        assert (path / "devpath").read_text().strip() == device.port.split("-", 1)[1]
    assert not (Path(devices[CORAL_UNICHIP.name].findtext("path", "")) / "serial").exists()
    assert (Path(devices[ROOT_HUB.name].findtext("path", "")) / "bDeviceClass").read_text().strip() == "09"

    conn = libvirt.open(uri)
    try:
        assert conn.listAllDomains() == []
        assert [p.name() for p in conn.listAllStoragePools()] == ["default"]
        assert conn.nodeDeviceLookupByName("computer").listCaps() == ["system"]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("identity", "corals"),
    [
        ("google", {"usb_1_2": ("1", "7", "0x18d1", "0x9302", "Google Inc.")}),
        (
            "both",
            {
                "usb_1_2": ("1", "4", "0x1a6e", "0x089a", "Global Unichip Corp."),
                "usb_1_5": ("1", "8", "0x18d1", "0x9302", "Google Inc."),
            },
        ),
        (None, {}),
    ],
)
def test_test_host_xml_coral_identities(
    test_host_xml: Callable[..., str], identity: str | None, corals: dict[str, tuple[str, ...]]
) -> None:
    devices = usb_devices(test_host_xml(identity))
    assert {
        name: ids(root) for name, root in devices.items() if name not in {"usb_usb1", "usb_1_3", "usb_1_4"}
    } == corals
    assert CORAL_GOOGLE.port == CORAL_UNICHIP.port != CORAL_GOOGLE_2.port
