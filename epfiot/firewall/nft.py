"""Running nft: reading and writing the table `inet epfiot` in this process's network namespace.

nft acts on the network namespace of the process that runs it, and so does this module: epfiot must run in
the namespace where the libvirt daemon's bridges are (its own, on an edge host; the `epfiot` namespace here,
where scripts/in-netns.sh runs commands). `absent_bridges` tells when it does not.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from epfiot.errors import HostError
from epfiot.firewall.ruleset import ABSENT, FAMILY, TABLE, Installed, parse_listing

LOCK = Path("/run/lock/epfiot-firewall.lock")
TIMEOUT = 30.0  # seconds for one nft call; it takes milliseconds


def available() -> bool:
    """True when the nft command is on the PATH (what shutil.which does, without importing shutil and its
    compression modules into every plan)."""
    path = os.environ.get("PATH", os.defpath)
    return any(os.access(os.path.join(d, "nft"), os.X_OK) for d in path.split(os.pathsep) if d)


def read() -> Installed:
    """The table as it is now. HostError when nft cannot list the ruleset at all (not root, no nf_tables)."""
    done = _nft("-j", "list", "table", FAMILY, TABLE)
    if done.returncode != 0:
        if "No such file or directory" in done.stderr:
            return ABSENT
        raise HostError(f"read nftables table {FAMILY} {TABLE}: {_first_line(done.stderr)}")
    return parse_listing(done.stdout)


def write(script: str) -> None:
    """Run an `nft -f` script: nft applies it in one transaction, all or nothing."""
    done = _nft("-f", "-", stdin=script)
    if done.returncode != 0:
        raise HostError(f"write nftables table {FAMILY} {TABLE}: {_first_line(done.stderr)}")


def absent_bridges(bridges: Iterable[str]) -> list[str]:
    """The bridges that are not interfaces of this process's network namespace (the lookup is an ioctl on a
    socket of this namespace, unlike /sys/class/net, which shows the namespace sysfs was mounted in)."""
    import socket  # only when there are bridges to look for

    missing = []
    for bridge in bridges:
        try:
            socket.if_nametoindex(bridge)
        except OSError:
            missing.append(bridge)
    return sorted(missing)


@contextmanager
def writer_lock() -> Iterator[None]:
    """Held while the networks are read and the table written, so that two epfiot runs (two state
    directories, one daemon) never write a table from a reading the other one has made stale."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _nft(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["nft", *argv], input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except FileNotFoundError as e:
        raise HostError("nft is not installed (Debian: apt-get install nftables)", permanent=True) from e
    except subprocess.TimeoutExpired as e:
        raise HostError(f"nft {' '.join(argv)}: no answer within {TIMEOUT:g}s", temporary=True) from e


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "nft failed")
