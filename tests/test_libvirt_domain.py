"""Domain XML on its own and through the libvirt test driver (in-process, no daemon).

Rendering is deterministic, escapes everything, records ownership and never a secret; reading back
normalises libvirt's additions, on every shape the template renders and libvirt formats back, and on
XML libvirt would not write itself.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest
from hosts.testdriver import CORAL, CP210X, CREDENTIALS, SECRET_HASH, open_test_driver, render, vm

from epfiot.libvirt.domain import parse_domain, render_domain_xml
from epfiot.libvirt.host import LibvirtHost
from epfiot.libvirt.metadata import NAMESPACE
from epfiot.model import (
    AttachedUsb,
    HostUsbDevice,
    ObservedVm,
    Ownership,
    PowerState,
    VmSpec,
    overlay_volume_name,
    seed_volume_name,
)

# Every shape the template renders: (id, spec, usb pairs)
SHAPES: list[tuple[str, VmSpec, tuple[tuple[HostUsbDevice, bool], ...]]] = [
    ("bare", vm(), ()),
    ("image", vm(image="debian-12", disk_size_gib=4), ()),
    ("credentials", vm(credentials=CREDENTIALS), ()),
    ("network", vm(network="net", address="10.9.0.5"), ()),
    ("usb-required", vm(), ((CP210X, True),)),
    ("usb-optional", vm(), ((CP210X, False),)),
    ("usb-mixed", vm(), ((CORAL, False), (CP210X, True))),
    ("paused", vm(state=PowerState.PAUSED, memory_mib=100, max_memory_mib=100, vcpu=2, max_vcpu=2), ()),
    (
        "everything",
        vm(image="debian-12", network="net", credentials=CREDENTIALS, max_memory_mib=512, memory_mib=256, max_vcpu=4),
        ((CP210X, True), (CORAL, False)),
    ),
]
SHAPE_IDS = [s[0] for s in SHAPES]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LibvirtHost]:
    with open_test_driver(tmp_path) as opened:
        yield opened


# --- rendering (pure) ------------------------------------------------------------------------------------


def assert_reads_back(observed: ObservedVm, spec: VmSpec, usb: tuple[tuple[HostUsbDevice, bool], ...]) -> None:
    """`observed` is what `spec` with `usb` was defined as, whatever libvirt added."""
    assert observed.libvirt_name == spec.libvirt_name
    assert observed.ownership == Ownership("o", "s", spec.name, spec.spec_hash(), "sha256:seed", spec.shutdown_timeout)
    assert (observed.vcpu, observed.max_vcpu) == (spec.vcpu, spec.max_vcpu)
    assert (observed.memory_mib, observed.max_memory_mib) == (spec.memory_mib, spec.max_memory_mib)
    assert observed.disk_volume == (overlay_volume_name("o", spec.name) if spec.image else None)
    assert observed.seed_volume == (seed_volume_name("o", spec.name) if spec.credentials else None)
    assert observed.network == (f"o.{spec.network}" if spec.network else None)
    assert observed.mac == (spec.mac if spec.network else None)
    want = {(d.id, d.bus, d.device, required) for d, required in usb}
    assert {(a.id, a.bus, a.device, a.required) for a in observed.devices} == want
    assert len(observed.devices) == len(usb)


@pytest.mark.parametrize(("shape", "spec", "usb"), SHAPES, ids=SHAPE_IDS)
def test_render_is_deterministic_and_reads_back(shape: str, spec: VmSpec, usb: tuple[tuple[HostUsbDevice, bool], ...]) -> None:
    text = render(spec, usb, uuid="0d6f7a4e-5a65-4c9a-8d0c-3b1f0cbd1a01")
    assert text == render(spec, usb, uuid="0d6f7a4e-5a65-4c9a-8d0c-3b1f0cbd1a01")
    observed = parse_domain(text, libvirt.VIR_DOMAIN_SHUTOFF)
    assert_reads_back(observed, spec, usb)
    assert observed.uuid == "0d6f7a4e-5a65-4c9a-8d0c-3b1f0cbd1a01"
    assert observed.state is PowerState.SHUTOFF and observed.live_vcpu is None and observed.live_devices is None


def test_render_orders_hostdevs_whatever_the_input_order() -> None:
    assert render(vm(), ((CORAL, False), (CP210X, True))) == render(vm(), ((CP210X, True), (CORAL, False)))


def test_render_without_uuid_leaves_it_to_libvirt() -> None:
    assert ET.fromstring(render(vm())).find("uuid") is None


def test_metadata_element_is_epfiots() -> None:
    root = ET.fromstring(render(vm(), seed_digest="sha256:abc"))
    resource = root.find(f"metadata/{{{NAMESPACE}}}resource")
    assert resource is not None
    assert dict(resource.attrib) == {
        "owner": "o",
        "stack": "s",
        "name": "vm",
        "spec-hash": vm().spec_hash(),
        "seed-digest": "sha256:abc",
        "shutdown-timeout": "60.0",
    }


def test_no_secret_in_the_domain_xml() -> None:
    text = render(vm(credentials=CREDENTIALS, image="debian-12"))
    for secret in (SECRET_HASH, "SECRETHASH", "secretkey", "topsecret", "charlie"):
        assert secret not in text


def test_boot_device_follows_image_and_network() -> None:
    def boot(spec: VmSpec) -> str | None:
        element = ET.fromstring(render(spec)).find("os/boot")
        return element.get("dev") if element is not None else None

    assert boot(vm(image="debian-12")) == "hd"
    assert boot(vm(image="debian-12", network="net")) == "hd"
    assert boot(vm(network="net")) == "network"  # no image: iPXE takes a DHCP lease
    assert boot(vm()) == "hd"


def test_domain_type_and_required_devices() -> None:
    root = ET.fromstring(render(vm(), virt_type="kvm"))
    assert root.get("type") == "kvm"
    # no <cpu>: host-passthrough fails under nested KVM (QEMU cannot set MSR 0x10a): QEMU's default model
    assert root.find("cpu") is None
    devices = root.find("devices")
    assert devices is not None
    assert devices.find("memballoon[@model='virtio']") is not None  # live setMemory
    assert devices.find("serial[@type='pty']") is not None and devices.find("console[@type='pty']") is not None
    assert devices.find("graphics") is None
    assert root.find("features/acpi") is not None  # graceful shutdown and hotplug
    assert [root.findtext(e) for e in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy", "restart", "destroy"]


def test_hostdev_startup_policy_only_when_optional() -> None:
    root = ET.fromstring(render(vm(), ((CP210X, True), (CORAL, False))))
    policies = {}
    for source in root.iterfind("devices/hostdev/source"):
        vendor = source.find("vendor")
        assert vendor is not None
        policies[vendor.get("id")] = source.get("startupPolicy")
    assert policies == {"0x10c4": None, "0x18d1": "optional"}


def test_an_image_needs_a_pool() -> None:
    with pytest.raises(ValueError, match="image pool"):
        render_domain_xml(vm(image="x"), (), uuid=None, seed_digest="", virt_type="test", image_pool=None)


NASTY = "a'\"<>&b</name><evil/>"


def test_everything_is_escaped() -> None:
    spec = vm(name=NASTY, network=NASTY, image="i", credentials=CREDENTIALS)
    spec = replace(spec, owner=NASTY, stack=NASTY)
    text = render(spec, seed_digest=NASTY, uuid=NASTY)
    root = ET.fromstring(text)  # well-formed
    assert root.find(".//evil") is None
    assert len(root.findall("name")) == 1 and root.findtext("name") == spec.libvirt_name
    observed = parse_domain(text, libvirt.VIR_DOMAIN_SHUTOFF)
    assert observed.ownership == Ownership(NASTY, NASTY, NASTY, spec.spec_hash(), NASTY, spec.shutdown_timeout)
    assert observed.network == f"{NASTY}.{NASTY}"
    assert observed.disk_volume == overlay_volume_name(NASTY, NASTY)


def test_escaped_names_survive_libvirt_and_the_reader(host: LibvirtHost) -> None:
    spec = replace(vm(name="a'\"<>&b"), owner="o&<'\"")
    host.define_vm(spec, (), uuid=None, seed_digest="d&'\"<")
    xml = host.connection.lookupByName(spec.libvirt_name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    observed = parse_domain(xml, libvirt.VIR_DOMAIN_SHUTOFF)
    assert observed.libvirt_name == spec.libvirt_name
    assert observed.ownership == Ownership("o&<'\"", "s", "a'\"<>&b", spec.spec_hash(), "d&'\"<", spec.shutdown_timeout)


# --- reading back (pure) ---------------------------------------------------------------------------------


def test_units_are_normalised() -> None:
    text = render(vm())
    text = text.replace("<memory unit='MiB'>128</memory>", "<memory unit='GiB'>2</memory>")
    text = text.replace("<currentMemory unit='MiB'>64</currentMemory>", "<currentMemory unit='bytes'>1073741824</currentMemory>")
    observed = parse_domain(text, libvirt.VIR_DOMAIN_SHUTOFF)
    assert (observed.memory_mib, observed.max_memory_mib) == (1024, 2048)
    no_unit = text.replace("<memory unit='GiB'>2</memory>", "<memory>262144</memory>")
    assert parse_domain(no_unit, libvirt.VIR_DOMAIN_SHUTOFF).max_memory_mib == 256  # KiB by default


def test_vcpu_without_current_means_all() -> None:
    text = render(vm(vcpu=2, max_vcpu=2)).replace(" current='2'", "")
    assert parse_domain(text, libvirt.VIR_DOMAIN_SHUTOFF).vcpu == 2


def test_unmanaged_and_incomplete_metadata_mean_no_ownership() -> None:
    plain = "<domain type='kvm'><name>other</name><uuid>u</uuid><memory>131072</memory><vcpu>1</vcpu></domain>"
    observed = parse_domain(plain, libvirt.VIR_DOMAIN_RUNNING, [1, 131072, 65536, 1, 0])
    assert observed.ownership is None and not observed.managed
    assert (observed.memory_mib, observed.max_memory_mib, observed.live_memory_mib) == (128, 128, 64)
    partial = render(vm()).replace(" owner='o'", "")
    assert parse_domain(partial, libvirt.VIR_DOMAIN_SHUTOFF).ownership is None


@pytest.mark.parametrize(
    ("state", "power"),
    [
        (libvirt.VIR_DOMAIN_NOSTATE, PowerState.RUNNING),
        (libvirt.VIR_DOMAIN_RUNNING, PowerState.RUNNING),
        (libvirt.VIR_DOMAIN_BLOCKED, PowerState.RUNNING),
        (libvirt.VIR_DOMAIN_PAUSED, PowerState.PAUSED),
        (libvirt.VIR_DOMAIN_SHUTDOWN, PowerState.RUNNING),
        (libvirt.VIR_DOMAIN_SHUTOFF, PowerState.SHUTOFF),
        (libvirt.VIR_DOMAIN_CRASHED, PowerState.SHUTOFF),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, PowerState.PAUSED),
    ],
)
def test_power_states(state: int, power: PowerState) -> None:
    observed = parse_domain(render(vm()), state, [state, 131072, 65536, 1, 0])
    assert observed.state is power
    assert (observed.live_vcpu is None) == (power is PowerState.SHUTOFF)


def test_a_domain_being_started_counts_as_running() -> None:
    starting = parse_domain(render(vm()), libvirt.VIR_DOMAIN_PAUSED, [3, 131072, 65536, 1, 0], reason=11)
    assert starting.state is PowerState.RUNNING  # VIR_DOMAIN_PAUSED_STARTING_UP
    paused = parse_domain(render(vm()), libvirt.VIR_DOMAIN_PAUSED, [3, 131072, 65536, 1, 0], reason=2)
    assert paused.state is PowerState.PAUSED  # VIR_DOMAIN_PAUSED_USER


def test_live_devices_come_from_the_live_xml() -> None:
    inactive = render(vm(), ((CP210X, True), (CORAL, False)))
    live = render(vm(), ((CP210X, True),))
    observed = parse_domain(inactive, libvirt.VIR_DOMAIN_RUNNING, [1, 131072, 65536, 1, 0], live)
    assert len(observed.devices) == 2
    assert observed.live_devices == (AttachedUsb(CP210X.id, 1, 4, True),)
    assert parse_domain(inactive, libvirt.VIR_DOMAIN_RUNNING, [1, 131072, 65536, 1, 0]).live_devices is None


@pytest.mark.parametrize(("shape", "spec", "usb"), SHAPES, ids=SHAPE_IDS)
def test_reads_back_libvirts_output(
    host: LibvirtHost, shape: str, spec: VmSpec, usb: tuple[tuple[HostUsbDevice, bool], ...]
) -> None:
    host.define_vm(spec, usb, uuid=None, seed_digest="sha256:seed")
    dom = host.connection.lookupByName(spec.libvirt_name)
    dom.create()
    inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    live = dom.XMLDesc(0)
    info = dom.info()
    for xml in (inactive, live):
        observed = parse_domain(xml, info[0], info, live)
        assert_reads_back(observed, spec, usb)
        assert observed.uuid == dom.UUIDString()
        assert observed.live_devices == observed.devices
        assert (observed.live_vcpu, observed.live_memory_mib) == (spec.vcpu, spec.memory_mib)


def test_foreign_xml_in_a_managed_domain_changes_nothing(host: LibvirtHost) -> None:
    # what the regex reader of libvirt's own formatting used to give up on: comments, CDATA, a title
    spec = vm(network="net", image="i")
    host.define_vm(spec, ((CP210X, True),), uuid=None, seed_digest="sha256:seed")
    dom = host.connection.lookupByName(spec.libvirt_name)
    before = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), libvirt.VIR_DOMAIN_SHUTOFF)
    dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT,
        "<app><!-- a comment --><memory unit='KiB'>1</memory><![CDATA[\n  <devices>\n]]></app>",
        "other",
        "https://example.org/app",
        libvirt.VIR_DOMAIN_AFFECT_CONFIG,
    )
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_TITLE, "a title", None, None, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<!-- a comment -->" in xml and "CDATA" in xml and "<title>" in xml
    observed = parse_domain(xml, libvirt.VIR_DOMAIN_SHUTOFF)
    assert observed == before
    assert_reads_back(observed, spec, ((CP210X, True),))


def test_foreign_formatting_reads_the_same() -> None:
    text = render(vm(network="net", image="i"), ((CP210X, False),))
    observed = parse_domain(text, libvirt.VIR_DOMAIN_SHUTOFF)
    root = ET.fromstring(text)
    for element in root.iter():
        element.tail = None  # one line, no indentation
        if element.text is not None and not element.text.strip():
            element.text = None
    flat = ET.tostring(root, encoding="unicode")  # double quotes, ns0: prefixes, self-closing tags
    assert "\n" not in flat and "'" not in flat
    assert parse_domain(flat, libvirt.VIR_DOMAIN_SHUTOFF) == observed


def test_malformed_xml_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not well-formed XML"):
        parse_domain("<domain><name>x</domain>", libvirt.VIR_DOMAIN_SHUTOFF)
    with pytest.raises(ValueError, match="not a domain XML document: <network>"):
        parse_domain("<network><name>x</name></network>", libvirt.VIR_DOMAIN_SHUTOFF)


def test_entities_are_never_expanded(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("do-not-read")
    doctype = f"<!DOCTYPE domain [<!ENTITY leak SYSTEM 'file://{secret}'>]>"
    text = render(vm()).replace("<name>o.vm</name>", "<name>&leak;</name>")
    observed = parse_domain(doctype + text, libvirt.VIR_DOMAIN_SHUTOFF)
    assert "do-not-read" not in repr(observed)
