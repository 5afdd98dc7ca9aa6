"""Golden XML: the domain and network XML epfiot defines for every example stack in specs/ and for the
variants worth pinning (tests/golden/variants/), compared byte for byte with the files under tests/golden/.

Each stack is planned as `epfiot apply` would plan it, on a test-driver host that has the machine's usual
USB devices (tests/hosts/usbhost.py) and the base image the stacks name, with the domain type kvm; the XML
is what LibvirtHost would define for the plan's DefineVm and DefineNetwork steps. So a template change,
a change of what the planner hands the driver, or of the USB or seed it resolves, shows as a diff here.

A change that is meant: regenerate the files, then read the diff in git before committing it:

    EPFIOT_UPDATE_GOLDEN=1 .venv/bin/pytest -q tests/test_golden_xml.py

Without that variable nothing is written: a missing, different or left-over file (a case renamed or gone)
fails. specs/lwm2m-guest.yaml reads ALICE_PASSWORD from the environment; its loader gets GOLDEN_ENV, and the
salt of its hash recorded as in a state directory (GOLDEN_SALTS), so that its seed digest stays the same.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hosts.usbhost import write_usb_host

from epfiot.desired import SecretAccess, load_manifest_text, load_manifests
from epfiot.libvirt import storage
from epfiot.libvirt.domain import render_domain_xml
from epfiot.libvirt.host import LibvirtHost
from epfiot.libvirt.network_xml import render_network_xml
from epfiot.model import Desired, HostUsbDevice, NetworkMode, NetworkSpec, UsbId, VmSpec
from epfiot.plan import Options
from epfiot.plan import steps as s
from epfiot.reconcile import observe, plan_changes
from epfiot.salts import SaltStore
from epfiot.secrets import ROUNDS, sha512_crypt

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("EPFIOT_UPDATE_GOLDEN") == "1"
GOLDEN_ENV = {"ALICE_PASSWORD": "golden-password"}
# account -> user and the salt its recorded hash has
GOLDEN_SALTS = {"alice/alice-lwm2m/lwm2m-server": ("alice", "goldensaltgolden")}
BASE_IMAGE = "debian-12.qcow2"
UUID = "6c0e9a3e-7d4b-4f0e-9b1a-2f3c4d5e6f70"

# Stacks for what specs/ does not show, planned like the specs.
VARIANT_STACKS = {
    "isolated": """
version: 1
stack: iso
owner: ivan
networks:
  - {name: lab, mode: isolated, cidr: 10.140.0.0/24}
vms:
  - {name: probe, memory: 64MiB, vcpu: 1, network: lab, address: 10.140.0.5}
""",
    "usb-several": """
version: 1
stack: usb
owner: uma
vms:
  - name: logger
    memory: 64MiB
    vcpu: 1
    devices:
      - usb: {id: "10c4:ea60", serial: "B2"}
      - usb: {id: "10c4:ea60", port: "1-1.1", required: false}
      - usb: {id: "1a6e:089a", required: false}
""",
    "image-only": f"""
version: 1
stack: disk
owner: dora
vms:
  - {{name: worker, memory: 256MiB, max_memory: 1GiB, vcpu: 1, max_vcpu: 4, image: {BASE_IMAGE}, disk_size: 4GiB}}
