"""The host's rules through a whole run (epfiot.reconcile.run_once) on the libvirt test driver: tenants alice and
bob share one host; what bob has (applied by an earlier run, or defined by hand outside epfiot) limits what
alice's plan may add, and alice's problems tell her nothing of bob's. Manifests are real files, so problems
carry their file:line.

The planner's side of each rule, case by case, is in tests/plan_cases/host_rules.yaml."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epfiot.desired import load_manifests
from epfiot.hostconfig import Caller, parse_host_config
from epfiot.libvirt.host import LibvirtHost
from epfiot.model import Desired, ObservedNetwork
from epfiot.plan import HostRules, Options
from epfiot.plan.host_networks import Spans, span_of
from epfiot.reconcile import Request, Result, observe, plan_changes, run_once
from epfiot.registry import Registry
from tests.hosts.usbhost import write_usb_host
from tests.stacks import vm, write_stack

HOST_CONFIG = """\
version: 1
network_ranges: [10.128.0.0/16]
tenants:
  alice:
    users: [alice]
    quotas: {vms: 2, vcpus: 3}
  bob:
    users: [bob]
"""
CONFIG = parse_host_config(HOST_CONFIG, "host.yaml")
ALICE = HostRules.of(CONFIG, Caller("alice", "alice"))
BOB = HostRules.of(CONFIG, Caller("bob", "bob"))
ADMIN = HostRules.of(CONFIG, Caller("administrator"))

# The test driver's file also holds what epfiot does not manage, as a host has: a network with two ranges,
# and a domain holding the adapter with serial B2 (bus 1 device 5).
UNMANAGED = """<network>
  <name>lab</name>
  <bridge name='virbr-lab'/>
  <ip address='10.128.200.1' netmask='255.255.255.0'/>
  <ip address='172.20.8.1' prefix='22'/>
</network>
<domain type='test'>
  <name>legacy</name>
  <memory unit='MiB'>64</memory>
  <os><type>hvm</type></os>
  <devices>
    <hostdev mode='subsystem' type='usb'>
      <source><vendor id='0x10c4'/><product id='0xea60'/><address bus='1' device='5'/></source>
    </hostdev>
  </devices>
</domain>"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LibvirtHost]:
    uri = write_usb_host(tmp_path)
    path = Path(uri.removeprefix("test://"))
    path.write_text(path.read_text().replace("<node>\n", f"<node>\n{UNMANAGED}\n", 1))
    host = LibvirtHost.open(uri, virt_type="test")
    yield host
    host.close()


def stack(directory: Path, owner: str, name: str, **resources: Any) -> Desired:
    folder = directory / owner
    folder.mkdir(exist_ok=True)
    return load_manifests([str(write_stack(folder, owner, stack=name, **resources))])


def run(host: LibvirtHost, desired: Desired, rules: HostRules | None, registry: Registry | None = None) -> Result:
    return run_once(Request(host, desired, registry=registry, rules=rules))


def networks(host: LibvirtHost) -> set[str]:
    return {n.libvirt_name for n in host.observe().networks}


def told(result: Result) -> str:
    """Everything the plan says: its problems, and every action's reason and notes."""
    plan = result.plan
    return "\n".join([*plan.problems, *(a.reason for a in plan.actions), *(n for a in plan.actions for n in a.notes)])


def test_a_network_covering_another_tenants_is_refused_before_anything_is_made(tmp_path: Path, host: LibvirtHost) -> None:
    """Without the rules a /22 covering bob's /24 is made and started, its DHCP range over bob's reservation."""
    bobs = stack(tmp_path, "bob", "cams", networks=[{"name": "iot", "mode": "route", "cidr": "10.128.2.0/24"}],
                 vms=[vm("cam", network="iot", address="10.128.2.20")])
    assert not run(host, bobs, BOB).plan.problems and "bob.iot" in networks(host)
    alices = stack(tmp_path, "alice", "lab", networks=[{"name": "lan", "mode": "route", "cidr": "10.128.0.0/22"}])
    assert not run_once(Request(host, alices, dry_run=True)).plan.problems  # the apply alone sees no conflict

    result = run(host, alices, ALICE)

    manifest = tmp_path / "alice" / "lab.yaml"
    assert [p.split(": ", 1)[0].rsplit(":", 1)[0] for p in result.plan.problems] == [str(manifest)]
    assert "network lan (10.128.0.0/22) overlaps a network of another tenant" in result.plan.problems[0]
    assert "bob" not in told(result) and "iot" not in told(result) and "10.128.2." not in told(result)
    assert result.outcomes == () and "alice.lan" not in networks(host)

    admin = run(host, alices, ADMIN)
    assert "overlaps network 'bob.iot' (owner bob, stack cams), 10.128.2.0/24" in admin.plan.problems[0]


