"""Things from manifest to device: apply registers a thing with its VM's address, and a LwM2M client that
bootstraps from epfiot's server is told exactly that address.

The host is the libvirt test driver (its interfaceAddresses gives running domains an address from their
network's range); the bootstrap server and the client are real aiocoap endpoints on loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from epfiot.cli import main
from epfiot.lwm2m.server import BootstrapServer
from tests.lwm2m_client import Lwm2mTestClient
from tests.stacks import vm, write_stack

URI = "test:///default"


@pytest.fixture
def host() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(URI)  # keeps test:///default alive across the commands of one test
    yield conn
    conn.close()


def cli(state: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["--connect", URI, "--state-dir", str(state), *argv])
    out, err = capsys.readouterr()
    return code, out + err


def stack(directory: Path, owner: str, *, things: list[dict[str, object]]) -> Path:
    return write_stack(
        directory,
        owner,
        networks=[{"name": "iot", "mode": "route", "cidr": "10.140.0.0/24"}],
        vms=[vm("example2", network="iot")],
        things=things,
    )


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_thing_bootstraps_to_its_vms_address(
    version: str, host: libvirt.virConnect, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    path = stack(tmp_path, "charlie", things=[{"name": "prueba", "vm": "example2", "lifetime": 120}])
    code, out = cli(state, capsys, "apply", "-f", str(path))
    assert code == 0, out
    code, out = cli(state, capsys, "plan", "-f", str(path), "--detailed-exitcode")
    assert code == 0, out

    code, out = cli(state, capsys, "get", "things", "-o", "json")
    [thing] = json.loads(out)
    assert (thing["name"], thing["owner"], thing["vm"], thing["status"]) == ("prueba", "charlie", "example2", "pending")
    uri = thing["server_uri"]
    code, out = cli(state, capsys, "get", "vms", "example2", "-o", "json", "--fields", "address")
    assert uri == f"coap://{json.loads(out)[0]['address']}:5683"

    async def bootstrap() -> Lwm2mTestClient:
        async with (
            BootstrapServer(state / "registry.db", bind="127.0.0.1", port=0) as server,
            Lwm2mTestClient("prueba", "127.0.0.1", server.port, version=version) as client,
        ):
            await client.bootstrap()
            return client

    client = asyncio.run(bootstrap())
    assert client.value("/0/1/0", "str") == uri  # the Security instance points at the VM
    assert client.value("/1/1/1", "int") == 120  # the Server instance has the thing's lifetime
    assert client.operations()[:2] == ["DELETE /0", "DELETE /1"]

    code, out = cli(state, capsys, "get", "things", "prueba", "-o", "json")
    assert json.loads(out)[0]["status"] == "bootstrapped"
    code, out = cli(state, capsys, "events", "-o", "json")
    assert any(e["subject"] == "thing/charlie/prueba" for e in json.loads(out))


def test_unknown_endpoints_and_other_tenants_things(
    host: libvirt.virConnect, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mine = stack(tmp_path / "a", "charlie", things=[{"name": "prueba", "vm": "example2"}])
    assert cli(state, capsys, "apply", "-f", str(mine))[0] == 0
    theirs = stack(tmp_path / "b", "mallory", things=[{"name": "prueba", "server": "coap://192.0.2.66:5683"}])
    code, out = cli(state, capsys, "apply", "-f", str(theirs))
    assert code == 1 and "registered by another owner" in out
    code, out = cli(state, capsys, "get", "things", "-o", "json")
    assert [t["owner"] for t in json.loads(out)] == ["charlie"]


def test_serve_runs_as_a_process_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys

    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "epfiot", "--state-dir", str(state), "serve", "--bind", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        match = re.search(r"\]:(\d+) ", first)
        assert match, first
        port = int(match.group(1))

        async def unknown() -> object:
            async with Lwm2mTestClient("nobody", "127.0.0.1", port) as client:
                return await client.request_bootstrap()

        code = asyncio.run(unknown())
        assert str(code).startswith("4.04"), code
        lines = iter(proc.stdout.readline, "")
        assert any("bootstrap.refused thing/nobody" in line for line in lines)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    events = subprocess.run(
        [sys.executable, "-m", "epfiot", "--state-dir", str(state), "events", "-o", "json"],
        capture_output=True, text=True, check=True,
    )
    assert [e["kind"] for e in json.loads(events.stdout)] == ["bootstrap.refused"]
