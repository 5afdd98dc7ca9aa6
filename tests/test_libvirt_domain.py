"""Domain XML and LibvirtHost on the libvirt test driver (in-process, no daemon).

Pure: rendering is deterministic, escapes everything, records ownership and never a secret; reading back
normalises libvirt's additions, on every shape the template renders and libvirt formats back.
Test driver: each test opens its own host file (test:///<tmp>/host.xml gives each connection a private copy).
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest

from epfiot.errors import ConnectionFailed, HostError
from epfiot.libvirt import connection, domain, facts
from epfiot.libvirt.domain import parse_domain, render_domain_xml
from epfiot.libvirt.host import LibvirtHost
from epfiot.libvirt.metadata import NAMESPACE
from epfiot.model import (
    AttachedUsb,
    Credentials,
    HostUsbDevice,
    ObservedVm,
    Ownership,
    PowerState,
    UsbId,
    VmSpec,
    overlay_volume_name,
    seed_volume_name,
)

POOL = "epfiot-images"
CP210X = HostUsbDevice(nodedev="usb_1_4", id=UsbId("10c4", "ea60"), bus=1, device=4)
CORAL = HostUsbDevice(nodedev="usb_1_2", id=UsbId("18d1", "9302"), bus=1, device=6)
SECRET_HASH = "$6$saltsalt$0123456789abcdefSECRETHASH"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIsecretkey user@example"
USER_DATA = "#cloud-config\nruncmd: [echo topsecret-user-data]\n"

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


def vm(name: str = "vm", **changes: object) -> VmSpec:
    spec = VmSpec(owner="o", stack="s", name=name, memory_mib=64, vcpu=1, max_memory_mib=128, max_vcpu=2)
    return replace(spec, **changes)  # type: ignore[arg-type]


CREDENTIALS = Credentials(
    user="charlie", password_hash=SECRET_HASH, ssh_authorized_keys=(SSH_KEY,), hostname="h1", user_data=USER_DATA
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


def render(
    spec: VmSpec,
    usb: tuple[tuple[HostUsbDevice, bool], ...] = (),
    *,
    uuid: str | None = None,
    seed_digest: str = "sha256:seed",
    virt_type: str = "test",
) -> str:
    return render_domain_xml(spec, usb, uuid=uuid, seed_digest=seed_digest, virt_type=virt_type, image_pool=POOL)


@pytest.fixture
def host_file(tmp_path: Path) -> str:
    path = tmp_path / "host.xml"
    path.write_text(HOST_FILE)
    return f"test://{path}"


@pytest.fixture
def host(host_file: str) -> Iterator[LibvirtHost]:
    opened = LibvirtHost.open(host_file)
    yield opened
    opened.close()


def only(host: LibvirtHost, name: str) -> ObservedVm:
    return next(v for v in host.observe().vms if v.libvirt_name == name)


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


# --- connection ------------------------------------------------------------------------------------------


def test_connection_failure_is_one_clear_line(tmp_path: Path) -> None:
    uri = f"test://{tmp_path}/missing.xml"
    with pytest.raises(ConnectionFailed) as caught:
        LibvirtHost.open(uri)
    assert str(caught.value).startswith(f"cannot connect to libvirt at {uri}: ")
    assert "\n" not in str(caught.value) and caught.value.temporary


def test_default_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    assert connection.default_uri() == "qemu:///system"
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "test:///default")
    assert connection.default_uri() == "test:///default"


def test_virt_type(host: LibvirtHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(connection.VIRT_TYPE_ENV, raising=False)
    assert host.virt_type == "test"
    assert connection.virt_type(host.connection) == "test"
    assert connection.virt_type(host.connection, "qemu") == "qemu"
    monkeypatch.setenv(connection.VIRT_TYPE_ENV, "kvm")
    assert connection.virt_type(host.connection) == "kvm"
    with pytest.raises(HostError, match="unknown virtualisation type"):
        connection.virt_type(host.connection, "xen")


def _libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (code, libvirt.VIR_FROM_QEMU, message, 2, None, None, None, 0, 0)
    return error


@pytest.mark.parametrize(
    ("code", "message", "temporary"),
    [
        (libvirt.VIR_ERR_SYSTEM_ERROR, "Cannot write data: Broken pipe", True),
        (libvirt.VIR_ERR_RPC, "internal error: client socket is closed", True),
        (libvirt.VIR_ERR_OPERATION_TIMEOUT, "Timed out during operation: cannot acquire state change lock", True),
        (libvirt.VIR_ERR_INTERNAL_ERROR, "cannot acquire state change lock (held by monitor=remoteDispatch)", True),
        (libvirt.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: domain is not running", False),
        (libvirt.VIR_ERR_NO_DOMAIN, "Domain not found", False),
    ],
)
def test_host_errors_carry_libvirts_message(code: int, message: str, temporary: bool) -> None:
    with pytest.raises(HostError) as caught, connection.host_errors("start o.vm"):
        raise _libvirt_error(code, message)
    assert str(caught.value) == f"start o.vm: {message}"
    assert caught.value.temporary is temporary


# --- LibvirtHost on the test driver ----------------------------------------------------------------------


def test_define_start_observe(host: LibvirtHost) -> None:
    spec = vm(image="debian-12", network="net", credentials=CREDENTIALS)
    host.define_vm(spec, ((CP210X, False),), uuid=None, seed_digest="sha256:seed")
    observed = host.observe()
    assert observed.image_pool == POOL
    assert [d.nodedev for d in observed.usb] == ["usb_1_4"]
    [off] = observed.vms
    assert off.state is PowerState.SHUTOFF and off.live_vcpu is None and off.live_devices is None
    assert off.ownership == Ownership("o", "s", "vm", spec.spec_hash(), "sha256:seed", spec.shutdown_timeout)
    assert (off.disk_volume, off.seed_volume, off.network, off.mac) == (
        overlay_volume_name("o", "vm"),
        seed_volume_name("o", "vm"),
        "o.net",
        spec.mac,
    )
    assert off.devices == (AttachedUsb(CP210X.id, 1, 4, False),)

    host.start_vm("o.vm")
    host.start_vm("o.vm")  # already running: nothing to do
    on = only(host, "o.vm")
    assert on.state is PowerState.RUNNING
    assert (on.live_vcpu, on.live_memory_mib, on.live_max_memory_mib) == (1, 64, 128)
    assert on.live_devices == (AttachedUsb(CP210X.id, 1, 4, False),)


def test_redefine_keeps_identity(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    first = only(host, "o.vm")
    host.define_vm(vm(vcpu=2), (), uuid=first.uuid, seed_digest="")
    second = only(host, "o.vm")
    assert second.uuid == first.uuid and second.vcpu == 2
    assert len(host.observe().vms) == 1


def test_a_new_maximum_waits_for_a_restart(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    host.start_vm("o.vm")
    before = only(host, "o.vm")
    assert (before.max_vcpu, before.live_max_vcpu, before.live_max_memory_mib) == (2, 2, 128)
    host.define_vm(vm(max_vcpu=3, max_memory_mib=256), (), uuid=before.uuid, seed_digest="")
    after = only(host, "o.vm")
    assert (after.max_vcpu, after.max_memory_mib) == (3, 256)  # the definition
    assert (after.live_max_vcpu, after.live_max_memory_mib) == (2, 128)  # the running instance
    host.destroy_vm("o.vm")
    assert only(host, "o.vm").live_max_vcpu is None
    host.start_vm("o.vm")  # a new instance: the new maxima
    restarted = only(host, "o.vm")
    assert (restarted.live_max_vcpu, restarted.live_max_memory_mib) == (3, 256)


def test_vcpus_and_memory_live_and_in_the_definition(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    host.set_vcpus("o.vm", 2, live=False)
    host.set_memory("o.vm", 96, live=False)
    defined = only(host, "o.vm")
    assert (defined.vcpu, defined.memory_mib) == (2, 96)
    host.start_vm("o.vm")
    host.set_vcpus("o.vm", 1, live=True)
    host.set_memory("o.vm", 80, live=True)
    running = only(host, "o.vm")
    assert (running.live_vcpu, running.live_memory_mib) == (1, 80)
    with pytest.raises(HostError, match=r"set memory to 256 MiB live on o\.vm: .*max"):
        host.set_memory("o.vm", 256, live=True)


def test_suspend_resume_and_start_paused(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    host.start_vm("o.vm")
    host.suspend_vm("o.vm")
    host.suspend_vm("o.vm")  # already paused
    assert only(host, "o.vm").state is PowerState.PAUSED
    host.resume_vm("o.vm")
    host.resume_vm("o.vm")  # already running
    assert only(host, "o.vm").state is PowerState.RUNNING
    host.destroy_vm("o.vm")
    host.start_vm("o.vm", paused=True)  # the test driver has no START_PAUSED: start, then pause
    assert only(host, "o.vm").state is PowerState.PAUSED


def test_graceful_shutdown(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    host.start_vm("o.vm")
    assert host.shutdown_vm("o.vm", timeout=5) is True
    assert only(host, "o.vm").state is PowerState.SHUTOFF
    assert host.shutdown_vm("o.vm", timeout=5) is True  # already off
    host.start_vm("o.vm", paused=True)
    assert host.shutdown_vm("o.vm", timeout=5) is True  # resumed, so that the guest can act on it
    assert only(host, "o.vm").state is PowerState.SHUTOFF
    host.destroy_vm("o.vm")  # already off: no error


def test_shutdown_that_does_not_happen_falls_back_to_destroy(host: LibvirtHost) -> None:
    # on_poweroff=restart: the test driver "reboots" on ACPI shutdown, like a guest that ignores it
    xml = render(vm()).replace("<on_poweroff>destroy</on_poweroff>", "<on_poweroff>restart</on_poweroff>")
    host.connection.defineXML(xml)
    host.start_vm("o.vm")
    started = time.monotonic()
    assert host.shutdown_vm("o.vm", timeout=0.3) is False
    assert 0.3 <= time.monotonic() - started < 5
    assert only(host, "o.vm").state is PowerState.SHUTOFF


def test_undefine(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    host.start_vm("o.vm")
    with pytest.raises(HostError, match="running"):
        host.undefine_vm("o.vm")
    host.destroy_vm("o.vm")
    host.undefine_vm("o.vm")  # the test driver refuses NVRAM/CHECKPOINTS: falls back to fewer flags
    assert host.observe().vms == ()
    host.undefine_vm("o.vm")  # already gone


def test_unmanaged_domains_are_observed_without_ownership(host: LibvirtHost) -> None:
    host.connection.defineXML(
        "<domain type='test'><name>someone-else</name><memory>65536</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os></domain>"
    )
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    observed = {v.libvirt_name: v for v in host.observe().vms}
    assert observed["someone-else"].ownership is None and not observed["someone-else"].managed
    assert observed["someone-else"].max_memory_mib == 64
    assert observed["o.vm"].managed


def test_errors_name_the_operation_and_the_domain(host: LibvirtHost) -> None:
    with pytest.raises(HostError, match=r"^start o\.missing: .*[Dd]omain not found"):
        host.start_vm("o.missing")
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    # the test driver cannot attach devices: the error says which call and why
    with pytest.raises(HostError, match=r"attach USB 10c4:ea60 to o\.vm: .*not supported"):
        host.attach_usb("o.vm", CP210X, required=True, live=False)
    with pytest.raises(HostError, match=r"detach USB 10c4:ea60 live from o\.vm: .*not supported"):
        host.detach_usb("o.vm", AttachedUsb(CP210X.id, 1, 4), live=True)


def test_addresses(host: LibvirtHost) -> None:
    host.define_vm(vm(network="net"), (), uuid=None, seed_digest="")
    assert host.vm_addresses("o.vm") == ()  # not running
    assert host.vm_addresses("o.missing") == ()
    host.start_vm("o.vm")
    addresses = host.vm_addresses("o.vm")
    assert len(addresses) == 1 and addresses[0].startswith("10.9.0.")
    assert host.observe(addresses_of={"o.vm", "o.other"}).vm_addresses == {"o.vm": addresses}


def test_observe_sees_changes_after_a_repeat(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    first = host.observe().vms
    assert host.observe().vms == first
    host.set_memory("o.vm", 100, live=False)
    assert only(host, "o.vm").memory_mib == 100


def test_observe_parses_a_definition_once_while_its_xml_stays_the_same(
    host: LibvirtHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    read_definition = domain.read_definition

    def counting(xml: str) -> ObservedVm:
        parsed.append(xml)
        return read_definition(xml)

    monkeypatch.setattr(facts.domxml, "read_definition", counting)
    host.define_vm(vm("a"), (), uuid=None, seed_digest="")
    host.define_vm(vm("b"), (), uuid=None, seed_digest="")
    first = host.observe().vms
    assert len(parsed) == 2
    again = host.observe().vms
    assert again == first and all(x is y for x, y in zip(again, first, strict=True)) and len(parsed) == 2
    host.start_vm("o.a")  # a new state, the same definition: not parsed again
    assert only(host, "o.a").state is PowerState.RUNNING and len(parsed) == 2
    host.set_memory("o.b", 100, live=False)  # a new definition: parsed
    assert only(host, "o.b").memory_mib == 100 and len(parsed) == 3
    host.domains.forget()
    assert host.observe().vms == (only(host, "o.a"), only(host, "o.b")) and len(parsed) == 5


def test_no_image_pool(tmp_path: Path) -> None:
    path = tmp_path / "host.xml"
    path.write_text("<node/>")
    with LibvirtHost.open(f"test://{path}") as bare:
        observed = bare.observe()
    assert observed.image_pool is None and observed.volumes == () and observed.vms == ()


def test_concurrent_calls(host: LibvirtHost) -> None:
    names = [f"vm{i}" for i in range(24)]
    stop = threading.Event()
    observed_counts: list[int] = []

    def observer() -> None:
        while not stop.is_set():
            observed_counts.append(len(host.observe().vms))

    def lifecycle(name: str) -> None:
        host.define_vm(vm(name), (), uuid=None, seed_digest="")
        host.start_vm(f"o.{name}")
        host.set_vcpus(f"o.{name}", 2, live=True)
        host.shutdown_vm(f"o.{name}", timeout=5)

    watcher = threading.Thread(target=observer)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lifecycle, names))
    finally:
        stop.set()
        watcher.join()
    final = host.observe().vms
    assert [v.libvirt_name for v in final] == sorted(f"o.{n}" for n in names)
    assert all(v.state is PowerState.SHUTOFF for v in final)
    assert observed_counts