def test_networks_epfiot_does_not_manage_count_with_every_range_they_serve(tmp_path: Path, host: LibvirtHost) -> None:
    lan = stack(tmp_path, "alice", "lab", networks=[{"name": "lan", "mode": "route", "cidr": "10.128.200.0/25"}])
    result = run(host, lan, ALICE)
    assert "overlaps a network of the host" in result.plan.problems[0] and "lab" not in result.plan.problems[0].split(":", 2)[2]

    second_range = stack(tmp_path, "alice", "lab", networks=[{"name": "lan", "mode": "route", "cidr": "172.20.9.0/24"}])
    result = run(host, second_range, ADMIN)
    assert [p for p in result.plan.problems if "overlaps network 'lab' (not managed by epfiot), 172.20.8.0/22" in p]
    assert "alice.lan" not in networks(host)


def test_a_tenants_network_comes_from_the_hosts_ranges(tmp_path: Path, host: LibvirtHost) -> None:
    outside = stack(tmp_path, "alice", "lab", networks=[{"name": "lan", "mode": "route", "cidr": "10.200.0.0/24"}])
    result = run(host, outside, ALICE)
    assert "network lan (10.200.0.0/24) lies outside the ranges this host gives tenants' networks (10.128.0.0/16)" in result.plan.problems[0]
    assert "alice.lan" not in networks(host)

    inside = stack(tmp_path, "alice", "lab", networks=[{"name": "lan", "mode": "route", "cidr": "10.128.4.0/24"}])
    result = run(host, inside, ALICE)
    assert result.plan.problems == () and not result.failed and "alice.lan" in networks(host)


A1 = {"usb": {"id": "10c4:ea60", "serial": "A1"}}


def test_a_device_another_tenants_vm_holds_cannot_be_claimed(tmp_path: Path, host: LibvirtHost) -> None:
    bobs = stack(tmp_path, "bob", "cams", vms=[vm("logger", state="shutoff", devices=[A1])])
    assert not run(host, bobs, BOB).plan.problems
    alices = stack(tmp_path, "alice", "lab", vms=[vm("reader", state="shutoff", devices=[A1])])

    result = run(host, alices, ALICE)

    assert len(result.plan.problems) == 1
    problem = result.plan.problems[0]
    assert problem.startswith(f"{tmp_path / 'alice' / 'lab.yaml'}:")
    assert "usb 10c4:ea60 serial=A1: 10c4:ea60 CP210x UART Bridge (usb_1_1_1: bus 1 device 4, port 1-1.1, serial A1)" in problem
    assert "is held by a VM of another tenant" in problem
    assert "USB 10c4:ea60 serial=A1 is plugged in but held by a VM of another tenant" in told(result)
    assert "not plugged in" not in told(result) and "bob" not in told(result) and "logger" not in told(result)
    assert result.outcomes == () and "alice.reader" not in {v.libvirt_name for v in host.observe().vms}


def test_a_device_a_domain_outside_epfiot_holds_cannot_be_claimed(tmp_path: Path, host: LibvirtHost) -> None:
    b2 = {"usb": {"id": "10c4:ea60", "serial": "B2"}}
    alices = stack(tmp_path, "alice", "lab", vms=[vm("reader", state="shutoff", devices=[b2])])

    assert "is held by a VM of the host" in run(host, alices, ALICE).plan.problems[0]
    assert "is held by VM 'legacy' (not managed by epfiot)" in run(host, alices, ADMIN).plan.problems[0]


def test_two_claims_of_one_apply_say_the_device_is_held_not_unplugged(tmp_path: Path, host: LibvirtHost) -> None:
    """Also without host rules: the device is plugged in, the other claim has it."""
    both = stack(tmp_path, "alice", "lab", vms=[vm("one", state="shutoff", devices=[A1]), vm("two", state="shutoff", devices=[A1])])
    plan = plan_changes(both, observe(host, None, both), Options(), None)
    notes = {a.name: a.notes for a in plan.actions}
    assert "claimed by both" in plan.problems[0]
    assert notes["one"][0].startswith("USB 10c4:ea60 serial=A1 is plugged in but also claimed by alice/two (")
    assert notes["two"][0].startswith("USB 10c4:ea60 serial=A1 is plugged in but also claimed by alice/one (")
    assert not any("not plugged in" in n for n in notes["one"] + notes["two"])


