"""CoAP over DTLS with pre-shared keys, with real DTLS clients on loopback (aiocoap's tinydtls client
transport against the bootstrap server's tinydtls_server): the handshake's identity decides which thing
a client is, a thing with credentials is refused on plain CoAP, and a client bootstrapped with a
coaps:// server registers there with the identity and key it was written."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from lwm2m_client import Lwm2mTestClient
from lwm2m_support import Events, record, run, seed, status_becomes, thing

from epfiot.lwm2m import aiocoap_dtls as dtls
from epfiot.lwm2m.server import BootstrapServer
from epfiot.psk import PskCredential, ThingKeys, key_file_path, write_key_file
from epfiot.registry import STATUS_BOOTSTRAPPED

HOST = "127.0.0.1"
KEY_A = bytes(range(16))
KEY_B = bytes(range(16, 32))
SERVER_KEY = bytes(range(100, 116))  # the test's LwM2M server is tinydtls too


class Lwm2mServerSite:
    """A small LwM2M server over DTLS: records each registration with the identity it was made under."""

    def __init__(self) -> None:
        self.registrations: list[tuple[str, str | None]] = []

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        ep = next((q[3:] for q in request.opt.uri_query if q.startswith("ep=")), "?")
        if tuple(request.opt.uri_path) == ("rd",) and request.code == Code.POST:
            self.registrations.append((ep, dtls.authenticated_endpoint(request.remote)))
            pipe.add_response(aiocoap.Message(code=Code.CREATED, location_path=("rd", "1")), is_last=True)
        else:
            pipe.add_response(aiocoap.Message(code=Code.NOT_FOUND), is_last=True)


async def _lwm2m_server(site: Lwm2mServerSite) -> Any:
    return await aiocoap.Context.create_server_context(
        site,
        bind=dtls.dtls_bind(HOST, 0),
        transports=["tinydtls_server"],
        server_credentials=dtls.dtls_credentials(
            lambda identity: (SERVER_KEY, "server-account") if identity == b"sensor-a@server" else None
        ),
    )


def _setup(tmp_path: Path, server_port: int) -> Path:
    db = tmp_path / "things.db"
    seed(
        db,
        thing("sensor-a", server_uri=f"coaps://{HOST}:{server_port}"),
        thing("sensor-b"),
        thing("sensor-plain"),
    )
    write_key_file(
        key_file_path(db),
        {
            "sensor-a": ThingKeys(
                bootstrap=PskCredential("sensor-a", KEY_A),
                server=PskCredential("sensor-a@server", SERVER_KEY),
            ),
            "sensor-b": ThingKeys(bootstrap=PskCredential("sensor-b", KEY_B)),
        },
    )
    return db


def test_a_thing_bootstraps_over_dtls_and_registers_at_its_dtls_server(tmp_path: Path) -> None:
    async def main() -> None:
        site = Lwm2mServerSite()
        lwm2m = await _lwm2m_server(site)
        try:
            server_port = dtls.dtls_udp_address(lwm2m)[1]  # type: ignore[index]
            db = _setup(tmp_path, server_port)
            events = Events()
            async with BootstrapServer(db, HOST, 0, on_event=events, dtls_port=0) as bs:
                for version in ("1.0", "1.1"):
                    async with Lwm2mTestClient(
                        "sensor-a", HOST, bs.dtls_port, version=version, psk=("sensor-a", KEY_A)
                    ) as client:
                        await client.bootstrap()
                        assert client.violations == []
                        security = client.objects[0][1]
                        assert security[2] in (0, b"\x00")  # security mode PSK
                        assert await client.register() == Code.CREATED
                    rec = await status_becomes(db, "sensor-a", STATUS_BOOTSTRAPPED)
                    assert rec.written_server_uri == f"coaps://{HOST}:{server_port}"
            assert site.registrations == [("sensor-a", "server-account")] * 2
            logged = repr(events.items) + repr(record(db, "sensor-a"))
            for key in (KEY_A, SERVER_KEY):
                assert key.hex() not in logged and repr(key) not in logged
        finally:
            await lwm2m.shutdown()

    run(main())


@pytest.mark.parametrize(
    ("endpoint", "psk", "expected"),
    [
        ("sensor-b", ("sensor-a", KEY_A), Code.FORBIDDEN),  # authenticated as A, asks to be B
        ("sensor-plain", ("sensor-a", KEY_A), Code.FORBIDDEN),  # a NoSec thing, with A's key
        ("sensor-a", None, Code.FORBIDDEN),  # a thing with credentials, over plain CoAP
        ("sensor-plain", None, Code.CHANGED),  # NoSec things still bootstrap over plain CoAP
    ],
)
def test_the_identity_decides_which_thing_a_client_is(
    tmp_path: Path, endpoint: str, psk: tuple[str, bytes] | None, expected: Code
) -> None:
    async def main() -> None:
        db = _setup(tmp_path, 5684)
        events = Events()
        async with BootstrapServer(db, HOST, 0, on_event=events, dtls_port=0) as bs:
            port = bs.dtls_port if psk is not None else bs.port
            async with Lwm2mTestClient(endpoint, HOST, port, version="1.0", psk=psk) as client:
                assert await client.request_bootstrap() == expected
                if expected == Code.CHANGED:
                    await client.wait_finished()
                else:
                    assert client.received == []
                    assert "bootstrap.refused" in events.kinds(endpoint)

    run(main())


@pytest.mark.parametrize(
    "psk", [("sensor-a", KEY_B), ("nobody", KEY_A)], ids=["wrong key", "unknown identity"]
)
def test_a_failed_handshake_reveals_nothing(tmp_path: Path, psk: tuple[str, bytes]) -> None:
    async def main() -> None:
        db = _setup(tmp_path, 5684)
        events = Events()
        async with (
            BootstrapServer(db, HOST, 0, on_event=events, dtls_port=0) as bs,
            Lwm2mTestClient("sensor-a", HOST, bs.dtls_port, version="1.0", psk=psk) as client,
        ):
            with pytest.raises((aiocoap.error.Error, TimeoutError)):
                # no CoAP answer at all: the handshake fails, nothing past it is reached
                await asyncio.wait_for(client.request_bootstrap(), 5)
            assert client.received == []
        assert record(db, "sensor-a").status == "pending"
        assert events.kinds() == []

    run(main())


def test_keys_written_while_the_server_runs_are_used_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        db = _setup(tmp_path, 5684)
        async with BootstrapServer(db, HOST, 0, dtls_port=0) as bs:
            new_key = bytes(range(50, 66))
            write_key_file(key_file_path(db), {"sensor-plain": ThingKeys(bootstrap=PskCredential("plain", new_key))})
            async with Lwm2mTestClient("sensor-plain", HOST, bs.dtls_port, version="1.0", psk=("plain", new_key)) as c:
                await c.bootstrap()
            async with Lwm2mTestClient("sensor-plain", HOST, bs.port, version="1.0") as plain:
                assert await plain.request_bootstrap() == Code.FORBIDDEN  # secured now: DTLS only

    run(main())


def test_a_bootstrap_identity_two_things_declare_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        db = _setup(tmp_path, 5684)
        shared = PskCredential("shared", KEY_A)
        write_key_file(key_file_path(db), {"sensor-a": ThingKeys(shared), "sensor-b": ThingKeys(shared)})
        async with (
            BootstrapServer(db, HOST, 0, dtls_port=0) as bs,
            Lwm2mTestClient("sensor-a", HOST, bs.dtls_port, version="1.0", psk=("shared", KEY_A)) as client,
        ):
            with pytest.raises((aiocoap.error.Error, TimeoutError)):
                await asyncio.wait_for(client.request_bootstrap(), 5)

    run(main())


def test_dtls_needs_one_address() -> None:
    with pytest.raises(ValueError, match="one address"):
        dtls.dtls_bind("::", 5684)


def test_the_claim_is_that_of_the_latest_handshake() -> None:
    # aiocoap keeps one key store per client address and port; a later client from the same address and
    # port with another identity must be that identity (not an error, and never the earlier one)
    from aiocoap.transports import tinydtls_server

    dtls.claims_follow_the_latest_handshake()
    keys = {b"id-a": (KEY_A, "sensor-a"), b"id-b": (KEY_B, "sensor-b")}
    store = tinydtls_server.SecurityStore(dtls.dtls_credentials(keys.get))
    assert store[b"id-a"] == KEY_A and store._claims == "sensor-a"
    assert store[b"id-b"] == KEY_B and store._claims == "sensor-b"
    with pytest.raises(KeyError):
        store[b"nobody"]


class _Relay(asyncio.DatagramProtocol):
    """A loopback UDP relay between one client and the server that records what the server sends."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.from_server: list[bytes] = []
        self.transport: Any = None
        self.upstream: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client = addr
        self.upstream.sendto(data)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.from_server.append(data)
        self.relay.transport.sendto(data, self.relay.client)


