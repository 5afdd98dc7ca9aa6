"""What the real-guest tests share: the network namespace they must run in, polling, the host-wide lock
that makes them take turns, SSH keys and SSH into a guest (marked `guest`; see tests/test_real_guest.py).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

IMAGE = "debian-12.qcow2"
POOL = "epfiot-images"
BOOT_DEADLINE = 420.0  # seconds from apply to SSH: about 60 here, far more on a loaded CI machine
LOCK = Path("/run/lock/epfiot-real-guest.lock")
SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "ConnectTimeout=5")
T = TypeVar("T")


def in_own_network_namespace() -> bool:
    """True inside a network namespace made with `ip netns add` (scripts/libvirtd.sh makes one)."""
    ours = os.stat("/proc/self/ns/net")
    named = Path("/run/netns")
    return named.is_dir() and any(
        (s := p.stat()).st_ino == ours.st_ino and s.st_dev == ours.st_dev for p in named.iterdir()
    )


def require_own_network_namespace() -> None:
    if not in_own_network_namespace():
        pytest.fail(
            "the real-guest tests talk to the guest's private address: run them inside the libvirt daemon's "
            "network namespace (make test does: scripts/in-netns.sh .venv/bin/pytest)",
            pytrace=False,
        )


def require_guest_host(uri: str) -> None:
    """Fails the test (not skips: a green run must have booted guests) unless it runs in a namespace of its
    own and the daemon at `uri` has the base image in its pool."""
    import libvirt

    require_own_network_namespace()
    conn = libvirt.open(uri)
    try:
        conn.storagePoolLookupByName(POOL).storageVolLookupByName(IMAGE)
    except libvirt.libvirtError:
        pytest.fail(f"no {IMAGE} in the image pool {POOL}: run `make image`", pytrace=False)
    finally:
        conn.close()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 2.0) -> T:
    """The first truthy result of `probe()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s", pytrace=False)
        time.sleep(every)


@contextmanager
def guest_lock() -> Iterator[None]:
    """Held by each real-guest module for all its tests: their scenarios use fixed networks and addresses,
    and the machine has room for few guests at once."""
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def keypair(directory: Path) -> Path:
    """A new SSH key without a passphrase; the public key is the same path with `.pub`."""
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def ssh_with_key(key: Path, login: str, command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `command` as `login` (user@address) with `key`."""
    done = subprocess.run(
        ["ssh", *SSH_OPTIONS, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(key), login, command],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
    )
    if check and done.returncode != 0:
        pytest.fail(f"ssh {login} {command!r}: exit {done.returncode}\n{done.stdout}\n{done.stderr}", pytrace=False)
    return done
