"""Secured things from manifest to device: a manifest declares a thing's keys ({env:} and {file:}), apply
keeps them in the registry's key file (0600) and nowhere else, and a DTLS client bootstraps with them and
is sent its coaps:// server with the server credentials. Also the manifest's problems with keys."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from epfiot.cli import main
from epfiot.desired import load_manifest_text
from epfiot.errors import ManifestError
from epfiot.lwm2m.server import BootstrapServer
from epfiot.psk import key_file_path, read_key_file
from tests.lwm2m_client import Lwm2mTestClient
from tests.stacks import vm, write_stack

URI = "test:///default"
BOOTSTRAP_KEY = "00112233445566778899aabbccddeeff"
SERVER_KEY = bytes(range(200, 232))


@pytest.fixture
def host() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(URI)
    yield conn
    conn.close()


def cli(state: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["--connect", URI, "--state-dir", str(state), *argv])
    out, err = capsys.readouterr()
    return code, out + err


def test_a_secured_thing_from_manifest_to_dtls_bootstrap(
    host: libvirt.virConnect, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPFIOT_TEST_THING_KEY", BOOTSTRAP_KEY)
    (tmp_path / "server.key").write_text(SERVER_KEY.hex() + "\n")
    thing = {
        "name": "secure-1",
        "vm": "example2",
        "security": {"mode": "psk", "identity": "secure-1", "key": {"env": "EPFIOT_TEST_THING_KEY"}},
        "server_security": {"mode": "psk", "identity": "secure-1@lwm2m", "key": {"file": "server.key"}},
    }
    path = write_stack(
        tmp_path,
        "charlie",
        networks=[{"name": "iot", "mode": "route", "cidr": "10.141.0.0/24"}],
        vms=[vm("example2", network="iot")],
        things=[thing],
    )
    state = tmp_path / "state"
    code, out = cli(state, capsys, "plan", "-f", str(path))
    assert code in (0, 2), out
    assert "credentials" in out and "sha256:" in out
    code, applied = cli(state, capsys, "apply", "-f", str(path))
    assert code == 0, applied
    code, replanned = cli(state, capsys, "plan", "-f", str(path), "--detailed-exitcode")
    assert code == 0, replanned  # the keys stored are the keys declared: nothing to change

    keys = key_file_path(state / "registry.db")
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    stored = read_key_file(keys)["secure-1"]
    assert stored.bootstrap is not None and stored.bootstrap.key == bytes.fromhex(BOOTSTRAP_KEY)
    assert stored.server is not None and stored.server.key == SERVER_KEY

    code, got = cli(state, capsys, "get", "things", "-o", "json")
    [record] = json.loads(got)
    assert record["server_uri"].startswith("coaps://") and record["server_uri"].endswith(":5684")
    code, events = cli(state, capsys, "events", "-o", "json")
    database = (state / "registry.db").read_bytes()
    for text in (out, applied, replanned, got, events):
        assert BOOTSTRAP_KEY not in text and SERVER_KEY.hex() not in text
    assert bytes.fromhex(BOOTSTRAP_KEY) not in database and SERVER_KEY not in database

    async def bootstrap() -> Lwm2mTestClient:
        key = bytes.fromhex(BOOTSTRAP_KEY)
        async with (
            BootstrapServer(state / "registry.db", "127.0.0.1", 0, dtls_port=0) as server,
            Lwm2mTestClient("secure-1", "127.0.0.1", server.dtls_port, version="1.0", psk=("secure-1", key)) as client,
        ):
            await client.bootstrap()
            return client

    client = asyncio.run(bootstrap())
    security = client.objects[0][1]
    assert security[0] == record["server_uri"].encode()
    assert (security[2], security[3], security[5]) == (b"\x00", b"secure-1@lwm2m", SERVER_KEY)

    # no longer declared: the thing and its keys go
    write_stack(tmp_path, "charlie", networks=[{"name": "iot", "mode": "route", "cidr": "10.141.0.0/24"}],
                vms=[vm("example2", network="iot")], things=[])  # fmt: skip
    assert cli(state, capsys, "apply", "-f", str(path), "-y")[0] == 0
    assert read_key_file(keys) == {}


THING = """version: 1
stack: s
owner: alice
things:
  - name: t1
    server: {server}
{extra}"""


@pytest.mark.parametrize(
    ("server", "extra", "message"),
    [
        ("coap://192.0.2.1:5683", "    security: {mode: psk, identity: t1, key: 00112233445566778899aabbccddeeff}",
         "never in the manifest"),
        ("coap://192.0.2.1:5683", "    security: {mode: psk, identity: t1, key: {env: NOT_SET_HERE}}",
         "environment variable NOT_SET_HERE is not set"),
        ("coap://192.0.2.1:5683", "    security: {mode: psk, identity: t1, key: {env: SHORT}}", "16 to 64 bytes"),
        ("coap://192.0.2.1:5683", "    security: {mode: psk, identity: t1, key: {env: LONG}}", "has 16 bytes"),
        ("coap://192.0.2.1:5683", "    server_security: same", '"same" needs the bootstrap credentials'),
        ("coaps://192.0.2.1:5684", "", "a coaps:// server goes with server_security:"),
        ("coap://192.0.2.1:5683", "    server_security: {mode: psk, identity: t1, key: {env: LONG}}",
         "a coaps:// server goes with server_security:"),
    ],
)  # fmt: skip
def test_key_problems_name_the_field_never_the_key(server: str, extra: str, message: str) -> None:
    env = {"SHORT": "00" * 8, "LONG": "ab" * 32}
    with pytest.raises(ManifestError) as caught:
        load_manifest_text(THING.format(server=server, extra=extra), "t.yaml", env=env)
    text = str(caught.value)
    assert message in text, text
    assert "t.yaml:" in text and "ab" * 32 not in text and "00" * 8 not in text


def test_epfiot_serve_listens_on_dtls_beside_plain_coap(tmp_path: Path) -> None:
    import re
    import signal

    from epfiot.psk import PskCredential, ThingKeys, write_key_file
    from epfiot.registry import Registry, ThingConfig
    from tests.lwm2m_support import epfiot_serve

    state = tmp_path / "state"
    state.mkdir()
    with Registry(state / "registry.db") as reg:
        reg.upsert(ThingConfig("s1", "o", "s", None, "coap://192.0.2.1:5683"))
    key = bytes(range(16))
    write_key_file(key_file_path(state / "registry.db"), {"s1": ThingKeys(PskCredential("s1", key))})
    with epfiot_serve(state, "--dtls-port", "0") as child:
        line = child.wait_for_line(lambda line: "CoAP over DTLS" in line)
        match = re.search(r"\]:(\d+)$", line.strip())
        assert match, line

        async def bootstrap() -> None:
            async with Lwm2mTestClient("s1", "127.0.0.1", int(match.group(1)), version="1.0", psk=("s1", key)) as c:
                await c.bootstrap()

        asyncio.run(bootstrap())
        child.proc.send_signal(signal.SIGTERM)
        assert child.finish()[0] == 0

    with epfiot_serve(state, "--bind", "::") as child:  # DTLS binds one address: off, and it says why
        assert "--dtls-bind ADDRESS" in child.wait_for_line(lambda line: "CoAP over DTLS" in line)
