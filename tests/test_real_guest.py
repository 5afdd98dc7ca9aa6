"""The original's use cases on a real Linux guest: specs/lwm2m-guest.yaml on debian-12.qcow2 (`make image`).

One guest is booted for the whole module (under TCG here: about a minute to SSH) and every test looks at
it from the inside: the login and its password hash, the hostname, the LwM2M server in the VM that a thing
bootstrapped by epfiot registers at, a live memory and vCPU change seen by the guest's kernel, a graceful
ACPI shutdown completed by the guest's own init, and the pruning of its disks. The tests run in order and
build on each other (the guest is too slow to boot once per test).

Every packet goes to loopback or to the guest's network, which lives in the network namespace of the libvirt
daemon that scripts/libvirtd.sh started (`make test` runs the tests there too); outside such a namespace
these tests refuse to run, so that nothing is ever sent to a private address of the machine's own network.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pycdlib
import pytest
import yaml

from tests.guests import (
    BOOT_DEADLINE,
    IMAGE,
    POOL,
    SSH_OPTIONS,
    guest_lock,
    keypair,
    require_guest_host,
    ssh_with_key,
    wait_for,
)
from tests.leftovers import remove_tenant
from tests.lwm2m_client import Lwm2mTestClient

pytestmark = [pytest.mark.daemon, pytest.mark.guest]

SPEC = Path(__file__).resolve().parent.parent / "specs" / "lwm2m-guest.yaml"
SECURED = "prueba-segura"  # a second thing: bootstrapped over DTLS, sent the guest's server as coaps://


@dataclass
class Guest:
    owner: str
    directory: Path
    state: Path
    key: Path
    password: str
    uri: str
    # the secured thing's keys: its bootstrap key (epfiot serve), and the key of the guest's LwM2M server,
    # which the VM's user-data writes into the guest's PSK file
    bootstrap_key: str = field(default_factory=lambda: secrets.token_hex(16))
    server_key: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def conn(self) -> Any:
        """A connection of its own for each look (the tests outlast a daemon restart by other tests)."""
        if self._conn is None or not self._conn.isAlive():
            self._conn = libvirt.open(self.uri)
        return self._conn

    _conn: Any = None

    @property
    def document(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(SPEC.read_text())
        data["owner"] = self.owner
        credentials = data["vms"][0]["credentials"]
        credentials["ssh_authorized_keys"] = [Path(f"{self.key}.pub").read_text().strip()]
        user_data = yaml.safe_load(credentials["user_data"])
        user_data["write_files"] = [{
            "path": "/etc/lwm2m-server/psk", "permissions": "0600",
            "content": json.dumps({"identity": f"{SECURED}@lwm2m", "key": self.server_key}),
        }]  # fmt: skip
        credentials["user_data"] = "#cloud-config\n" + yaml.safe_dump(user_data, sort_keys=False)
        data["things"].append({
            "name": SECURED, "vm": data["vms"][0]["name"],
            "security": {"mode": "psk", "identity": SECURED, "key": {"env": "GUEST_BOOTSTRAP_KEY"}},
            "server_security": {"mode": "psk", "identity": f"{SECURED}@lwm2m", "key": {"env": "GUEST_SERVER_KEY"}},
        })  # fmt: skip
        return data

    @property
    def vm(self) -> dict[str, Any]:
        return self.document["vms"][0]  # type: ignore[no-any-return]

    @property
    def user(self) -> str:
        return str(self.vm["credentials"]["user"])

    @property
    def address(self) -> str:
        return str(self.vm["address"])

    @property
    def domain(self) -> Any:
        return self.conn.lookupByName(f"{self.owner}.{self.vm['name']}")

    def write(self, **vm_changes: Any) -> Path:
        data = self.document
        data["vms"][0].update(vm_changes)
        path = self.directory / "stack.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def epfiot(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ALICE_PASSWORD": self.password, "GUEST_BOOTSTRAP_KEY": self.bootstrap_key,
               "GUEST_SERVER_KEY": self.server_key}  # fmt: skip
        env.pop("EPFIOT_VIRT_TYPE", None)  # as users run it: detected (TCG where KVM cannot boot a kernel)
        done = subprocess.run(
            [sys.executable, "-m", "epfiot", "--state-dir", str(self.state), *argv],
            capture_output=True, text=True, env=env, timeout=600,
        )
        if check and done.returncode != 0:
            pytest.fail(f"epfiot {' '.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}", pytrace=False)
        return done

    def ssh(self, command: str, *, check: bool = True, password: bool = False) -> subprocess.CompletedProcess[str]:
        if not password:
            return ssh_with_key(self.key, f"{self.user}@{self.address}", command, check=check)
        # the password from the manifest, typed in by an askpass program as a user would
        askpass = self.directory / "askpass"
        askpass.write_text(f"#!/bin/sh\necho {shlex.quote(self.password)}\n")
        askpass.chmod(0o700)
        env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": "none"}
        options = [*SSH_OPTIONS, "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
                   "-o", "NumberOfPasswordPrompts=1"]
        done = subprocess.run(
            ["ssh", *options, f"{self.user}@{self.address}", command],
            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120,
        )
        if check and done.returncode != 0:
            pytest.fail(f"ssh {command!r}: exit {done.returncode}\n{done.stdout}\n{done.stderr}", pytrace=False)
        return done

    def get(self, kind: str) -> list[dict[str, Any]]:
        """`epfiot get KIND -o json`, this guest's owner's part (the host may hold other tenants')."""
        items = json.loads(self.epfiot("get", kind, "-o", "json").stdout)
        return [item for item in items if item["owner"] == self.owner]

    def answers_ssh(self) -> bool:
        return self.ssh("true", check=False).returncode == 0

    def volumes(self) -> set[str]:
        pool = self.conn.storagePoolLookupByName(POOL)
        pool.refresh()
        return {v.name() for v in pool.listAllVolumes()}


@pytest.fixture(scope="module")
def guest(system_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    require_guest_host(system_uri)
    # The scenario's network and address are fixed (10.128.0.0/24, .141): runs against one daemon take turns.
    with guest_lock():
        directory = tmp_path_factory.mktemp("guest")
        key = keypair(directory)
        owner = "g" + secrets.token_hex(4)
        g = Guest(owner, directory, directory / "state", key, "pw-" + secrets.token_urlsafe(12), system_uri)
        try:
            yield g
        finally:
            remove_tenant(system_uri, owner)
            if g._conn is not None:
                g._conn.close()


def test_the_scenario_applies_and_a_second_apply_changes_nothing(guest: Guest) -> None:
    stack = guest.write()
    assert guest.epfiot("plan", "-f", str(stack), "--detailed-exitcode", check=False).returncode == 2
    guest.epfiot("apply", "-f", str(stack))
    assert guest.epfiot("plan", "-f", str(stack), "--detailed-exitcode", check=False).returncode == 0


def test_the_thing_is_sent_the_fixed_address_at_once(guest: Guest) -> None:
    # Before the guest has booted (no DHCP lease yet): the declared address is enough.
    things = {thing["name"]: thing["server_uri"] for thing in guest.get("things")}
    assert things == {"prueba": f"coap://{guest.address}:5683", SECURED: f"coaps://{guest.address}:5684"}


def test_get_vms_shows_the_fixed_address(guest: Guest) -> None:
    def address() -> str | None:
        [vm] = guest.get("vms")
        return vm["address"]  # type: ignore[no-any-return]

    assert wait_for("an address in get vms", address, BOOT_DEADLINE) == guest.address


def test_the_guest_agent_answers_with_the_address(guest: Guest) -> None:
    # The second source of `get vms` addresses (after DHCP leases): the agent channel of the domain template.
    def agent_addresses() -> set[str] | None:
        try:
            found = guest.domain.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
        except libvirt.libvirtError:
            return None  # the agent is not up yet
        return {a["addr"] for i in found.values() for a in (i.get("addrs") or ())} or None

    assert guest.address in wait_for("the guest agent", agent_addresses, BOOT_DEADLINE)


def test_ssh_with_the_key_and_the_password_from_the_manifest(guest: Guest) -> None:
    wait_for("SSH on the guest", guest.answers_ssh, BOOT_DEADLINE, every=3)
    # sshd answers before cloud-init is done (it restarts sshd for password logins): wait for the end, which
    # must come without errors (exit 0; 1 or 2 when a module failed).
    wait_for("cloud-init's end", lambda: guest.ssh("cloud-init status --wait", check=False).returncode != 255, 300)
    assert guest.ssh("cloud-init status --long", check=False).returncode == 0, guest.ssh("cloud-init status --long", check=False)
    assert guest.ssh("id -un").stdout.strip() == guest.user
    assert guest.ssh("hostname").stdout.strip() == guest.vm["credentials"]["hostname"]
    assert guest.ssh("echo logged-in", password=True).stdout.strip() == "logged-in"
    wrong = Guest(guest.owner, guest.directory, guest.state, guest.key, "not-the-password", guest.uri)
    assert wrong.ssh("true", password=True, check=False).returncode != 0


def test_shadow_holds_exactly_the_hash_in_the_seed(guest: Guest) -> None:
    seed = guest.conn.storagePoolLookupByName(POOL).storageVolLookupByName(f"{guest.owner}.lwm2m-server.epfiot-seed.iso")
    iso = pycdlib.PyCdlib()
    iso.open(seed.path())
    try:
        from io import BytesIO

        data = BytesIO()
        iso.get_file_from_iso_fp(data, joliet_path="/user-data")
    finally:
        iso.close()
    [user] = yaml.safe_load(data.getvalue().decode())["users"]
    assert user["passwd"].startswith("$6$") and guest.password not in data.getvalue().decode()
    shadow = guest.ssh(f"sudo getent shadow {guest.user}").stdout.strip().split(":")
    assert shadow[1] == user["passwd"]


def test_a_bootstrapped_thing_registers_at_the_server_in_the_vm(guest: Guest) -> None:
    # The guest's server starts in cloud-init's last stage; aiocoap takes seconds to import under TCG.
    wait_for("the LwM2M server in the guest", lambda: ":5683 " in guest.ssh("ss -Hlun", check=False).stdout, 180)
    serve = subprocess.Popen(
        [sys.executable, "-m", "epfiot", "--state-dir", str(guest.state), "serve", "--bind", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert serve.stdout is not None
        first = serve.stdout.readline()
        match = re.search(r"\]:(\d+) ", first)
        assert match, first
        asyncio.run(_bootstrap_then_register(int(match.group(1)), guest.address))
    finally:
        serve.terminate()
        serve.communicate(timeout=30)

    [thing] = [t for t in guest.get("things") if t["name"] == "prueba"]
    assert thing["status"] == "bootstrapped"
    lines = guest.ssh("sudo cat /var/lib/lwm2m-server/registrations.jsonl").stdout.splitlines()
    registered = [e for e in map(json.loads, lines) if e["event"] == "register"]
    assert [(e["ep"], e["lt"]) for e in registered] == [("prueba", 60)]


async def _bootstrap_then_register(bootstrap_port: int, vm_address: str) -> None:
    import aiocoap

    async with Lwm2mTestClient("prueba", "127.0.0.1", bootstrap_port, version="1.1") as client:
        await client.bootstrap()
        server_uri = client.value("/0/1/0", "str")
    assert server_uri == f"coap://{vm_address}:5683"
    # What the device does next (LwM2M Registration interface): register at the server it was given.
    context = await aiocoap.Context.create_client_context()
    try:
        request = aiocoap.Message(code=aiocoap.POST, uri=f"{server_uri}/rd", payload=b"</1/1>,</3/0>")
        request.opt.uri_query = ("ep=prueba", "lt=60", "lwm2m=1.1", "b=U")
        response = await asyncio.wait_for(context.request(request).response, 120)
    finally:
        await context.shutdown()
    assert response.code == aiocoap.CREATED, response
    assert response.opt.location_path[0] == "rd"


def test_a_secured_thing_bootstraps_over_dtls_and_registers_at_the_server_in_the_vm_over_dtls(guest: Guest) -> None:
    # tinydtls for the guest's Python, from the wheel the image was built with
    guest.ssh("PYTHONPATH=/opt/lwm2m-server python3 -c 'import DTLSSocket.dtls'")
    # The guest's server listens on coaps :5684 because its user-data wrote the PSK file.
    wait_for("the LwM2M server's DTLS port in the guest", lambda: ":5684 " in guest.ssh("ss -Hlun", check=False).stdout, 180)
    serve = subprocess.Popen(
        [sys.executable, "-m", "epfiot", "--state-dir", str(guest.state), "serve", "--bind", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert serve.stdout is not None
        lines = [serve.stdout.readline(), serve.stdout.readline()]
        match = re.search(r"CoAP over DTLS on \[127\.0\.0\.1\]:(\d+)", "".join(lines))
        assert match, lines
        asyncio.run(_bootstrap_then_register_over_dtls(int(match.group(1)), f"coaps://{guest.address}:5684", guest))
    finally:
        serve.terminate()
        serve.communicate(timeout=30)

    [thing] = [t for t in guest.get("things") if t["name"] == SECURED]
    assert thing["status"] == "bootstrapped"
    lines = guest.ssh("sudo cat /var/lib/lwm2m-server/registrations.jsonl").stdout.splitlines()
    registered = [e for e in map(json.loads, lines) if e["event"] == "register" and e["ep"] == SECURED]
    assert [(e["transport"], e["identity"]) for e in registered] == [("coaps", f"{SECURED}@lwm2m")]
    assert guest.server_key not in guest.ssh("sudo journalctl -u lwm2m-server --no-pager").stdout


async def _bootstrap_then_register_over_dtls(dtls_port: int, server_uri: str, guest: Guest) -> None:
    import aiocoap

    psk = (SECURED, bytes.fromhex(guest.bootstrap_key))
    # aiocoap's tinydtls client transport: the bootstrap over DTLS, then the registration over DTLS with
    # the identity and key the bootstrap server wrote into Security /0/1
    async with Lwm2mTestClient(SECURED, "127.0.0.1", dtls_port, version="1.0", psk=psk) as client:
        await client.bootstrap(timeout=30)
        security = client.objects[0][1]
        assert security[0] == server_uri.encode()
        assert (security[3], security[5]) == (f"{SECURED}@lwm2m".encode(), bytes.fromhex(guest.server_key))
        assert await client.register(timeout=120) == aiocoap.CREATED


def _mem_total_kib(guest: Guest) -> int:
    match = re.search(r"MemTotal:\s+(\d+) kB", guest.ssh("cat /proc/meminfo").stdout)
    assert match
    return int(match.group(1))


def test_live_memory_and_vcpu_changes_are_seen_by_the_guest(guest: Guest) -> None:
    before = _mem_total_kib(guest)
    assert guest.ssh("nproc").stdout.strip() == "1"
    stack = guest.write(memory="640MiB", vcpu=2)
    plan = guest.epfiot("plan", "-f", str(stack)).stdout
    assert "restart" not in plan.lower(), plan
    guest.epfiot("apply", "-f", str(stack))
    # The balloon gives the guest back 128 MiB: its kernel counts them in MemTotal again.
    grown = wait_for("the balloon's memory in the guest", lambda: (m := _mem_total_kib(guest)) - before > 100 * 1024 and m, 120)
    assert grown - before <= 130 * 1024
    wait_for("a second vCPU online in the guest", lambda: guest.ssh("nproc").stdout.strip() == "2", 120)
    assert guest.epfiot("plan", "-f", str(stack), "--detailed-exitcode", check=False).returncode == 0


def test_shutoff_is_a_graceful_shutdown_done_by_the_guest(guest: Guest) -> None:
    stack = guest.write(memory="640MiB", vcpu=2, state="shutoff")
    started = time.monotonic()
    out = guest.epfiot("apply", "-f", str(stack)).stdout
    took = time.monotonic() - started
    state, reason = guest.domain.state()
    assert state == libvirt.VIR_DOMAIN_SHUTOFF
    assert reason == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, out  # the guest powered itself off (not destroyed)
    assert took < int(guest.vm["shutdown_timeout"].rstrip("s")), out
    assert "forc" not in out.lower(), out
    assert guest.epfiot("plan", "-f", str(stack), "--detailed-exitcode", check=False).returncode == 0


def test_pruning_deletes_the_overlay_and_the_seed_but_not_the_base_image(guest: Guest) -> None:
    owned = {f"{guest.owner}.lwm2m-server.epfiot-disk.qcow2", f"{guest.owner}.lwm2m-server.epfiot-seed.iso"}
    assert owned <= guest.volumes()
    data = guest.document
    data.update(vms=[], things=[], networks=[])
    stack = guest.directory / "stack.yaml"
    stack.write_text(yaml.safe_dump(data, sort_keys=False))
    guest.epfiot("apply", "-f", str(stack), "--force", "-y")
    volumes = guest.volumes()
    assert not owned & volumes and IMAGE in volumes
    with pytest.raises(libvirt.libvirtError):
        guest.domain  # noqa: B018 (looking it up is the check)
