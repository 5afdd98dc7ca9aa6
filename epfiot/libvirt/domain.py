"""Domain XML: rendering a VM's definition from templates/domain.xml.j2, and reading back what epfiot owns.

Rendering is deterministic: the same spec, devices, uuid and digests give the same bytes. Everything
inserted into the XML is escaped by the template (autoescape) or by ElementTree (hostdevs), so a name can
never add elements. The ownership element in <metadata> carries the owner, stack, name, spec hash and seed
digest: never a credential (those reach the guest only through the seed ISO, as hashes).

Reading back (parse_domain) reads only what epfiot sets, after normalising what libvirt adds (units,
aliases, addresses, controllers, defaults), through one model of the document: DomainXml, whose properties
are XPaths (epfiot.libvirt.xmlmodel). Observing parses each definition once per process: LibvirtHost keeps
what it read for as long as the XML stays the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from epfiot.libvirt import metadata
from epfiot.libvirt.usb import UsbHostdev, attached_devices
from epfiot.libvirt.usb import hostdev_xml as usb_hostdev_xml
from epfiot.libvirt.xmlmodel import ScaledInteger, XmlChild, XmlChildren, XmlObject, integer, text
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
# virDomainPausedReason values of a VM that a resume cannot run again. libvirt 9 reports QEMU's
# "internal-error" run state (KVM could not run the guest; `cont` answers "Resetting the Virtual Machine is
# required") as UNKNOWN: epfiot and users pause through libvirt, which records USER for those.
_PAUSE_FAULTS = {0: "internal-error", 10: "crashed"}  # VIR_DOMAIN_PAUSED_UNKNOWN, VIR_DOMAIN_PAUSED_CRASHED
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

def power_state(state: int, reason: int = 0) -> PowerState:
    if state == _PAUSED and reason == _PAUSED_STARTING_UP:
        return PowerState.RUNNING  # being started (perhaps by an apply that was killed meanwhile)
    return POWER_STATES.get(state, PowerState.RUNNING)


def pause_fault(state: int, reason: int | None) -> str | None:
    """Why a paused domain cannot be resumed ("internal-error", "crashed"), or None when it can (or when
    its reason was not read)."""
    return _PAUSE_FAULTS.get(reason) if state == _PAUSED and reason is not None else None


# --- rendering -------------------------------------------------------------------------------------------


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
    hostdevs = [Markup(usb_hostdev_xml(device, required=required)) for device, required in ordered]
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


# --- reading back ----------------------------------------------------------------------------------------


class Vcpu(XmlObject):
    """<vcpu placement='static' current='1'>2</vcpu>: the maximum, and how many are plugged (all when no
    current=)."""

    maximum = integer(".")
    current = integer("@current")


class DomainXml(XmlObject):
    """What epfiot compares of a domain document. Of its disks and interfaces, only those epfiot defines:
    the first volume disk and volume cdrom naming a volume, the first interface on a libvirt network."""

    TAG = "domain"
    NAMESPACES = metadata.NAMESPACES

    name = text("name")
    uuid = text("uuid")
    resource = XmlChild(metadata.Resource, metadata.RESOURCE_PATH)
    memory = XmlChild(ScaledInteger, "memory")  # KiB without a unit
    current_memory = XmlChild(ScaledInteger, "currentMemory")
    vcpu = XmlChild(Vcpu, "vcpu")
    disk_volume = text("devices/disk[@type='volume'][not(@device) or @device='disk']/source/@volume")
    seed_volume = text("devices/disk[@type='volume'][@device='cdrom']/source/@volume")
    network = text("devices/interface[@type='network'][1]/source/@network")
    mac = text("devices/interface[@type='network'][1]/mac/@address")
    hostdevs = XmlChildren(UsbHostdev, "devices/hostdev")

    @property
    def usb_devices(self) -> tuple[AttachedUsb, ...]:
        return attached_devices(self.hostdevs)

    def definition(self) -> ObservedVm:
        """The persistent definition as an ObservedVm of a shut-off domain (no live values)."""
        memory, current, vcpu = self.memory, self.current_memory, self.vcpu
        resource = self.resource
        max_memory = _mib(memory) if memory is not None else 0
        maximum, plugged = (vcpu.maximum, vcpu.current) if vcpu is not None else (None, None)  # each read once
        max_vcpu = maximum if maximum is not None else 1
        vcpus = plugged if plugged is not None else max_vcpu
        mac = self.mac
        return ObservedVm(
            libvirt_name=self.name or "",
            uuid=self.uuid or "",
            ownership=resource.ownership if resource is not None else None,
            state=PowerState.SHUTOFF,
            vcpu=vcpus,
            max_vcpu=max_vcpu,
            memory_mib=_mib(current) if current is not None else max_memory,
            max_memory_mib=max_memory,
            network=self.network,
            mac=mac.lower() if mac else None,
            disk_volume=self.disk_volume,
            seed_volume=self.seed_volume,
            devices=self.usb_devices,
        )


def _mib(size: ScaledInteger) -> int:
    return size.bytes("KiB") // 1024**2  # whole MiB, rounded down


def read_definition(xml_inactive: str) -> ObservedVm:
    """What epfiot owns of a persistent definition (XMLDesc(VIR_DOMAIN_XML_INACTIVE)), as a shut-off VM."""
    return DomainXml.from_xml(xml_inactive).definition()


def parse_usb_hostdevs(xml: str) -> tuple[AttachedUsb, ...]:
    """The USB hostdevs of a domain XML document, normalised and sorted."""
    return DomainXml.from_xml(xml).usb_devices


def parse_domain(
    xml_inactive: str,
    state: int,
    info: Sequence[int] | None = None,
    live_xml: str | None = None,
    *,
    reason: int | None = None,
    live_max_vcpu: int | None = None,
) -> ObservedVm:
    """What epfiot owns of a domain.

    `xml_inactive`: XMLDesc(VIR_DOMAIN_XML_INACTIVE), the persistent definition. `state`, `reason`: libvirt's
    domain state and its reason. `info`: dom.info() of an active domain (state, maxMem KiB, memory KiB,
    nrVirtCpu, cpuTime) for the running instance's values, with `live_max_vcpu` (vcpusFlags(LIVE|MAXIMUM)).
    `live_xml`: XMLDesc(0) of an active domain, read for its USB hostdevs; when it is None, `live_devices`
    stays None (not read).
    """
    return with_state(read_definition(xml_inactive), state, info, live_xml, reason=reason, live_max_vcpu=live_max_vcpu)


def with_state(
    definition: ObservedVm,
    state: int,
    info: Sequence[int] | None,
    live_xml: str | None,
    *,
    reason: int | None = None,
    live_max_vcpu: int | None = None,
) -> ObservedVm:
    """`definition` (read_definition) with the domain's state and, when it is active, its running instance's
    values (parse_domain tells the arguments)."""
    power = power_state(state, reason or 0)
    if power is PowerState.SHUTOFF:
        return definition
    return replace(
        definition,
        state=power,
        fault=pause_fault(state, reason),
        live_vcpu=int(info[3]) if info is not None else None,
        live_memory_mib=int(info[2]) // 1024 if info is not None else None,
        live_max_memory_mib=int(info[1]) // 1024 if info is not None else None,
        live_max_vcpu=live_max_vcpu,
        live_devices=parse_usb_hostdevs(live_xml) if live_xml is not None else None,
    )