""",
}


def _host(directory: Path) -> LibvirtHost:
    host = LibvirtHost.open(write_usb_host(directory), virt_type="kvm")
    storage.ensure_pool(host.connection, host.image_pool, str(directory / "images"))
    base = (
        f"<volume><name>{BASE_IMAGE}</name><capacity unit='bytes'>{1024**3}</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    host.connection.storagePoolLookupByName(host.image_pool).createXML(base, 0)
    return host


def _defined(host: LibvirtHost, desired: Desired) -> dict[str, str]:
    """File name -> the XML the plan of `desired` defines on `host`."""
    plan = plan_changes(desired, observe(host, None, desired), Options(), None)
    assert plan.problems == (), plan.problems
    found: dict[str, str] = {}
    for action in plan.actions:
        for step in action.steps:
            if isinstance(step, s.DefineVm):
                xml = host.render_vm(step.spec, step.usb, uuid=step.uuid, seed_digest=step.seed_digest)
                found[f"{step.spec.libvirt_name}.domain.xml"] = xml
            elif isinstance(step, s.DefineNetwork):
                found[f"{step.spec.libvirt_name}.network.xml"] = render_network_xml(step.spec)
    assert found, "the plan defines nothing"
    return found


def _redefinitions() -> dict[str, str]:
    """What defining again renders for objects that exist: their UUID kept, and a network's reservations."""
    vm = VmSpec(owner="rita", stack="again", name="box", memory_mib=128, vcpu=1, max_memory_mib=128, max_vcpu=1)
    unaddressed = HostUsbDevice(nodedev="", id=UsbId("0403", "6001"))  # bus and device unknown: no <address>
    domain = render_domain_xml(
        vm, ((unaddressed, True),), uuid=UUID, seed_digest="", virt_type="qemu", image_pool=storage.DEFAULT_POOL
    )
    net = NetworkSpec(owner="rita", stack="again", name="lan", mode=NetworkMode.NAT, cidr="10.141.0.0/24")
    hosts = [
        {"mac": "52:54:00:AA:BB:01", "ip": "10.141.0.10", "name": "box"},
        {"mac": "52:54:00:aa:bb:02", "ip": "10.141.0.11", "name": ""},
        {"mac": "52:54:00:aa:bb:03", "ip": "10.99.0.1", "name": "elsewhere"},  # outside the network: dropped
    ]
    return {
        "rita.box.redefined.domain.xml": domain,
        "rita.lan.redefined.network.xml": render_network_xml(net, uuid=UUID, hosts=hosts),
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, str]]]:
    """Golden directory name -> file name -> XML, for every case."""
    cases: dict[str, dict[str, str]] = {}
    state = tmp_path_factory.mktemp("golden-state")
    password = GOLDEN_ENV["ALICE_PASSWORD"]
    records = {a: {"user": u, "hash": sha512_crypt(password, salt, ROUNDS)} for a, (u, salt) in GOLDEN_SALTS.items()}
    (state / "salts.json").write_text(json.dumps(records))
    access = SecretAccess(GOLDEN_ENV, salts=SaltStore.in_state_dir(state))
    with _host(tmp_path_factory.mktemp("golden-host")) as host:
        for spec in SPECS:
            cases[spec.stem] = _defined(host, load_manifests([str(spec)], access=access))
        variants: dict[str, str] = {}
        for name, text in VARIANT_STACKS.items():
            for file, xml in _defined(host, load_manifest_text(text, f"<{name}>", env={})).items():
                variants[f"{name}.{file}"] = xml
        variants.update(_redefinitions())
        cases["variants"] = variants
    yield cases


CASES = [spec.stem for spec in SPECS] + ["variants"]


@pytest.mark.parametrize("case", CASES)
def test_golden_xml(rendered: dict[str, dict[str, str]], case: str) -> None:
    directory = GOLDEN / case
    want = rendered[case]
    if UPDATE:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in set(p.name for p in directory.glob("*.xml")) - set(want):
            (directory / stale).unlink()
        for name, xml in want.items():
            (directory / name).write_bytes(xml.encode())
    hint = "if the change is meant: EPFIOT_UPDATE_GOLDEN=1 .venv/bin/pytest -q tests/test_golden_xml.py"
    have = {p.name for p in directory.glob("*.xml")}
    assert have == set(want), f"tests/golden/{case}: missing {sorted(set(want) - have)}, left over {sorted(have - set(want))}; {hint}"
    for name, xml in sorted(want.items()):
        golden = (directory / name).read_bytes().decode()
        if golden != xml:
            diff = "".join(difflib.unified_diff(golden.splitlines(True), xml.splitlines(True), f"golden/{case}/{name}", "rendered"))
            pytest.fail(f"{case}/{name} differs from its golden file ({hint}):\n{diff}")


def test_every_golden_directory_is_a_case() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(CASES)


def test_the_cases_cover_what_the_templates_can_render(rendered: dict[str, dict[str, str]]) -> None:
    every = "".join(xml for case in rendered.values() for xml in case.values())
    for shape in (
        "<forward mode='nat'/>",
        "<forward mode='route'/>",
        "<hostdev mode='subsystem' type='usb' managed='yes'><source startupPolicy='optional'>",
        "<hostdev mode='subsystem' type='usb' managed='yes'><source><vendor id='0x0403' /><product id='0x6001' /></source>",
        "<disk type='volume' device='cdrom'>",
        "<disk type='volume' device='disk'>",
        "<interface type='network'>",
        "<boot dev='network'/>",
        f"<uuid>{UUID}</uuid>",
        "<host mac=",
    ):
        assert shape.replace("'", '"') in every or shape in every, shape
    isolated = rendered["variants"]["isolated.ivan.lab.network.xml"]
    assert "<forward" not in isolated


def test_no_secret_reaches_the_xml(rendered: dict[str, dict[str, str]]) -> None:
    every = "".join(xml for case in rendered.values() for xml in case.values())
    assert GOLDEN_ENV["ALICE_PASSWORD"] not in every
    assert "$6$" not in every  # no password hash either: those reach the guest only in its seed
