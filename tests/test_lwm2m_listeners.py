"""Where the bootstrap server listens: plain CoAP can be turned off (--no-coap), leaving CoAP over DTLS
alone; the DTLS listener binds the one address --dtls-bind names, and an address or port it cannot have
is a one-line error."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lwm2m_client import Lwm2mTestClient
from lwm2m_support import CON, POST, coap, opt_path_bs, opt_queries, run

from epfiot.cli.parser import build_parser
from epfiot.errors import UsageError
from epfiot.lwm2m.listeners import ListenError
from epfiot.lwm2m.server import BootstrapServer
from epfiot.psk import PskCredential, ThingKeys, key_file_path, write_key_file
from epfiot.registry import Registry, ThingConfig
from epfiot.watch.config import WatchConfig

HOST = "127.0.0.1"
KEY = bytes(range(16))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Nobody bound it: a socket without SO_REUSEPORT cannot bind a port an aiocoap server holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def seed_state(state: Path) -> None:
    state.mkdir(parents=True)
    with Registry(state / "registry.db") as reg:
        reg.upsert(ThingConfig("s1", "o", "s", None, "coap://192.0.2.1:5683"))
        reg.upsert(ThingConfig("plain", "o", "s", None, "coap://192.0.2.1:5683"))
    write_key_file(key_file_path(state / "registry.db"), {"s1": ThingKeys(PskCredential("s1", KEY))})


async def plain_answer(port: int) -> bytes | None:
    """What a plain CoAP Bootstrap-Request to ``port`` gets: an answer, or None (no answer, or the port
    is closed)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, port))
        await loop.sock_sendall(sock, coap(CON, POST, 7, b"nc", opt_path_bs() + opt_queries(b"ep=plain")))
        with contextlib.suppress(TimeoutError, ConnectionRefusedError):
            return await asyncio.wait_for(loop.sock_recv(sock, 2048), 2)
    return None


def test_epfiot_serve_with_no_coap_listens_on_dtls_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    seed_state(state)
    plain_port = free_udp_port()
    command = [sys.executable, "-m", "epfiot", "--state-dir", str(state), "serve", "--bind", HOST]
    command += ["--port", str(plain_port), "--dtls-port", "0", "--no-coap"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first, second = proc.stdout.readline(), proc.stdout.readline()
        assert "plain CoAP off (--no-coap)" in first, first + second + proc.stdout.read()
        match = re.search(r"CoAP over DTLS on \[127\.0\.0\.1\]:(\d+)$", second.strip())
        assert match, second

        async def check() -> bytes | None:
            async with Lwm2mTestClient("s1", HOST, int(match.group(1)), version="1.0", psk=("s1", KEY)) as c:
                await c.bootstrap()  # DTLS works
            return await plain_answer(plain_port)

        assert run(check()) is None  # plain CoAP gets no answer
        assert port_is_free(plain_port)  # nothing listens there
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_without_no_coap_the_same_request_is_answered(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    with Registry(db) as reg:
        reg.upsert(ThingConfig("plain", "o", "s", None, "coap://192.0.2.1:5683"))

    async def check() -> bytes | None:
        async with BootstrapServer(db, HOST, 0) as bs:
            return await plain_answer(bs.port)

    answer = run(check())
    assert answer is not None and answer[1] == 0x44  # 2.04 Changed


def test_a_server_with_no_coap_binds_no_plain_port(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    Registry(db).close()

    async def check() -> None:
        async with BootstrapServer(db, HOST, None, dtls_port=0) as bs:
            assert bs.dtls_port > 0
            with pytest.raises(RuntimeError, match="not listening on plain CoAP"):
                _ = bs.port

    run(check())
    with pytest.raises(ValueError, match="needs plain CoAP or CoAP over DTLS"):
        BootstrapServer(db, HOST, None)


def serve(state: Path, *argv: str) -> tuple[int, str]:
    command = [sys.executable, "-m", "epfiot", "--state-dir", str(state), "serve", "--bind", HOST, "--port", "0"]
    done = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (["--no-coap", "--no-dtls"], 2, "--no-coap leaves only CoAP over DTLS, and that is off"),
        (["--dtls-bind", "::"], 2, "--dtls-bind '::': CoAP over DTLS listens on one address of this host"),
        (["--dtls-bind", "192.0.2.1", "--dtls-port", "5684"], 1, "cannot listen for CoAP over DTLS on 192.0.2.1 port 5684: "),
        (["--dtls-bind", "no-such-host.invalid"], 1, "cannot listen for CoAP over DTLS on no-such-host.invalid"),
    ],
    ids=["nothing left", "any-address", "not this host's", "unresolvable"],
)
def test_listeners_that_cannot_be_are_a_one_line_error(
    tmp_path: Path, argv: list[str], code: int, expected: str
) -> None:
    state = tmp_path / "state"
    got, out = serve(state, *argv)
    assert got == code and expected in out, out
    assert "Traceback" not in out and out.strip().count("\n") == 0, out
    if code == 2:
        assert not state.exists()  # nothing changed


def test_a_dtls_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        port = taken.getsockname()[1]
        got, out = serve(tmp_path / "state", "--dtls-bind", HOST, "--dtls-port", str(port))
    assert got == 1 and f"cannot listen for CoAP over DTLS on {HOST} port {port}: Address already in use" in out, out
    assert "Traceback" not in out


def test_a_bad_dtls_bind_is_a_listen_error(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    Registry(db).close()

    async def start() -> None:
        await BootstrapServer(db, HOST, 0, dtls_port=0, dtls_bind="192.0.2.1").start()

    with pytest.raises(ListenError, match=r"192\.0\.2\.1 is not an address of this host") as caught:
        run(start())
    assert isinstance(caught.value, OSError)  # watch reports it as it reports a plain port in use


def test_watch_takes_no_coap_too(tmp_path: Path) -> None:
    def config(*argv: str) -> WatchConfig:
        args = build_parser().parse_args(["--state-dir", str(tmp_path), "watch", "-f", str(tmp_path), *argv])
        return WatchConfig.from_args(args)

    assert config("--bind", HOST).port == 5683
    assert config("--bind", HOST).dtls_port == 5684
    assert config("--bind", HOST, "--port", "0").dtls_port == 0  # any free port, as the plain one
    assert config("--bind", HOST, "--port", "0", "--dtls-port", "5690").dtls_port == 5690
    secured = config("--bind", HOST, "--no-coap")
    assert secured.port is None and secured.dtls_port == 5684 and secured.dtls_bind == HOST
    with pytest.raises(UsageError, match="--no-coap leaves only CoAP over DTLS"):
        config("--no-coap")  # bind :: and no --dtls-bind: DTLS is off
    with pytest.raises(UsageError, match="one address of this host"):
        config("--dtls-bind", "0.0.0.0")