def test_an_endpoint_another_tenant_registered_is_refused_without_naming_it(tmp_path: Path, host: LibvirtHost) -> None:
    with Registry(tmp_path / "registry.db") as registry:
        bobs = stack(tmp_path, "bob", "cams", things=[{"name": "sensor-1", "server": "coap://192.0.2.7:5683"}])
        assert not run(host, bobs, BOB, registry).failed
        alices = stack(tmp_path, "alice", "lab", things=[{"name": "sensor-1", "server": "coap://192.0.2.1:5683"}])

        result = run(host, alices, ALICE, registry)

        assert result.plan.problems == (
            f"{tmp_path / 'alice' / 'lab.yaml'}:5: thing 'sensor-1': this endpoint name is registered by another "
            "owner; endpoint names are unique on the host",
        )
        assert "bob" not in told(result) and "192.0.2.7" not in told(result)
        assert registry.get("sensor-1").config.owner == "bob"  # type: ignore[union-attr]
        assert "(bob, stack cams)" in run(host, alices, ADMIN, registry).plan.problems[0]


def test_quotas_count_the_tenants_other_stacks_and_what_the_plan_removes(tmp_path: Path, host: LibvirtHost) -> None:
    first = stack(tmp_path, "alice", "one", vms=[vm("a", vcpu=2)])
    assert not run(host, first, ALICE).plan.problems
    second = stack(tmp_path, "alice", "two", vms=[vm("b"), vm("c")])

    result = run(host, second, ALICE)

    assert result.plan.problems == (
        f"{tmp_path / 'alice' / 'two.yaml'}:5: tenant alice would have 3 VMs after this plan, over its quota of 2 "
        "(quotas.vms); counted: vm b (this plan, stack two), vm c (this plan, stack two), vm a (stack one)",
        f"{tmp_path / 'alice' / 'two.yaml'}:5: tenant alice would have 4 vCPUs after this plan, over its quota of 3 "
        "(quotas.vcpus); counted: vm b 1 (this plan, stack two), vm c 1 (this plan, stack two), vm a 2 (stack one)",
    )
    assert {"alice.b", "alice.c"}.isdisjoint(v.libvirt_name for v in host.observe().vms)

    # Bob's VMs are not alice's; and once stack one no longer declares a, b and c fit.
    assert not run(host, stack(tmp_path, "bob", "cams", vms=[vm("x"), vm("y"), vm("z")]), BOB).plan.problems
    both = load_manifests([str(write_stack(tmp_path / "alice", "alice", stack="one", vms=[])), str(tmp_path / "alice" / "two.yaml")])
    result = run(host, both, ALICE)
    assert result.plan.problems == () and not result.failed
    assert {v.libvirt_name for v in host.observe().vms} >= {"alice.b", "alice.c"}


# --- overlap search ----------------------------------------------------------------------------------------------

ipv4_networks = st.builds(
    lambda address, prefix: str(ipaddress.ip_network(f"{ipaddress.IPv4Address(address)}/{prefix}", strict=False)),
    st.integers(0, 2**32 - 1),
    st.integers(8, 30),
)
ipv6_networks = st.builds(
    lambda address, prefix: str(ipaddress.ip_network(f"{ipaddress.IPv6Address(address)}/{prefix}", strict=False)),
    st.integers(0, 2**128 - 1),
    st.integers(8, 64),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(ipv4_networks, ipv6_networks), max_size=30), st.one_of(ipv4_networks, ipv6_networks))
def test_the_overlap_search_finds_exactly_what_comparing_with_every_network_finds(host_ranges: list[str], new: str) -> None:
    observed = [ObservedNetwork(f"n{i}", None, True, None, None, subnets=(text,)) for i, text in enumerate(host_ranges)]
    spans = [(net, span) for net in observed if (span := span_of(net.subnets[0])) is not None]
    wanted = ipaddress.ip_network(new)
    expected = sorted(
        net.libvirt_name for net in observed
        if (other := ipaddress.ip_network(net.subnets[0])).version == wanted.version and other.overlaps(wanted)  # type: ignore[arg-type]
    )
    span = span_of(new)
    assert span is not None
    assert sorted(net.libvirt_name for net, _ in Spans(spans).overlapping(span)) == expected
