"""The state directory (bootstrap registry, event log, locks) and the host lock that serialises applies."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

HOST_STATE_DIR = Path("/var/lib/epfiot")


def default_state_dir() -> Path:
    """--state-dir, else $EPFIOT_STATE_DIR, else /var/lib/epfiot for root, else the XDG state directory."""
    if env := os.environ.get("EPFIOT_STATE_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return HOST_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "epfiot"


def ensure_state_dir(path: Path) -> Path:
    """`path`, made when missing; an EpfiotError of one line when it cannot be (a tenant's user, say, when
    the host's state directory has not been made for it)."""
    from epfiot.errors import EpfiotError

    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise EpfiotError(f"cannot create the state directory {path}: {error.strerror or error}") from None
    return path


@contextlib.contextmanager
def host_lock(state_dir: Path, uri: str, *, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock for one libvirt URI: two applies (or an apply and watch) never interleave their actions.

    The lock is an flock: the kernel releases it when its holder dies, even by kill -9, so a crashed apply
    never leaves a stale lock behind.
    """
    locks = ensure_state_dir(state_dir) / "locks"
    locks.mkdir(exist_ok=True)
    path = locks / (hashlib.sha256(uri.encode()).hexdigest()[:16] + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            on_wait(f"waiting for another epfiot (pid {holder}) working on {uri} to finish...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
