"""USB devices: discovery from libvirt node devices (test driver), selectors, claims, policy, hostdev XML.

Discovery runs against a libvirt test-driver host file (tests/hosts/usbhost.py) with a root hub, an external
hub, two identical CP210x serial adapters (serials A1 and B2) and a Coral in either of its identities.
Everything else here is pure.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest

from epfiot import policy as policy_module
from epfiot.errors import HostError
from epfiot.host import Host
from epfiot.libvirt import usb as libvirt_usb
from epfiot.libvirt.domain import parse_usb_hostdevs
from epfiot.libvirt.host import LibvirtHost
from epfiot.libvirt.usb import (
    hostdev_element,
    hostdev_xml,
    is_local,
    observe_usb,
    parse_nodedev,
)
from epfiot.model import (
    AttachedUsb,
    Desired,
    HostUsbDevice,
    ObservedVm,
    Ownership,
    PowerState,
    Source,
    StackSpec,
    UsbId,
    UsbSelector,
    VmSpec,
)
from epfiot.plan import Options, Plan
from epfiot.policy import PolicyError, UsbPolicy, load_policy, parse_policy
from epfiot.reconcile import apply_plan, observe, plan_changes
from epfiot.usb import (
    attached_matches,
    attached_to_claim,
    diff_attached,
    held_by,
    match,
    resolve_claims,
)
from tests.fakes import FakeLiveUsb, LiveUsbCall
from tests.hosts.usbhost import CORAL_BOOT, CORAL_GOOGLE, standard_devices, write_usb_host

CP210X = UsbId("10c4", "ea60")
CORAL_SELECTOR = UsbSelector(UsbId.parse(CORAL_GOOGLE), aliases=(UsbId.parse(CORAL_BOOT),), source=Source("a.yaml", 7))


def observed(tmp_path: Path, coral_identity: str | None = CORAL_BOOT) -> tuple[HostUsbDevice, ...]:
    uri = write_usb_host(tmp_path, standard_devices(coral_identity=coral_identity))
    conn = libvirt.open(uri)
    try:
        return observe_usb(conn)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> tuple[HostUsbDevice, ...]:
    return observed(tmp_path_factory.mktemp("usbhost"))


def by_name(devices: tuple[HostUsbDevice, ...], nodedev: str) -> HostUsbDevice:
    return next(d for d in devices if d.nodedev == nodedev)


def sel(text: str, line: int = 1, **kwargs: object) -> UsbSelector:
    return UsbSelector(UsbId.parse(text), source=Source("stack.yaml", line), **kwargs)  # type: ignore[arg-type]


# --- discovery -------------------------------------------------------------------------------------------


def test_discovery_reads_every_usb_device_from_the_node_devices(devices: tuple[HostUsbDevice, ...]) -> None:
    assert [d.nodedev for d in devices] == ["usb_usb1", "usb_1_1", "usb_1_2", "usb_1_1_1", "usb_1_1_2"]  # by bus/device
    a1 = by_name(devices, "usb_1_1_1")
    assert a1 == HostUsbDevice(
        nodedev="usb_1_1_1",
        id=CP210X,
        vendor_name="Silicon Labs",
        product_name="CP210x UART Bridge",
        bus=1,
        device=4,
        port="1-1.1",
        serial="A1",
        is_hub=False,
    )
    assert by_name(devices, "usb_1_1_2").serial == "B2"
    assert by_name(devices, "usb_1_1_2").port == "1-1.2"


def test_hubs_are_recognised(devices: tuple[HostUsbDevice, ...]) -> None:
    assert {d.nodedev for d in devices if d.is_hub} == {"usb_usb1", "usb_1_1"}  # root hub; class-9 interface


@pytest.mark.parametrize(("identity", "number"), [(CORAL_BOOT, 3), (CORAL_GOOGLE, 6)])
def test_each_coral_identity_is_discovered_on_the_same_port(tmp_path: Path, identity: str, number: int) -> None:
    coral = by_name(observed(tmp_path, identity), "usb_1_2")
    assert (str(coral.id), coral.device, coral.port, coral.is_hub) == (identity, number, "1-2", False)
    assert match(CORAL_SELECTOR, [coral]) == [coral]


def test_discovery_is_deterministic(tmp_path: Path) -> None:
    assert observed(tmp_path / "a") == observed(tmp_path / "b")


def test_without_sysfs_serials_are_unknown(tmp_path: Path) -> None:
    conn = libvirt.open(write_usb_host(tmp_path))
    try:
        assert is_local(conn)
        found = observe_usb(conn, read_sysfs=False)
    finally:
        conn.close()
    assert {d.serial for d in found} == {None}
    assert by_name(found, "usb_1_1").is_hub  # the interface class says so, no sysfs needed


def test_a_host_without_usb_devices(tmp_path: Path) -> None:
    conn = libvirt.open("test:///default")
    try:
        assert observe_usb(conn) == ()
    finally:
        conn.close()


def nodedev(name: str, vendor: str = "0x10c4", product: str = "0xea60", product_name: str = "", *, bus: int = 1) -> str:
    return (
        f"<device><name>{name}</name><capability type='usb_device'><bus>{bus}</bus><device>9</device>"
        f"<product id='{product}'>{product_name}</product><vendor id='{vendor}'>Vendor</vendor></capability></device>"
    )


def test_port_path_from_the_name_when_there_is_no_sysfs_path() -> None:
    assert (parsed := parse_nodedev(nodedev("usb_3_1_4_2", bus=3))) is not None
    assert parsed.port == "3-1.4.2"
    other_bus = parse_nodedev(nodedev("usb_3_1", bus=2))  # not libvirt's naming: no guess
    assert other_bus is not None and other_bus.port is None


def test_hub_heuristics_and_rejects() -> None:
    hub = parse_nodedev(nodedev("usb_1_7", "0x0bda", "0x5411", "4-Port USB 2.0 Hub"))
    assert hub is not None and hub.is_hub
    hubble = parse_nodedev(nodedev("usb_1_8", "0x1050", "0x0407", "Hubble Key"))
    assert hubble is not None and not hubble.is_hub
    gadget = parse_nodedev(nodedev("usb_1_9", "0x1d6b", "0x0104", "Multifunction Composite Gadget"))
    assert gadget is not None and not gadget.is_hub
    assert parse_nodedev(nodedev("usb_1_3", "nonsense")) is None
    assert parse_nodedev("<device><name>pci_0</name><capability type='pci'/></device>") is None


# --- selectors -------------------------------------------------------------------------------------------


def test_a_selector_matches_its_id_or_any_alias_and_never_a_hub(devices: tuple[HostUsbDevice, ...]) -> None:
    assert [d.nodedev for d in match(CORAL_SELECTOR, devices)] == ["usb_1_2"]
    assert match(sel("1d6b:0002"), devices) == []  # the root hub
    assert match(sel("05e3:0610"), devices) == []  # the external hub
    assert match(sel("dead:beef"), devices) == []


def test_serial_and_port_narrow_a_selector(devices: tuple[HostUsbDevice, ...]) -> None:
    assert [d.nodedev for d in match(sel("10c4:ea60"), devices)] == ["usb_1_1_1", "usb_1_1_2"]
    assert [d.nodedev for d in match(sel("10c4:ea60", serial="B2"), devices)] == ["usb_1_1_2"]
    assert [d.nodedev for d in match(sel("10c4:ea60", port="1-1.1"), devices)] == ["usb_1_1_1"]
    assert match(sel("10c4:ea60", serial="B2", port="1-1.1"), devices) == []


def test_an_ambiguous_selector_lists_the_candidates_and_how_to_narrow_it(devices: tuple[HostUsbDevice, ...]) -> None:
    claim = ("alice", "logger", sel("10c4:ea60", 12))
    assignments, problems = resolve_claims([claim], devices)
    assert assignments == {claim: None}
    [problem] = problems
    assert problem.startswith("stack.yaml:12: vm alice/logger: usb 10c4:ea60: matches 2 devices: ")
    assert "usb_1_1_1: bus 1 device 4, port 1-1.1, serial A1" in problem
    assert "usb_1_1_2: bus 1 device 5, port 1-1.2, serial B2" in problem
    assert "Narrow it with serial: (one of 'A1', 'B2') or port: (one of '1-1.1', '1-1.2')." in problem


def test_serial_selectors_need_serials_from_the_host(devices: tuple[HostUsbDevice, ...]) -> None:
    unknown = tuple(replace(d, serial=None) for d in devices)
    claim = ("alice", "logger", sel("10c4:ea60", 3, serial="A1"))
    assignments, problems = resolve_claims([claim], unknown)
    assert assignments == {claim: None}
    assert len(problems) == 1
    assert "reports no serial number" in problems[0] and "select it by port: instead" in problems[0]
    _, problems = resolve_claims([("alice", "logger", sel("10c4:ea60", serial="A1"))], [])
    assert problems == []  # nothing of the kind plugged in: simply not there


def test_an_unplugged_device_resolves_to_none_without_a_problem(devices: tuple[HostUsbDevice, ...]) -> None:
    required = ("alice", "vm1", sel("0403:6001"))
    optional = ("alice", "vm1", sel("0403:6015", required=False))
    assignments, problems = resolve_claims([required, optional], devices)
    assert assignments == {required: None, optional: None}
    assert problems == []


def test_claiming_a_hub_is_an_error(devices: tuple[HostUsbDevice, ...]) -> None:
    _, problems = resolve_claims([("alice", "vm1", sel("05e3:0610", 4))], devices)
    assert len(problems) == 1 and "is a hub; hubs cannot be passed through" in problems[0]


def test_each_claim_gets_its_device(devices: tuple[HostUsbDevice, ...]) -> None:
    claims = [
        ("charlie", "example1", CORAL_SELECTOR),
        ("alice", "logger", sel("10c4:ea60", serial="A1")),
        ("bob", "logger", sel("10c4:ea60", port="1-1.2")),
    ]
    assignments, problems = resolve_claims(claims, devices)
    assert problems == []
    assert {k[0]: v.nodedev if v else None for k, v in assignments.items()} == {
        "charlie": "usb_1_2",
        "alice": "usb_1_1_1",
        "bob": "usb_1_1_2",
    }


def test_two_claims_on_one_device_name_both(devices: tuple[HostUsbDevice, ...]) -> None:
    alice = ("alice", "vm1", UsbSelector(CP210X, serial="A1", source=Source("alice.yaml", 10)))
    bob = ("bob", "vm2", UsbSelector(CP210X, port="1-1.1", source=Source("bob.yaml", 20)))
    assignments, problems = resolve_claims([alice, bob], devices)
    assert assignments == {alice: None, bob: None}
    [problem] = problems
    assert "usb_1_1_1" in problem
    assert "alice/vm1 (alice.yaml:10, usb 10c4:ea60 serial=A1)" in problem
    assert "bob/vm2 (bob.yaml:20, usb 10c4:ea60 port=1-1.1)" in problem
    assert "held by at most one VM" in problem


def test_one_vm_claiming_a_device_twice_is_a_conflict_too(devices: tuple[HostUsbDevice, ...]) -> None:
    first = ("alice", "vm1", UsbSelector(CP210X, serial="A1", source=Source("a.yaml", 3)))
    again = ("alice", "vm1", UsbSelector(CP210X, port="1-1.1", source=Source("a.yaml", 4)))
    _, problems = resolve_claims([first, again], devices)
    assert len(problems) == 1 and "a.yaml:3" in problems[0] and "a.yaml:4" in problems[0]


def test_a_coral_claimed_under_each_identity_conflicts_once_both_match(tmp_path: Path) -> None:
    charlie = ("charlie", "infer", CORAL_SELECTOR)
    dave = ("dave", "infer", sel(CORAL_BOOT, 9))
    boot = observed(tmp_path / "boot", CORAL_BOOT)
    _, problems = resolve_claims([charlie, dave], boot)
    assert len(problems) == 1 and "charlie/infer" in problems[0] and "dave/infer" in problems[0]
    google = observed(tmp_path / "google", CORAL_GOOGLE)
    assignments, problems = resolve_claims([charlie, dave], google)
    assert problems == []  # dave's selector lost the device when it re-enumerated
    assert assignments[charlie] is not None and assignments[dave] is None


# --- policy ----------------------------------------------------------------------------------------------

POLICY = """\
usb:
  - id: "18d1:9302"
    aliases: ["1a6e:089a"]
    owners: [charlie]
  - id: "10c4:ea60"
    serial: "A1"
    owners: [alice, bob]
