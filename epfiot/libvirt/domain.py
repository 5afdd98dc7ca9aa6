"""Domain XML: rendering a VM's definition from templates/domain.xml.j2, and reading back what epfiot owns.

Rendering is deterministic: the same spec, devices, uuid and digests give the same bytes. Everything
inserted into the XML is escaped by the template (autoescape) or by ElementTree (hostdevs), so a name can
never add elements. The ownership element in <metadata> carries the owner, stack, name, spec hash and seed
digest: never a credential (those reach the guest only through the seed ISO, as hashes).

Reading back (parse_domain) compares only what epfiot sets, after normalising what libvirt adds (units,
aliases, addresses, controllers, defaults). There are two readers that give the same result:
- `_parse_libvirt_xml`, a fast one for the XML exactly as libvirt formats it (its own indentation, one
  element per line, single-quoted attributes); observing 1,000 domains must cost little more than fetching
  their XML, and a full XML parse costs more than the fetch itself on the test driver;
- `parse_domain_tree`, the reference, with ElementTree: used for anything the fast reader does not expect
  (comments, CDATA, foreign formatting), and by the tests to check that both agree.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from epfiot.libvirt import metadata
from epfiot.model import (
    AttachedUsb,
    HostUsbDevice,
    ObservedVm,
    PowerState,
    VmSpec,
    libvirt_name,
    overlay_volume_name,
    seed_volume_name,
)

METADATA_PREFIX = "epfiot"

# libvirt's virDomainState values -> epfiot's three states.
_NOSTATE, _RUNNING, _BLOCKED, _PAUSED, _SHUTDOWN, _SHUTOFF, _CRASHED, _PMSUSPENDED = range(8)
_PAUSED_STARTING_UP = 11  # virDomainPausedReason: QEMU is paused while libvirt starts it
POWER_STATES = {
    _NOSTATE: PowerState.RUNNING,
    _RUNNING: PowerState.RUNNING,
    _BLOCKED: PowerState.RUNNING,
    _PAUSED: PowerState.PAUSED,
    _SHUTDOWN: PowerState.RUNNING,  # shutting down: still running until it is off
    _SHUTOFF: PowerState.SHUTOFF,
    _CRASHED: PowerState.SHUTOFF,  # on_crash is destroy: a crashed domain has no process
    _PMSUSPENDED: PowerState.PAUSED,
}

_UNITS = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
}


def power_state(state: int, reason: int = 0) -> PowerState:
    if state == _PAUSED and reason == _PAUSED_STARTING_UP:
        return PowerState.RUNNING  # being started (perhaps by an apply that was killed meanwhile)
    return POWER_STATES.get(state, PowerState.RUNNING)


def to_mib(value: str | int, unit: str | None) -> int:
    """A libvirt memory size (`value` in `unit`, KiB when absent) in whole MiB, rounded down."""
    factor = _UNITS.get((unit or "KiB").lower())
    if factor is None:
        raise ValueError(f"unknown memory unit {unit!r}")
    return int(value) * factor // 1024**2


# --- rendering -------------------------------------------------------------------------------------------


def hostdev_xml(device: HostUsbDevice, *, required: bool) -> str:
    """The <hostdev> element passing `device` through (epfiot.libvirt.usb builds it)."""
    from epfiot.libvirt import usb

    return usb.hostdev_xml(device, required=required)


def render_domain_xml(
    spec: VmSpec,
    usb: Sequence[tuple[HostUsbDevice, bool]],
    *,
    uuid: str | None,
    seed_digest: str,
    virt_type: str,
    image_pool: str | None,
) -> str:
    """The domain XML for `spec`, with `usb` as (host device, required) pairs."""
    from markupsafe import Markup

    disk_volume = overlay_volume_name(spec.owner, spec.name) if spec.image else None
    seed_volume = seed_volume_name(spec.owner, spec.name) if spec.credentials else None
    if (disk_volume or seed_volume) and not image_pool:
        raise ValueError(f"{spec.libvirt_name}: a disk or seed volume needs an image pool")
    network = libvirt_name(spec.owner, spec.network) if spec.network else None
    ordered = sorted(usb, key=lambda pair: (pair[0].bus, pair[0].device, str(pair[0].id), pair[0].nodedev, not pair[1]))
    hostdevs = [Markup(hostdev_xml(device, required=required)) for device, required in ordered]
    boot = "network" if network and not disk_volume else "hd"
    text = metadata.render(
        "domain.xml.j2",
        spec=spec,
        uuid=uuid,
        spec_hash=spec.spec_hash(),
        seed_digest=seed_digest,
        virt_type=virt_type,
        image_pool=image_pool or "",
        disk_volume=disk_volume,
        seed_volume=seed_volume,
        network=network,
        boot=boot,
        hostdevs=hostdevs,
    )
    return text


# --- reading back: the reference reader ------------------------------------------------------------------


def parse_domain(
    xml_inactive: str,
    state: int,
    info: Sequence[int] | None = None,
    live_xml: str | None = None,
    *,
    reason: int = 0,
    live_max_vcpu: int | None = None,
) -> ObservedVm:
    """What epfiot owns of a domain.

    `xml_inactive`: XMLDesc(VIR_DOMAIN_XML_INACTIVE), the persistent definition. `state`, `reason`: libvirt's
    domain state and its reason. `info`: dom.info() of an active domain (state, maxMem KiB, memory KiB,
    nrVirtCpu, cpuTime) for the running instance's values, with `live_max_vcpu` (vcpusFlags(LIVE|MAXIMUM)).
    `live_xml`: XMLDesc(0) of an active domain, read for its USB hostdevs; when it is None, `live_devices`
    stays None (not read).
    """
    fields = _parse_libvirt_xml(xml_inactive)
    if fields is None:
        fields = _fields_from_tree(ET.fromstring(xml_inactive))
    return _observed(fields, power_state(state, reason), info, live_xml, live_max_vcpu)


def parse_domain_tree(
    xml_inactive: str,
    state: int,
    info: Sequence[int] | None = None,
    live_xml: str | None = None,
    *,
    reason: int = 0,
    live_max_vcpu: int | None = None,
) -> ObservedVm:
    """parse_domain with the ElementTree reader only (the reference the fast reader is tested against)."""
    fields = _fields_from_tree(ET.fromstring(xml_inactive))
    return _observed(fields, power_state(state, reason), info, live_xml, live_max_vcpu)


def has_hostdevs(xml: str) -> bool:
    """Does this domain XML have any <hostdev>? (Cheap: decides whether the live XML is worth reading.)"""
    return "<hostdev" in xml


def _observed(
    fields: dict[str, Any],
    power: PowerState,
    info: Sequence[int] | None,
    live_xml: str | None,
    live_max_vcpu: int | None,
) -> ObservedVm:
    active = power is not PowerState.SHUTOFF
    live_vcpu = live_memory = live_max_memory = None
    if active and info is not None:
        live_max_memory = int(info[1]) // 1024
        live_memory = int(info[2]) // 1024
        live_vcpu = int(info[3])
    live_devices = None
    if active and live_xml is not None:
        live_devices = parse_usb_hostdevs(live_xml)
    return ObservedVm(
        libvirt_name=fields["name"],
        uuid=fields["uuid"],
        ownership=fields["ownership"],
        state=power,
        vcpu=fields["vcpu"],
        max_vcpu=fields["max_vcpu"],
        memory_mib=fields["memory_mib"],
        max_memory_mib=fields["max_memory_mib"],
        network=fields["network"],
        mac=fields["mac"],
        disk_volume=fields["disk_volume"],
        seed_volume=fields["seed_volume"],
        devices=fields["devices"],
        live_vcpu=live_vcpu,
        live_memory_mib=live_memory,
        live_max_memory_mib=live_max_memory,
        live_max_vcpu=live_max_vcpu if active else None,
        live_devices=live_devices,
    )


def parse_usb_hostdevs(xml: str) -> tuple[AttachedUsb, ...]:
    """The USB hostdevs of a domain XML document, normalised (epfiot.libvirt.usb reads them)."""
    if not has_hostdevs(xml):
        return ()
    from epfiot.libvirt import usb

    return usb.parse_hostdevs(ET.fromstring(xml))


def _fields_from_tree(root: ET.Element) -> dict[str, Any]:
    if root.tag != "domain":
        raise ValueError(f"not a domain XML document: <{root.tag}>")
    memory = root.find("memory")
    current = root.find("currentMemory")
    vcpu = root.find("vcpu")
    max_memory = to_mib((memory.text or "0").strip(), memory.get("unit")) if memory is not None else 0
    memory_mib = to_mib((current.text or "0").strip(), current.get("unit")) if current is not None else max_memory
    max_vcpu = int((vcpu.text or "1").strip()) if vcpu is not None else 1
    vcpus = int(vcpu.get("current", max_vcpu)) if vcpu is not None else max_vcpu
    ownership = metadata.parse_ownership(root)

    disk_volume = seed_volume = network = mac = None
    devices = root.find("devices")
    attached: tuple[AttachedUsb, ...] = ()
    if devices is not None:
        for disk in devices.findall("disk"):
            if disk.get("type") != "volume":
                continue
            source = disk.find("source")
            volume = source.get("volume") if source is not None else None
            if disk.get("device", "disk") == "disk" and disk_volume is None:
                disk_volume = volume
            elif disk.get("device") == "cdrom" and seed_volume is None:
                seed_volume = volume
        for interface in devices.findall("interface"):
            if interface.get("type") != "network":
                continue
            source = interface.find("source")
            address = interface.find("mac")
            network = source.get("network") if source is not None else None
            mac = address.get("address") if address is not None else None
            mac = mac.lower() if mac else None
            break
        if devices.find("hostdev") is not None:
            from epfiot.libvirt import usb

            attached = usb.parse_hostdevs(devices)
    return {
        "name": root.findtext("name") or "",
        "uuid": root.findtext("uuid") or "",
        "ownership": ownership,
        "vcpu": vcpus,
        "max_vcpu": max_vcpu,
        "memory_mib": memory_mib,
        "max_memory_mib": max_memory,
        "network": network,
        "mac": mac,
        "disk_volume": disk_volume,
        "seed_volume": seed_volume,
        "devices": attached,
    }


# --- reading back: the fast reader for libvirt's own formatting ------------------------------------------
#
# It reads only the shape epfiot defines, exactly as libvirt writes it back: name, uuid, metadata holding only
# epfiot's element (libxml2 writes its attributes double-quoted, in the order the template has them), then
# memory, currentMemory and vcpu. Anything else (a title, other metadata, a hand-edited domain, an
# unmanaged one) goes to the ElementTree reader. Inside <devices> libvirt writes every element itself:
# only <metadata> can hold foreign XML (comments, CDATA), and the head match has excluded that.

_EPFIOT_HEAD = re.compile(
    r"<domain type='[^'<]*'(?: id='-?\d+')?>\n"
    r"  <name>([^<]*)</name>\n"
    r"  <uuid>([0-9a-f-]*)</uuid>\n"
    r"  <metadata>\n"
    r"    <epfiot:resource xmlns:epfiot=\"" + re.escape(metadata.NAMESPACE) + r"\""
    r" owner=\"([^\"<]*)\" stack=\"([^\"<]*)\" name=\"([^\"<]*)\" spec-hash=\"([^\"<]*)\" seed-digest=\"([^\"<]*)\""
    r"(?: shutdown-timeout=\"([^\"<]*)\")?/>\n"
    r"  </metadata>\n"
    r"  <memory unit='(\w+)'>(\d+)</memory>\n"
    r"  <currentMemory unit='(\w+)'>(\d+)</currentMemory>\n"
    r"  <vcpu placement='static'(?: current='(\d+)')?>(\d+)</vcpu>\n"
)
_DEVICE = re.compile(r"\n    <(disk|interface) ([^>]*)>(\n.*?)\n    </\1>", re.DOTALL)
_ATTR = re.compile(r"([\w.:-]+)='([^']*)'")
_SOURCE = re.compile(r"\n      <source ([^>]*?)/?>")
_MAC = re.compile(r"\n      <mac address='([^']*)'/>")
_DEVICES_END = "\n  </devices>\n</domain>\n"


def _unescape(value: str) -> str:
    return html.unescape(value) if "&" in value else value


def _attrs(text: str) -> dict[str, str]:
    return {k: _unescape(v) for k, v in _ATTR.findall(text)}


def _parse_libvirt_xml(xml: str) -> dict[str, Any] | None:
    """The fields of an epfiot domain exactly as libvirt formats it, or None for anything else (then the
    ElementTree reader decides)."""
    head = _EPFIOT_HEAD.match(xml)
    if head is None:
        return None
    start = xml.find("\n  <devices>\n", head.end() - 1)
    if start < 0 or not xml.endswith(_DEVICES_END):
        return None
    (name, uuid, owner, stack, rname, spec_hash, seed_digest, timeout, mem_unit, memory, cur_unit, current, vcpu, max_vcpu) = (
        head.groups()
    )
    if xml.find("&", 0, head.end()) >= 0:
        name, owner, stack, rname, spec_hash, seed_digest = (
            _unescape(v) for v in (name, owner, stack, rname, spec_hash, seed_digest)
        )
    disk_volume = seed_volume = network = mac = None
    for kind, attr_text, inner in _DEVICE.findall(xml, start):
        attrs = _attrs(attr_text)
        if kind == "disk":
            if attrs.get("type") != "volume":
                continue
            source = _SOURCE.search(inner)
            volume = _attrs(source.group(1)).get("volume") if source else None
            device = attrs.get("device", "disk")
            if device == "disk" and disk_volume is None:
                disk_volume = volume
            elif device == "cdrom" and seed_volume is None:
                seed_volume = volume
        elif network is None and attrs.get("type") == "network":
            source = _SOURCE.search(inner)
            network = _attrs(source.group(1)).get("network") if source else None
            address = _MAC.search(inner)
            mac = _unescape(address.group(1)).lower() if address else None
    devices: tuple[AttachedUsb, ...] = ()
    if xml.find("<hostdev", start) >= 0:
        from epfiot.libvirt import usb

        devices = usb.parse_hostdevs(ET.fromstring(xml[start : -len("</domain>\n")].strip()))
    max_vcpus = int(max_vcpu)
    return {
        "name": name,
        "uuid": uuid,
        "ownership": metadata.ownership_from_attributes(
            {
                "owner": owner,
                "stack": stack,
                "name": rname,
                "spec-hash": spec_hash,
                "seed-digest": seed_digest,
                "shutdown-timeout": timeout or "",
            }
        ),
        "vcpu": int(vcpu) if vcpu else max_vcpus,
        "max_vcpu": max_vcpus,
        "memory_mib": to_mib(current, cur_unit),
        "max_memory_mib": to_mib(memory, mem_unit),
        "network": network,
        "mac": mac,
        "disk_volume": disk_volume,
        "seed_volume": seed_volume,
        "devices": devices,
    }
