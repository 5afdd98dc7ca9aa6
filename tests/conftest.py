"""Fixtures shared by the whole suite.

- `system_uri`: "qemu:///system", the real libvirt daemon with the QEMU driver (scripts/libvirtd.sh start).
  A test that needs it fails, not skips, when it is missing: a green run must have exercised the real
  thing. Mark such tests `@pytest.mark.daemon`.
- `tenant`: a unique owner name for one test ("t" + 8 hex digits). epfiot names libvirt objects
  "<owner>.<name>"; after a test that used `system_uri`, every domain, network and storage volume named
  "<tenant>.*" (or "<tenant>b.*", for a test's second tenant) on the real daemon is removed, whatever the
  test left behind.

- `host` and `run`: a connection to libvirt's test driver (test:///default, one host per process, so a
  test's VMs must be named by its `tenant` or its own stack), and `run(*argv) -> (code, out, err)`: the CLI
  in this process against that host, with a state directory of the test's own. A module that needs
  another host or other options defines fixtures of these names.

Test-driver hosts with USB node devices (and the sysfs files real hosts have) come from tests/hosts/usbhost.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from tests.leftovers import remove_tenant

SYSTEM_URI = "qemu:///system"


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; tests read errors from the exceptions."""


libvirt.registerErrorHandler(_silence, None)


@pytest.fixture(scope="session")
def system_uri() -> str:
    try:
        conn = libvirt.open(SYSTEM_URI)
    except libvirt.libvirtError as error:
        pytest.fail(
            f"no libvirt daemon at {SYSTEM_URI}: run scripts/libvirtd.sh start ({error.get_error_message()})",
            pytrace=False,
        )
    conn.close()
    return SYSTEM_URI


@pytest.fixture
def tenant(request: pytest.FixtureRequest) -> Iterator[str]:
    name = "t" + secrets.token_hex(4)
    yield name
    if "system_uri" in request.fixturenames:  # the test (or one of its fixtures) used the real daemon
        remove_tenant(SYSTEM_URI, name)


# --- test-driver host files --------------------------------------------------------------------------------


TEST_DRIVER_URI = "test:///default"


@pytest.fixture
def host() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(TEST_DRIVER_URI)
    yield conn
    conn.close()


@pytest.fixture
def run(tmp_path: Path, host: libvirt.virConnect, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    from epfiot.cli import main

    state = tmp_path / "state"

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--connect", TEST_DRIVER_URI, "--state-dir", str(state), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