"""


def test_policy_allows_and_denies(devices: tuple[HostUsbDevice, ...]) -> None:
    policy = parse_policy(POLICY, "/etc/epfiot/policy.yaml")
    coral, a1, b2 = (by_name(devices, n) for n in ("usb_1_2", "usb_1_1_1", "usb_1_1_2"))
    assert policy.allows("charlie", coral) and not policy.allows("alice", coral)
    assert policy.allows("bob", a1) and not policy.allows("charlie", a1)
    assert policy.allows("charlie", b2)  # no rule covers it: anyone
    assert UsbPolicy().allows("anyone", coral)


def test_a_denied_claim_is_an_error_naming_the_policy(devices: tuple[HostUsbDevice, ...]) -> None:
    policy = parse_policy(POLICY, "/etc/epfiot/policy.yaml")
    claim = ("alice", "infer", CORAL_SELECTOR)
    assignments, problems = resolve_claims([claim], devices, policy)
    assert assignments == {claim: None}
    [problem] = problems
    assert problem.startswith("a.yaml:7: vm alice/infer: usb 18d1:9302|1a6e:089a: tenant alice may not claim")
    assert "host USB policy (/etc/epfiot/policy.yaml:2) reserves it for charlie" in problem
    assignments, problems = resolve_claims([("charlie", "infer", CORAL_SELECTOR)], devices, policy)
    assert problems == []


def test_a_denied_claim_is_an_error_even_while_unplugged() -> None:
    policy = parse_policy(POLICY, "policy.yaml")
    _, problems = resolve_claims([("alice", "infer", CORAL_SELECTOR)], [], policy)
    assert len(problems) == 1 and "reserves it for charlie" in problems[0]
    # whether a plain CP210x selector is allowed depends on which adapter it finds: decided once plugged in
    _, problems = resolve_claims([("charlie", "log", sel("10c4:ea60"))], [], policy)
    assert problems == []


def test_the_first_covering_rule_decides(devices: tuple[HostUsbDevice, ...]) -> None:
    policy = parse_policy(
        'usb:\n  - {id: "10c4:ea60", serial: "A1", owners: [alice]}\n  - {id: "10c4:ea60", owners: []}\n', "p.yaml"
    )
    assert policy.allows("alice", by_name(devices, "usb_1_1_1"))
    assert not policy.allows("alice", by_name(devices, "usb_1_1_2"))


def test_policy_file_problems_are_reported_with_lines() -> None:
    text = """\
