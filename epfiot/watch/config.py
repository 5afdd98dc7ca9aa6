"""What watch is told to do (WatchConfig, from the command line) and which files under its paths it reads."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from epfiot.errors import UsageError
from epfiot.eventlog import Retention, retention_from_options
from epfiot.logs import Format
from epfiot.watch.scopes import is_under

MANIFEST_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class WatchConfig:
    paths: tuple[Path, ...]
    uri: str
    state_dir: Path
    image_pool: str
    image_dir: str
    virt_type: str | None
    policy: Path | None
    resync: float
    debounce: float
    prune_after: float
    parallel: int
    serve: bool
    bind: str
    port: int | None  # None: no plain CoAP (--no-coap), only CoAP over DTLS
    log_format: Format
    verbose: bool
    dtls_port: int | None = None  # no CoAP over DTLS
    dtls_bind: str | None = None
    dtls_note: str = "CoAP over DTLS off"
    api_socket: Path | None = None  # the API on a Unix socket (epfiot.api); None: not served
    http: tuple[str, int] | None = None  # the API over HTTP, with bearer tokens; None: not served
    http_rate: float = 20.0  # HTTP requests a second per client address (bursts of twice that); 0: no limit
    host_config: Path | None = None  # None: $EPFIOT_HOST_CONFIG, else /etc/epfiot/host.yaml if present
    secrets_dirs: tuple[Path, ...] = ()  # where {file: PATH} secrets may also be
    event_retention: Retention | None = None  # the bound the event log was last given

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WatchConfig:
        from epfiot.state import default_state_dir

        files = args.files or []
        if "-" in files:
            raise UsageError("watch needs files or directories to watch; standard input (-) cannot be watched")
        paths = []
        for name in files:
            path = Path(name).resolve()
            if not path.exists():
                raise UsageError(f"{name}: no such file or directory (watch needs it to exist)")
            paths.append(path)
        for option in ("resync", "debounce", "prune_after"):
            if getattr(args, option) < 0:
                raise UsageError(f"--{option.replace('_', '-')} must not be negative")
        if args.resync == 0:
            raise UsageError("--resync must be positive")
        from epfiot.psk import coap_listener, dtls_listener
        from epfiot.secrets import secrets_dirs

        dtls_port, dtls_bind, dtls_note = dtls_listener(args.bind, args.dtls_bind, args.dtls_port, args.dtls, args.port)
        state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
        port = coap_listener(getattr(args, "coap", True), args.port, dtls_port) if args.serve else args.port
        retention = retention_from_options(
            getattr(args, "event_log_max_bytes", None), getattr(args, "event_log_max_age", None)
        )
        return cls(
            paths=tuple(paths),
            uri=str(args.connect or os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system"),
            state_dir=state_dir,
            image_pool=args.image_pool,
            image_dir=args.image_dir,
            virt_type=args.virt_type,
            policy=args.policy,
            resync=args.resync,
            debounce=args.debounce,
            prune_after=args.prune_after,
            parallel=max(1, args.parallel),
            serve=args.serve,
            bind=args.bind,
            port=port,
            dtls_port=dtls_port,
            dtls_bind=dtls_bind,
            dtls_note=dtls_note,
            event_retention=retention,
            log_format=args.log_format,
            verbose=bool(getattr(args, "verbose", False)),
            api_socket=api_socket(args, state_dir),
            http=http_listener(args),
            http_rate=max(0.0, getattr(args, "http_rate", 20.0)),
            host_config=getattr(args, "host_config", None),
            secrets_dirs=secrets_dirs(getattr(args, "secrets_dir", None)),
        )

    @property
    def watch_roots(self) -> tuple[Path, ...]:
        """Directories to watch: the given directories, and the parent of each given file (an editor's
        atomic save replaces the file: only its directory sees that)."""
        roots: list[Path] = []
        for path in self.paths:
            root = path if path.is_dir() else path.parent
            if not any(is_under(root, r) for r in roots):
                roots = [r for r in roots if not is_under(r, root)] + [root]
        return tuple(roots)


def api_socket(args: argparse.Namespace, state_dir: Path) -> Path | None:
    """--api-socket PATH; by default /run/epfiot/api.sock for the host's own state directory (a watch with
    a state directory of its own is another instance: it serves the API only where it is told to)."""
    from epfiot.api.client import DEFAULT_SOCKET
    from epfiot.state import HOST_STATE_DIR

    if not getattr(args, "api", True):
        return None
    if getattr(args, "api_socket", None):
        return Path(args.api_socket)
    return DEFAULT_SOCKET if state_dir == HOST_STATE_DIR else None


def http_listener(args: argparse.Namespace) -> tuple[str, int] | None:
    from epfiot.api.app import is_loopback, parse_address

    text = getattr(args, "http", None)
    if not text:
        return None
    try:
        host, port = parse_address(text)
    except ValueError as e:
        raise UsageError(f"--http: {e}") from None
    if not is_loopback(host) and not getattr(args, "http_remote", False):
        raise UsageError(
            f"--http {text}: not a loopback address; the API would be reachable from other machines, with bearer"
            " tokens over plain HTTP. Put a TLS proxy in front of it and pass --http-allow-remote to mean it"
        )
    return host, port


def manifest_files(root: Path) -> Iterable[Path]:
    """The files the loader reads under a directory (hidden files and directories are skipped)."""
    if root.is_file():
        return [root]
    return (p for p in root.rglob("*") if is_manifest_path(p, root) and p.is_file())


def is_manifest_path(path: Path, root: Path) -> bool:
    if path.suffix not in MANIFEST_SUFFIXES:
        return False
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return False
    return not any(part.startswith(".") for part in parts)
