"""Managed networks on the test driver: rendering, define/observe/remove, DHCP host reservations."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from epfiot.addressing import dhcp_range
from epfiot.errors import HostError
from epfiot.libvirt import network, network_xml
from epfiot.model import NetworkMode, NetworkSpec

NS = "{https://epfiot.dev/xmlns/resource/1}"
MAC1, MAC2 = "52:54:00:0a:00:01", "52:54:00:0a:00:02"


def spec(**changes: Any) -> NetworkSpec:
    base = NetworkSpec(
        owner="charlie", stack="edge", name="lan", mode=NetworkMode.ROUTE, cidr="10.128.0.0/24"
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def conn() -> Iterator[Any]:
    """The test driver's default host. Its state is shared by the connections of this process and reset
    when the last one closes, so whatever a test leaves under "charlie." is removed here."""
    c = libvirt.open("test:///default")
    _remove_test_networks(c)
    try:
        yield c
    finally:
        _remove_test_networks(c)
        c.close()


def _remove_test_networks(c: Any) -> None:
    for net in c.listAllNetworks(0):
        if net.name().startswith("charlie."):
            if net.isActive():
                net.destroy()
            net.undefine()


def observed(c: Any, name: str = "charlie.lan") -> Any:
    found = {n.libvirt_name: n for n in network.observe_networks(c)}
    return found.get(name)


# --- rendering -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "forward"),
    [(NetworkMode.ROUTE, "route"), (NetworkMode.NAT, "nat"), (NetworkMode.ISOLATED, None)],
)
def test_render_modes(mode: NetworkMode, forward: str | None) -> None:
    s = spec(mode=mode)
    root = ET.fromstring(network_xml.render_network_xml(s))
    element = root.find("forward")
    assert (element.get("mode") if element is not None else None) == forward
    bridge = root.find("bridge")
    assert bridge is not None
    assert bridge.get("name") == s.bridge and bridge.get("stp") == "on"
    ip = root.find("ip")
    assert ip is not None
    assert (ip.get("address"), ip.get("prefix")) == ("10.128.0.1", "24")
    dhcp_range_element = root.find("ip/dhcp/range")
    assert dhcp_range_element is not None
    assert (dhcp_range_element.get("start"), dhcp_range_element.get("end")) == (
        "10.128.0.128",
        "10.128.0.254",
    )
    resource = root.find(f"metadata/{NS}resource")
    assert resource is not None
    assert resource.attrib == {"owner": "charlie", "stack": "edge", "name": "lan", "spec-hash": s.spec_hash()}


@pytest.mark.parametrize(
    ("cidr", "start", "end", "want"),
    [
        ("10.128.0.0/24", None, None, ("10.128.0.128", "10.128.0.254")),
        ("10.20.0.0/16", None, None, ("10.20.128.0", "10.20.255.254")),
        ("192.168.7.0/30", None, None, ("192.168.7.2", "192.168.7.2")),
        ("10.128.0.0/24", "10.128.0.50", "10.128.0.99", ("10.128.0.50", "10.128.0.99")),
    ],
)
def test_render_dhcp_range(cidr: str, start: str | None, end: str | None, want: tuple[str, str]) -> None:
    s = spec(cidr=cidr, dhcp_start=start, dhcp_end=end)
    element = ET.fromstring(network_xml.render_network_xml(s)).find("ip/dhcp/range")
    assert element is not None
    assert (element.get("start"), element.get("end")) == want == dhcp_range(s)


def test_render_is_deterministic() -> None:
    assert network_xml.render_network_xml(spec()) == network_xml.render_network_xml(spec())


def test_render_refuses_a_network_too_small() -> None:
    with pytest.raises(ValueError, match="too small"):
        network_xml.render_network_xml(spec(cidr="10.0.0.0/31"))


def test_render_escapes_every_value() -> None:
    nasty = "x'\"<>&</name><forward mode='open'/>"
    s = spec(owner=nasty, stack=nasty, name=nasty, mode=NetworkMode.ISOLATED)
    root = ET.fromstring(network_xml.render_network_xml(s))  # well-formed
    assert root.findtext("name") == s.libvirt_name
    assert root.find("forward") is None  # nothing injected
    assert [child.tag for child in root] == ["name", "metadata", "bridge", "ip"]
    resource = root.find(f"metadata/{NS}resource")
    assert resource is not None
    assert (resource.get("owner"), resource.get("stack"), resource.get("name")) == (nasty, nasty, nasty)


@pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None, reason="virt-xml-validate (libvirt-clients) missing"
)
@pytest.mark.parametrize("mode", list(NetworkMode))
def test_render_passes_libvirts_schema(mode: NetworkMode, tmp_path: Path) -> None:
    hosts = [{"mac": MAC1, "ip": "10.128.0.10", "name": "vm1"}]
    path = tmp_path / "network.xml"
    path.write_text(
        network_xml.render_network_xml(spec(mode=mode), uuid="6f4f3c3e-7f2a-4c1e-9a8b-0d1e2f3a4b5c", hosts=hosts)
    )
    result = subprocess.run(
        ["virt-xml-validate", str(path), "network"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- lifecycle -------------------------------------------------------------------------------------------


def test_define_observe_remove(conn: Any) -> None:
    s = spec()
    network.define_network(conn, s)
    net = observed(conn)
    assert net is not None
    assert net.ownership is not None
    assert (net.ownership.owner, net.ownership.stack, net.ownership.name) == ("charlie", "edge", "lan")
    assert net.ownership.spec_hash == s.spec_hash()
    assert net.active
    assert (net.mode, net.cidr, net.bridge) == (NetworkMode.ROUTE, "10.128.0.0/24", s.bridge)
    assert (net.dhcp_start, net.dhcp_end) == dhcp_range(s)
    assert net.dhcp_hosts == ()
    assert conn.networkLookupByName("charlie.lan").autostart()
    network.remove_network(conn, "charlie.lan")
    assert observed(conn) is None
    network.remove_network(conn, "charlie.lan")  # absent: nothing to do


@pytest.mark.parametrize("mode", list(NetworkMode))
def test_observed_mode_round_trips(conn: Any, mode: NetworkMode) -> None:
    network.define_network(conn, spec(mode=mode))
    assert observed(conn).mode is mode


def test_define_again_keeps_the_uuid_and_reservations(conn: Any) -> None:
    network.define_network(conn, spec())
    uuid = conn.networkLookupByName("charlie.lan").UUIDString()
    network.set_dhcp_host(conn, "charlie.lan", MAC1, "10.128.0.10", "vm1")
    network.define_network(conn, spec())  # a re-run after a crash
    assert conn.networkLookupByName("charlie.lan").UUIDString() == uuid
    assert observed(conn).dhcp_hosts == ((MAC1, "10.128.0.10"),)


def test_start_network(conn: Any) -> None:
    network.define_network(conn, spec())
    conn.networkLookupByName("charlie.lan").destroy()
    assert not observed(conn).active
    network.start_network(conn, "charlie.lan")
    assert observed(conn).active
    network.start_network(conn, "charlie.lan")  # already running
    with pytest.raises(HostError, match=r"charlie\.nothing"):
        network.start_network(conn, "charlie.nothing")


def test_unmanaged_networks_are_observed_but_never_touched(conn: Any) -> None:
    default = observed(conn, "default")  # the test driver's own network
    assert default is not None
    assert default.ownership is None
    assert (default.mode, default.cidr) == (NetworkMode.NAT, "192.168.122.0/24")
    conn.networkDefineXML("<network><name>charlie.lan</name><bridge name='virbr77'/></network>")
    with pytest.raises(HostError, match="not managed by epfiot"):
        network.define_network(conn, spec())
    with pytest.raises(HostError, match="not managed by epfiot"):
        network.remove_network(conn, "charlie.lan")
    assert conn.networkLookupByName("charlie.lan").name() == "charlie.lan"


def test_every_address_range_of_an_unmanaged_network_is_observed(conn: Any) -> None:
    """The host-wide overlap check needs what every network occupies, not only the first IPv4 range epfiot
    manages: an unmanaged network with a netmask, a second IPv4 range and an IPv6 one."""
    conn.networkDefineXML(
        "<network><name>charlie.other</name><bridge name='virbr78'/>"
        "<ip address='172.20.1.1' netmask='255.255.255.0'/>"
        "<ip address='172.20.8.1' prefix='22'/>"
        "<ip family='ipv6' address='fd00:20::1' prefix='64'/></network>"
    )
    other = observed(conn, "charlie.other")
    assert other.ownership is None and other.cidr == "172.20.1.0/24"
    assert other.subnets == ("172.20.1.0/24", "172.20.8.0/22", "fd00:20::/64")
    assert observed(conn, "default").address_ranges == ("192.168.122.0/24",)
    network.define_network(conn, spec())
    assert observed(conn).subnets == ("10.128.0.0/24",)


def test_libvirt_errors_become_host_errors_with_libvirts_message(conn: Any) -> None:
    network.define_network(conn, spec())
    with pytest.raises(
        HostError, match=r"reserve not-an-ip for .* on network charlie.lan: .*Invalid IP address"
    ):
        network.set_dhcp_host(conn, "charlie.lan", MAC1, "not-an-ip", "vm1")


# --- DHCP host reservations ------------------------------------------------------------------------------


def test_reservation_add_keep_modify_remove(conn: Any) -> None:
    network.define_network(conn, spec())
    network.set_dhcp_host(conn, "charlie.lan", MAC1.upper(), "10.128.0.10", "vm1")
    assert observed(conn).dhcp_hosts == ((MAC1, "10.128.0.10"),)
    network.set_dhcp_host(conn, "charlie.lan", MAC1, "10.128.0.10", "vm1")  # identical: kept
    network.set_dhcp_host(conn, "charlie.lan", MAC1, "10.128.0.11", "vm1")  # same mac: modified
    assert observed(conn).dhcp_hosts == ((MAC1, "10.128.0.11"),)
    network.set_dhcp_host(conn, "charlie.lan", MAC2, "10.128.0.12", "vm2")
    assert observed(conn).dhcp_hosts == ((MAC1, "10.128.0.11"), (MAC2, "10.128.0.12"))
    network.remove_dhcp_host(conn, "charlie.lan", MAC1, "10.128.0.11")
    assert observed(conn).dhcp_hosts == ((MAC2, "10.128.0.12"),)
    network.remove_dhcp_host(conn, "charlie.lan", MAC1, "10.128.0.11")  # absent: nothing to do
    network.remove_dhcp_host(conn, "charlie.gone", MAC1, "10.128.0.11")  # no network: nothing to do


def test_reservation_replaces_another_macs_entry_for_the_same_address(conn: Any) -> None:
    network.define_network(conn, spec())
    network.set_dhcp_host(conn, "charlie.lan", MAC1, "10.128.0.10", "vm1")
    network.set_dhcp_host(conn, "charlie.lan", MAC2, "10.128.0.10", "vm2")
    assert observed(conn).dhcp_hosts == ((MAC2, "10.128.0.10"),)


def test_reservation_replaces_entries_clashing_on_mac_and_address(conn: Any) -> None:
    network.define_network(conn, spec())
    network.set_dhcp_host(conn, "charlie.lan", MAC1, "10.128.0.10", "vm1")
    network.set_dhcp_host(conn, "charlie.lan", MAC2, "10.128.0.11", "vm2")
    network.set_dhcp_host(conn, "charlie.lan", MAC1, "10.128.0.11", "vm1")  # mac of one, address of the other
    assert observed(conn).dhcp_hosts == ((MAC1, "10.128.0.11"),)
    xml = conn.networkLookupByName("charlie.lan").XMLDesc(0)
    assert "name='vm1'" in xml and "vm2" not in xml


def test_reservation_on_a_stopped_network_is_persistent(conn: Any) -> None:
    network.define_network(conn, spec())
    conn.networkLookupByName("charlie.lan").destroy()
    network.set_dhcp_host(conn, "charlie.lan", MAC1, "10.128.0.10", "vm1")
    network.start_network(conn, "charlie.lan")
    assert observed(conn).dhcp_hosts == ((MAC1, "10.128.0.10"),)


def test_reservation_on_a_missing_network_is_an_error(conn: Any) -> None:
    with pytest.raises(HostError, match=r"charlie\.gone"):
        network.set_dhcp_host(conn, "charlie.gone", MAC1, "10.128.0.10", "vm1")


def test_leases_on_the_test_driver_are_empty(conn: Any) -> None:
    network.define_network(conn, spec())
    assert network.lease_addresses(conn, "charlie.lan", MAC1) == ()  # no DHCPLeases in the test driver
    assert network.lease_addresses(conn, "charlie.gone", MAC1) == ()
