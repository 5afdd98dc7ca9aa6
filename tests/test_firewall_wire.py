"""The table on the wire, without libvirt: network namespaces of the test's own stand for the host (with
bridges named like two tenants' networks, and forwarding on) and for three VMs, joined by veth pairs.

Every packet stays inside those namespaces, which the test makes and removes.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from epfiot.firewall.ruleset import Isolation, parse_listing, render

# (VM, bridge, owner, subnet): two networks of alice, one of bob
VMS = [("a1", "epfwa1", "alice", "10.140.1"), ("a2", "epfwa2", "alice", "10.140.2"), ("b1", "epfwb1", "bob", "10.140.3")]

PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=2).close()
except ConnectionRefusedError:
    pass
except OSError:
    sys.exit(1)
"""


def sh(*argv: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}", pytrace=False)
    return done


@dataclass
class Wire:
    prefix: str

    @property
    def host(self) -> str:
        return f"{self.prefix}h"

    def vm(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def in_host(self, *argv: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.host, *argv, stdin=stdin, check=check)

    def reaches(self, source: str, address: str) -> bool:
        """True when a TCP connection from the VM (or "host") `source` to `address` is answered: accepted
        or refused (nothing listens there; the refusal is the VM's kernel answering). A drop goes unanswered."""
        ns = self.host if source == "host" else self.vm(source)
        return sh("ip", "netns", "exec", ns, sys.executable, "-c", PROBE, address, check=False).returncode == 0


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire("epfw" + secrets.token_hex(3))
    made = [w.host]
    try:
        sh("ip", "netns", "add", w.host)
        w.in_host("ip", "link", "set", "lo", "up")
        w.in_host("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for name, bridge, _owner, subnet in VMS:
            ns = w.vm(name)
            sh("ip", "netns", "add", ns)
            made.append(ns)
            w.in_host("ip", "link", "add", bridge, "type", "bridge")
            w.in_host("ip", "addr", "add", f"{subnet}.1/24", "dev", bridge)
            w.in_host("ip", "link", "set", bridge, "up")
            w.in_host("ip", "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            w.in_host("ip", "link", "set", f"v{name}", "master", bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{subnet}.2/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", f"{subnet}.1")
        yield w
    finally:
        for ns in made:
            sh("ip", "netns", "delete", ns, check=False)


def test_tenants_are_cut_apart_and_the_host_reaches_every_vm(wire: Wire) -> None:
    addresses = {name: f"{subnet}.2" for name, _bridge, _owner, subnet in VMS}
    # Without the table, the host routes between every network: bob's VM reaches alice's.
    assert wire.reaches("b1", addresses["a1"])
    isolation = Isolation.of({bridge: owner for _name, bridge, owner, _subnet in VMS})
    wire.in_host("nft", "-f", "-", stdin=render(isolation))
    assert parse_listing(wire.in_host("nft", "-j", "list", "table", "inet", "epfiot").stdout).isolation == isolation

    assert wire.reaches("a1", addresses["a2"]) and wire.reaches("a2", addresses["a1"])  # alice's own networks
    assert not wire.reaches("a1", addresses["b1"]) and not wire.reaches("b1", addresses["a1"])
    assert not wire.reaches("b1", addresses["a2"])
    for name in addresses:  # the host (and through it, things on the outside) reaches every VM
        assert wire.reaches("host", addresses[name])
    # What bob's VM sent towards alice's networks was counted by bob's rule.
    listing = wire.in_host("nft", "list", "chain", "inet", "epfiot", "forward").stdout
    [bob_rule] = [line for line in listing.splitlines() if 'comment "bob"' in line]
    assert "counter packets 0 " not in bob_rule, bob_rule
