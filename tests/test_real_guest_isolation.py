"""Two tenants' real guests (debian-12.qcow2, under TCG here), each on a routed network of its tenant's:
the host reaches both (SSH, and a thing's CoAP request to the LwM2M server in each VM), neither VM reaches
the other, and without epfiot's table libvirt alone would let them through.

Both guests boot at once, small (320 MiB), in one apply. Every packet goes to loopback or to the guests'
networks, inside the libvirt daemon's network namespace (run with scripts/in-netns.sh); the networks are
10.132.0.0/24 and 10.133.0.0/24, apart from the specs' (10.128 to 10.131).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.guests import (
    BOOT_DEADLINE,
    IMAGE,
    guest_lock,
    keypair,
    require_guest_host,
    ssh_with_key,
    wait_for,
)
from tests.leftovers import remove_tenant

pytestmark = [pytest.mark.daemon, pytest.mark.guest]

USER = "probe"
USER_DATA = """#cloud-config
runcmd:
  - [systemctl, enable, --now, lwm2m-server.service]
"""


@dataclass(frozen=True)
class Tenant:
    owner: str
    subnet: str  # "10.132.0"

    @property
    def address(self) -> str:
        return f"{self.subnet}.10"

    @property
    def gateway(self) -> str:
        """The host's address on the tenant's network."""
        return f"{self.subnet}.1"

    def stack(self, key: Path) -> dict[str, Any]:
        return {
            "version": 1,
            "stack": f"isolation-{self.owner}",
            "owner": self.owner,
            "networks": [{"name": "lan", "mode": "route", "cidr": f"{self.subnet}.0/24"}],
            "vms": [
                {
                    "name": "vm",
                    "image": IMAGE,
                    "memory": "320MiB",
                    "vcpu": 1,
                    "state": "running",
                    "shutdown_timeout": "5s",
                    "network": "lan",
                    "address": self.address,
                    "credentials": {
                        "user": USER,
                        "hostname": f"vm-{self.owner}",
                        "ssh_authorized_keys": [Path(f"{key}.pub").read_text().strip()],
                        "user_data": USER_DATA,
                    },
                }
            ],
        }


@dataclass
class Pair:
    alice: Tenant
    bob: Tenant
    directory: Path
    key: Path

    def epfiot(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "EPFIOT_VIRT_TYPE"}  # detected, as users run it
        done = subprocess.run(
            [sys.executable, "-m", "epfiot", "--state-dir", str(self.directory / "state"), *argv],
            capture_output=True, text=True, env=env, timeout=900,
        )
        if done.returncode != 0:
            pytest.fail(f"epfiot {' '.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}", pytrace=False)
        return done

    def apply(self) -> str:
        files = []
        for tenant in (self.alice, self.bob):
            path = self.directory / f"{tenant.owner}.yaml"
            path.write_text(yaml.safe_dump(tenant.stack(self.key), sort_keys=False))
            files += ["-f", str(path)]
        return self.epfiot("apply", *files).stdout

    def ssh(self, tenant: Tenant, command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`command` in the tenant's guest. Two guests under TCG on two cores answer slowly: SSH's own
        failures (exit 255, as a banner that came too late) are tried again a few times."""
        for _ in range(5):
            done = ssh_with_key(self.key, f"{USER}@{tenant.address}", command, check=False)
            if done.returncode != 255:
                break
            time.sleep(3)
        if check and done.returncode != 0:
            pytest.fail(f"ssh {tenant.address} {command!r}: exit {done.returncode}\n{done.stdout}\n{done.stderr}", pytrace=False)
        return done

    def connects(self, source: Tenant, address: str, port: int) -> bool:
        """True when a TCP connection from inside `source`'s VM to address:port is made within 6 s."""
        probe = f"timeout 6 bash -c 'exec 3<>/dev/tcp/{address}/{port}' && echo open || echo closed"
        return self.ssh(source, probe).stdout.strip() == "open"


@pytest.fixture(scope="module")
def pair(system_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    require_guest_host(system_uri)
    with guest_lock():
        owner = "g" + secrets.token_hex(4)  # the second tenant is owner + "b": cleaned up with it
        directory = tmp_path_factory.mktemp("isolation")
        p = Pair(Tenant(owner, "10.132.0"), Tenant(owner + "b", "10.133.0"), directory, keypair(directory))
        try:
            yield p
        finally:
            remove_tenant(system_uri, owner)


def test_both_guests_boot_and_the_host_reaches_each(pair: Pair) -> None:
    out = pair.apply()
    assert "firewall inet epfiot" in out, out
    for tenant in (pair.alice, pair.bob):
        login = f"{USER}@{tenant.address}"
        wait_for(f"SSH on {tenant.owner}'s guest", lambda at=login: ssh_with_key(pair.key, at, "true", check=False).returncode == 0,
                 BOOT_DEADLINE, every=3)
    for tenant in (pair.alice, pair.bob):  # the guests are slow until cloud-init is done: wait for its end
        wait_for("cloud-init's end", lambda t=tenant: pair.ssh(t, "cloud-init status --wait", check=False).returncode != 255, 300)
        assert pair.ssh(tenant, "hostname").stdout.strip() == f"vm-{tenant.owner}"


def test_neither_guest_reaches_the_other(pair: Pair) -> None:
    alice, bob = pair.alice, pair.bob
    # The probe itself works: each guest reaches the host's side of its own network (dnsmasq's TCP port).
    assert pair.connects(alice, alice.gateway, 53) and pair.connects(bob, bob.gateway, 53)
    assert not pair.connects(alice, bob.address, 22)
    assert not pair.connects(bob, alice.address, 22)
    ping = pair.ssh(alice, "command -v ping", check=False).returncode == 0
    if ping:
        assert pair.ssh(alice, f"ping -c 2 -W 2 {bob.address}", check=False).returncode != 0


def test_a_thing_reaches_the_lwm2m_server_in_each_guest(pair: Pair) -> None:
    for tenant in (pair.alice, pair.bob):
        wait_for(f"the LwM2M server in {tenant.owner}'s guest",
                 lambda t=tenant: ":5683 " in pair.ssh(t, "ss -Hlun", check=False).stdout, 300)
        asyncio.run(_register(tenant.address))


async def _register(address: str) -> None:
    """What a thing does once bootstrapped: register at the server it was given, coap://<VM>:5683."""
    import aiocoap

    context = await aiocoap.Context.create_client_context()
    try:
        request = aiocoap.Message(code=aiocoap.POST, uri=f"coap://{address}:5683/rd", payload=b"</3/0>")
        request.opt.uri_query = ("ep=isolation-probe", "lt=60", "lwm2m=1.1", "b=U")
        response = await asyncio.wait_for(context.request(request).response, 120)
    finally:
        await context.shutdown()
    assert response.code == aiocoap.CREATED, response


def test_without_the_table_libvirt_lets_them_through_and_apply_puts_it_back(pair: Pair) -> None:
    alice, bob = pair.alice, pair.bob
    subprocess.run(["nft", "delete", "table", "inet", "epfiot"], check=True)
    assert pair.connects(alice, bob.address, 22)  # routed networks, through the host: what epfiot closes
    out = pair.apply()
    assert "+ firewall inet epfiot: create" in out, out
    assert not pair.connects(alice, bob.address, 22)
    assert not pair.connects(bob, alice.address, 22)