usb:
  - id: "18d1"
    owners: [charlie]
  - id: "10c4:ea60"
    port: "usb1"
    colour: red
  - owners: [Not A Name]
extra: 1
"""
    with pytest.raises(PolicyError) as error:
        parse_policy(text, "policy.yaml")
    message = str(error.value)
    assert message.startswith("7 problems in the USB policy; nothing was changed:")
    for expected in [
        "policy.yaml:2: usb[0].id: '18d1' is not a USB id",
        "policy.yaml:4: usb[1]: 'owners' is required",
        "policy.yaml:5: usb[1].port: 'usb1' is not a port path",
        "policy.yaml:6: usb[1]: unknown key 'colour'",
        "policy.yaml:7: usb[2]: 'id' is required",
        "policy.yaml:7: usb[2].owners[0]: 'Not A Name' is not a tenant name",
        "policy.yaml:8: unknown key 'extra'",
    ]:
        assert expected in message
    with pytest.raises(PolicyError, match=r"policy.yaml:3: invalid YAML in the USB policy: expected"):
        parse_policy("usb:\n  - id: x\n   owners: y\n", "policy.yaml")
    with pytest.raises(PolicyError, match="must be a mapping"):
        parse_policy("- 1\n", "policy.yaml")


def test_unquoted_ids_are_read_as_written() -> None:
    # YAML 1.1 reads 0403:6001 as a base-60 number; the policy reads the text.
    policy = parse_policy("usb:\n  - id: 0403:6001\n    owners: [alice]\n", "p.yaml")
    assert policy.rules[0].ids == (UsbId("0403", "6001"),)


def test_loading_the_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPFIOT_POLICY", raising=False)
    monkeypatch.setattr(policy_module, "DEFAULT_POLICY_PATH", tmp_path / "absent.yaml")
    assert load_policy(None) == UsbPolicy()  # no file at the default path: anyone may claim anything
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.yaml")
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    assert len(load_policy(path).rules) == 2
    monkeypatch.setenv("EPFIOT_POLICY", str(path))
    assert load_policy(None).path == str(path)
    monkeypatch.setenv("EPFIOT_POLICY", str(tmp_path / "nope.yaml"))
    with pytest.raises(PolicyError, match=r"nope\.yaml does not exist"):
        load_policy(None)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_policy(empty).rules == ()
    garbled = tmp_path / "garbled.yaml"
    garbled.write_bytes(b'usb:\n  - id: "18d1:9302"\n    owners: [\xff]\n')
    with pytest.raises(PolicyError, match=r"garbled\.yaml:3: the USB policy file is not UTF-8 text$"):
        load_policy(garbled)


# --- attached hostdevs vs desired ------------------------------------------------------------------------


def attached(device: HostUsbDevice, required: bool = True) -> AttachedUsb:
    return AttachedUsb(device.id, device.bus, device.device, required)


def test_a_reordered_device_list_is_no_change(devices: tuple[HostUsbDevice, ...]) -> None:
    a1, b2 = by_name(devices, "usb_1_1_1"), by_name(devices, "usb_1_1_2")
    diff = diff_attached([attached(b2), attached(a1, False)], [(a1, False), (b2, True)])
    assert not diff.changed and len(diff.unchanged) == 2
    diff = diff_attached([attached(a1)], [(a1, False)])
    assert diff.changed and diff.required_changed == ((a1, False),)


def test_a_reenumerated_coral_is_the_same_claim_with_a_new_hostdev(tmp_path: Path) -> None:
    before = by_name(observed(tmp_path / "boot", CORAL_BOOT), "usb_1_2")
    after = by_name(observed(tmp_path / "google", CORAL_GOOGLE), "usb_1_2")
    old = attached(before)
    assert attached_matches(old, before) and not attached_matches(old, after)
    assert attached_to_claim(old, CORAL_SELECTOR) and attached_to_claim(attached(after), CORAL_SELECTOR)
    diff = diff_attached([old], [(after, True)])
    assert diff.attach == ((after, True),) and diff.detach == (old,)


def test_an_address_less_hostdev_matches_by_id() -> None:
    device = HostUsbDevice("usb_1_5", CP210X, bus=1, device=5)
    assert attached_matches(AttachedUsb(CP210X), device)
    assert not attached_matches(AttachedUsb(CP210X, 1, 6), device)


def vm(name: str, *devices: AttachedUsb, owner: str | None = "alice") -> ObservedVm:
    ownership = Ownership(owner, "main", name.split(".", 1)[-1]) if owner else None
    return ObservedVm(name, "uuid", ownership, PowerState.SHUTOFF, 1, 1, 64, 64, devices=devices)


def test_held_by_names_the_vm_whose_definition_holds_each_device(devices: tuple[HostUsbDevice, ...]) -> None:
    a1, b2, coral = (by_name(devices, n) for n in ("usb_1_1_1", "usb_1_1_2", "usb_1_2"))
    vms = [
        vm("alice.logger", attached(a1)),
        vm("legacy", attached(b2), owner=None),
        vm("charlie.infer", AttachedUsb(UsbId.parse(CORAL_GOOGLE), 1, 6)),  # stale: the Coral is 1a6e:089a now
    ]
    holders = held_by(vms, devices)
    assert holders == {"usb_1_1_1": "alice/logger", "usb_1_1_2": "legacy"}
    assert coral.nodedev not in holders
    assert held_by([vm("bob.x", AttachedUsb(CP210X))], devices) == {}  # two adapters: ambiguous, holds none


# --- hostdev XML -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("required", [True, False])
def test_hostdev_xml_round_trips(devices: tuple[HostUsbDevice, ...], required: bool) -> None:
    a1 = by_name(devices, "usb_1_1_1")
    xml = hostdev_xml(a1, required=required)
    assert xml.startswith("<hostdev mode=\"subsystem\" type=\"usb\" managed=\"yes\">")
    assert ("startupPolicy" in xml) is not required
    domain = f"<domain><devices><disk type='file'/>{xml}</devices></domain>"
    assert parse_usb_hostdevs(domain) == (AttachedUsb(CP210X, 1, 4, required),)


def test_two_identical_adapters_get_distinct_hostdevs(devices: tuple[HostUsbDevice, ...]) -> None:
    a1, b2 = by_name(devices, "usb_1_1_1"), by_name(devices, "usb_1_1_2")
    assert hostdev_xml(a1, required=True) != hostdev_xml(b2, required=True)
    assert "<address bus=\"1\" device=\"4\" />" in hostdev_xml(a1, required=True)


def test_hostdev_refuses_a_malformed_id() -> None:
    with pytest.raises(ValueError, match="not a USB id"):
        hostdev_xml(HostUsbDevice("x", UsbId("10c4'/><evil", "ea60")), required=True)


def test_parse_hostdevs_reads_what_libvirt_writes_back() -> None:
    domain = (
        """<domain type='kvm'><devices>
          <hostdev mode='subsystem' type='usb' managed='no'>
            <source startupPolicy='optional'><vendor id='0x18D1'/><product id='0x9302'/>
              <address bus='2' device='7'/></source>
            <alias name='hostdev0'/><address type='usb' bus='0' port='1'/>
          </hostdev>
          <hostdev mode='subsystem' type='usb'><source><vendor id='0x10c4'/><product id='0xea60'/></source></hostdev>
          <hostdev mode='subsystem' type='usb'><source><address bus='1' device='3'/></source></hostdev>
          <hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0' slot='1' function='0'/></source></hostdev>
        </devices></domain>"""
    )
    assert parse_usb_hostdevs(domain) == (
        AttachedUsb(CP210X, None, None, True),
        AttachedUsb(UsbId("18d1", "9302"), 2, 7, False),
    )


@pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None,
    reason="virt-xml-validate needs libvirt-clients and libxml2-utils (xmllint)",
)
def test_hostdev_xml_is_valid_in_a_domain(devices: tuple[HostUsbDevice, ...], tmp_path: Path) -> None:
    domain = ET.fromstring(
        "<domain type='kvm'><name>usbcheck</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os><devices/></domain>"
    )
    found = domain.find("devices")
    assert found is not None
    found.append(hostdev_element(by_name(devices, "usb_1_1_1"), required=True))
    found.append(hostdev_element(by_name(devices, "usb_1_2"), required=False))
    path = tmp_path / "domain.xml"
    path.write_text(ET.tostring(domain, encoding="unicode"))
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_test_driver_keeps_usb_hostdevs_in_a_definition(devices: tuple[HostUsbDevice, ...]) -> None:
    conn = libvirt.open("test:///default")
    try:
        xml = (
            "<domain type='test'><name>usbkeep</name><memory unit='MiB'>64</memory>"
            f"<os><type>hvm</type></os><devices>{hostdev_xml(by_name(devices, 'usb_1_1_2'), required=False)}"
            "</devices></domain>"
        )
        dom = conn.defineXML(xml)
        try:
            back = parse_usb_hostdevs(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        finally:
            dom.undefine()
    finally:
        conn.close()
    assert back == (AttachedUsb(CP210X, 1, 5, False),)



# --- the live path, through FakeLiveUsb ------------------------------------------------------------------
# These machines have no USB bus, so libvirt cannot attach a USB device to a running domain here (and the
# test driver has no attachDeviceFlags at all). FakeLiveUsb stands in for exactly the live calls a test sets
# up, over a real LibvirtHost on the test driver, and fails loudly on any other.


@pytest.fixture
def live_host(tmp_path: Path) -> Iterator[FakeLiveUsb]:
    host = LibvirtHost.open(write_usb_host(tmp_path), virt_type="test")
    try:
        yield FakeLiveUsb(host)
    finally:
        host.close()


def logger_vm(*devices: UsbSelector, state: PowerState = PowerState.RUNNING) -> Desired:
    spec = VmSpec("alice", "main", "logger", 64, 1, 64, 1, state=state, devices=devices)
    return Desired(stacks=(StackSpec("alice", "main"),), vms=(spec,))


def converge(host: Host, desired: Desired) -> Plan:
    plan = plan_changes(desired, observe(host, None, desired), Options(), None)
    result = apply_plan(plan, desired, host, None, Options(), None, parallel=1)
    assert not result.failed, [o.error for o in result.failed]
    return plan


def pending(host: Host, desired: Desired) -> list[str]:
    plan = plan_changes(desired, observe(host, None, desired), Options(), None)
    assert plan.problems == ()
    return [f"{a.name}: {a.verb}" for a in plan.actions if a.changes_something]


A1_SELECTOR = UsbSelector(CP210X, serial="A1", source=Source("alice.yaml", 8))
B2_SELECTOR = UsbSelector(CP210X, port="1-1.2", required=False, source=Source("alice.yaml", 9))


def test_live_attach_and_detach_through_the_host_interface(live_host: FakeLiveUsb) -> None:
    host = live_host
    converge(host, logger_vm(A1_SELECTOR))  # created with A1 in its definition, then started
    [vm] = [v for v in host.observe().vms if v.libvirt_name == "alice.logger"]
    a1, b2 = (by_name(host.observe().usb, n) for n in ("usb_1_1_1", "usb_1_1_2"))
    assert vm.active and vm.devices == (attached(a1),)
    assert host.calls == [] and pending(host, logger_vm(A1_SELECTOR)) == []

    host.expect("alice.logger", b2)
    converge(host, logger_vm(A1_SELECTOR, B2_SELECTOR))
    assert host.calls == [LiveUsbCall("attach", "alice.logger", attached(b2, False))]
    [vm] = [v for v in host.observe().vms if v.libvirt_name == "alice.logger"]
    assert set(vm.devices) == set(vm.live_devices or ()) == {attached(a1), attached(b2, False)}
    assert pending(host, logger_vm(A1_SELECTOR, B2_SELECTOR)) == []  # attached: no action

    host.expect("alice.logger", a1)
    converge(host, logger_vm(B2_SELECTOR))
    assert host.calls[-1] == LiveUsbCall("detach", "alice.logger", attached(a1))
    [vm] = [v for v in host.observe().vms if v.libvirt_name == "alice.logger"]
    assert vm.devices == vm.live_devices == (attached(b2, False),)
    assert pending(host, logger_vm(B2_SELECTOR)) == []


def test_a_reordered_device_list_plans_no_action(live_host: FakeLiveUsb) -> None:
    converge(live_host, logger_vm(A1_SELECTOR, B2_SELECTOR))
    assert pending(live_host, logger_vm(B2_SELECTOR, A1_SELECTOR)) == []
    assert live_host.calls == []


def test_the_fake_fails_loudly_on_anything_not_set_up(live_host: FakeLiveUsb) -> None:
    converge(live_host, logger_vm())
    a1 = by_name(live_host.observe().usb, "usb_1_1_1")
    with pytest.raises(AssertionError, match=r"FakeLiveUsb: unexpected live attach of 10c4:ea60 \(usb_1_1_1\)"):
        live_host.attach_usb("alice.logger", a1, required=True, live=True)
    with pytest.raises(AssertionError, match="FakeLiveUsb: unexpected live detach"):
        live_host.detach_usb("alice.logger", attached(a1), live=True)
    live_host.expect("alice.logger", a1)
    with pytest.raises(HostError, match="not attached"):
        live_host.detach_usb("alice.logger", attached(a1), live=True)
    live_host.attach_usb("alice.logger", a1, required=True, live=True)
    with pytest.raises(HostError, match="in use"):
        live_host.attach_usb("alice.logger", a1, required=True, live=True)
    live_host.destroy_vm("alice.logger")
    with pytest.raises(HostError, match="not running"):
        live_host.attach_usb("alice.logger", a1, required=True, live=True)


def test_a_coral_that_reenumerates_under_a_running_vm_converges(
    tmp_path: Path, live_host: FakeLiveUsb, monkeypatch: pytest.MonkeyPatch
) -> None:
    infer = logger_vm(CORAL_SELECTOR)
    converge(live_host, infer)
    boot = by_name(live_host.observe().usb, "usb_1_2")
    google = by_name(observed(tmp_path / "google", CORAL_GOOGLE), "usb_1_2")
    # After its first inference the Coral is 18d1:9302 at a new device number, on the same port.
    reenumerated = tuple(google if d.nodedev == "usb_1_2" else d for d in live_host.observe().usb)
    monkeypatch.setattr(libvirt_usb, "observe_usb", lambda conn, **_: reenumerated)
    live_host.expect("alice.logger", google)
    live_host.expect("alice.logger", boot)
    converge(live_host, infer)
    assert live_host.calls == [
        LiveUsbCall("attach", "alice.logger", attached(google)),
        LiveUsbCall("detach", "alice.logger", attached(boot)),
    ]
    [vm] = [v for v in live_host.observe().vms if v.libvirt_name == "alice.logger"]
    assert vm.live_devices == (attached(google),)
    assert vm.devices == (attached(google),)  # the definition follows, so a restart keeps the device
    assert pending(live_host, infer) == []