def _server_hello_suite(datagrams: list[bytes]) -> int | None:
    """The cipher suite of the first ServerHello (DTLS 1.2 record header 13 bytes, handshake header 12)."""
    for data in datagrams:
        if len(data) > 13 + 12 + 35 and data[0] == 22 and data[13] == 2:
            body = data[13 + 12 :]
            session_id_len = body[34]
            return int.from_bytes(body[35 + session_id_len : 37 + session_id_len], "big")
    return None


def test_the_handshake_uses_tls_psk_with_aes_128_ccm_8(tmp_path: Path) -> None:
    async def main() -> None:
        db = _setup(tmp_path, 5684)
        loop = asyncio.get_running_loop()
        async with BootstrapServer(db, HOST, 0, dtls_port=0) as bs:
            relay = _Relay((HOST, bs.dtls_port))
            listening, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=(HOST, 0))
            upstream, _ = await loop.create_datagram_endpoint(
                lambda: _Upstream(relay), remote_addr=(HOST, bs.dtls_port)
            )
            relay.upstream = upstream
            try:
                port = listening.get_extra_info("sockname")[1]
                async with Lwm2mTestClient("sensor-b", HOST, port, version="1.0", psk=("sensor-b", KEY_B)) as c:
                    await c.bootstrap()
            finally:
                listening.close()
                upstream.close()
        assert _server_hello_suite(relay.from_server) == 0xC0A8  # TLS_PSK_WITH_AES_128_CCM_8 (RFC 6655)

    run(main())
