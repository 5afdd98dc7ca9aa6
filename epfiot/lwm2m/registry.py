"""The things registry: desired LwM2M bootstrap configuration per endpoint, plus the bootstrap
status the server records.

SQLite in WAL mode at ``<state_dir>/registry.db``. Reconcile writes configurations
(:meth:`Registry.upsert` / :meth:`Registry.delete` / :meth:`Registry.prune`); the bootstrap
server reads them per request and records status with :meth:`Registry.apply_status`.

Every configuration change bumps a per-thing ``revision``; status updates carry the revision
they were computed for and are dropped when the configuration changed in the meantime, so a
bootstrap that ran with an old configuration never marks the new one as bootstrapped.

A :class:`Registry` holds one sqlite connection and must be used from one thread; open one per
thread/process (the server opens its own). This module does not import aiocoap.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from epfiot.errors import EpfiotError
from epfiot.lwm2m.codec import CodecError, parse_path

_T = TypeVar("_T")

SCHEMA_VERSION: Final = 1

STATUS_WAITING: Final = "waiting"
STATUS_PENDING: Final = "pending"
STATUS_BOOTSTRAPPING: Final = "bootstrapping"
STATUS_BOOTSTRAPPED: Final = "bootstrapped"
STATUS_FAILED: Final = "failed"
STATUSES: Final = (STATUS_WAITING, STATUS_PENDING, STATUS_BOOTSTRAPPING, STATUS_BOOTSTRAPPED, STATUS_FAILED)

SECURITY_INSTANCE: Final = 1
"""Instance of the Security (0) and Server (1) objects the bootstrap server writes. Instance
/0/0 usually holds the client's own bootstrap-server account and is never written."""

SECURITY_MANAGED_RESOURCES: Final = frozenset({0, 1, 2, 10})
SERVER_MANAGED_RESOURCES: Final = frozenset({0, 1, 6, 7})

_BINDING_RE = re.compile(r"^[UQSTN]{1,8}$")
_MAX_EP_BYTES = 252  # Uri-Query options are at most 255 bytes, "ep=" included


class RegistryError(EpfiotError):
    """The registry cannot be used as asked (database errors, schema, conflicting ownership)."""


class ThingConflictError(RegistryError):
    """An endpoint name is already registered by another owner (names are unique per host)."""


class InvalidThingConfig(RegistryError, ValueError):
    """A thing configuration that cannot be bootstrapped as given."""


@dataclass(frozen=True)
class ResourceWrite:
    """An extra bootstrap write of one resource (``/3/0/14``) or resource instance
    (``/3/0/14/1``) value."""

    path: str
    value: str | int | float | bool

    def __post_init__(self) -> None:
        try:
            ids = parse_path(self.path, min_depth=3, max_depth=4)
        except CodecError as exc:
            raise InvalidThingConfig(f"write path {self.path!r}: {exc}") from None
        if ids[:2] == (0, 0):
            raise InvalidThingConfig(
                f"write path {self.path!r}: instance /0/0 (the bootstrap account) is never written"
            )
        if not isinstance(self.value, str | int | float | bool):
            raise InvalidThingConfig(f"write {self.path}: value must be a string, number or boolean")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise InvalidThingConfig(f"write {self.path}: value must be a finite number")
        if (
            isinstance(self.value, int)
            and not isinstance(self.value, bool)
            and not -(2**63) <= self.value < 2**63
        ):
            raise InvalidThingConfig(f"write {self.path}: integer does not fit in 64 bits")

    @property
    def ids(self) -> tuple[int, ...]:
        return parse_path(self.path, min_depth=3, max_depth=4)


@dataclass(frozen=True)
class ThingConfig:
    """Desired bootstrap configuration of one thing (what reconcile writes, resolved)."""

    name: str
    owner: str
    stack: str
    vm: str | None
    server_uri: str | None
    lifetime: int = 300
    binding: str = "U"
    short_server_id: int = 1
    deletes: tuple[str, ...] = ("/0", "/1")
    writes: tuple[ResourceWrite, ...] = ()

    def __post_init__(self) -> None:
        # tolerate lists from callers; store tuples so configs compare and hash by value
        object.__setattr__(self, "deletes", tuple(self.deletes))
        object.__setattr__(self, "writes", tuple(self.writes))
        _validate_config(self)


def _validate_config(cfg: ThingConfig) -> None:
    if not isinstance(cfg.name, str) or not cfg.name:
        raise InvalidThingConfig("thing name (LwM2M endpoint name) must be a non-empty string")
    if len(cfg.name.encode("utf-8")) > _MAX_EP_BYTES:
        raise InvalidThingConfig(f"endpoint name {cfg.name[:40]!r}...: at most {_MAX_EP_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in cfg.name) or "&" in cfg.name:
        raise InvalidThingConfig(f"endpoint name {cfg.name!r} contains control characters or '&'")
    if not isinstance(cfg.owner, str) or not cfg.owner:
        raise InvalidThingConfig(f"thing {cfg.name}: owner must be a non-empty string")
    if not isinstance(cfg.stack, str):
        raise InvalidThingConfig(f"thing {cfg.name}: stack must be a string")
    if cfg.server_uri is not None:
        _validate_server_uri(cfg.name, cfg.server_uri)
    if isinstance(cfg.lifetime, bool) or not isinstance(cfg.lifetime, int) or not 1 <= cfg.lifetime < 2**31:
        raise InvalidThingConfig(f"thing {cfg.name}: lifetime must be a positive integer (seconds)")
    if not isinstance(cfg.binding, str) or not _BINDING_RE.match(cfg.binding):
        raise InvalidThingConfig(
            f"thing {cfg.name}: binding {cfg.binding!r} is not a LwM2M binding (e.g. 'U', 'UQ')"
        )
    ssid = cfg.short_server_id
    if isinstance(ssid, bool) or not isinstance(ssid, int) or not 1 <= ssid <= 65534:
        raise InvalidThingConfig(f"thing {cfg.name}: short_server_id must be 1..65534")
    for path in cfg.deletes:
        try:
            ids = parse_path(path, min_depth=0, max_depth=2)
        except CodecError as exc:
            raise InvalidThingConfig(f"thing {cfg.name}: delete {path!r}: {exc}") from None
        if ids == (0, 0):
            raise InvalidThingConfig(f"thing {cfg.name}: /0/0 (the bootstrap account) is never deleted")
    seen: set[tuple[int, ...]] = set()
    for write in cfg.writes:
        if not isinstance(write, ResourceWrite):
            raise InvalidThingConfig(f"thing {cfg.name}: writes must be ResourceWrite values")
        ids = write.ids
        if ids in seen or ids[:3] in seen or any(s[:3] == ids for s in seen):
            raise InvalidThingConfig(f"thing {cfg.name}: {write.path} written twice")
        seen.add(ids)
        if ids[:2] == (0, SECURITY_INSTANCE) and ids[2] in SECURITY_MANAGED_RESOURCES:
            raise InvalidThingConfig(
                f"thing {cfg.name}: {write.path} is set from the thing's server settings"
            )
        if ids[:2] == (1, SECURITY_INSTANCE) and ids[2] in SERVER_MANAGED_RESOURCES:
            raise InvalidThingConfig(
                f"thing {cfg.name}: {write.path} is set from the thing's server settings"
            )


def _validate_server_uri(name: str, uri: str) -> None:
    if not isinstance(uri, str):
        raise InvalidThingConfig(f"thing {name}: server_uri must be a string or None")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidThingConfig(f"thing {name}: server_uri {uri!r}: {exc}") from None
    if parts.scheme != "coap" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise InvalidThingConfig(f"thing {name}: server_uri {uri!r} must look like coap://host:port (NoSec)")
    if port == 0:
        raise InvalidThingConfig(f"thing {name}: server_uri {uri!r} has port 0")


def server_uri_for(address: str | None, port: int = 5683) -> str | None:
    """The LwM2M server URI of a VM address (``coap://<address>:<port>``, IPv6 in brackets);
    None while the VM has no address yet (the thing is then waiting for its server)."""
    if not address:
        return None
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"coap://{host}:{port}"


@dataclass(frozen=True)
class ThingRecord:
    """A thing's configuration plus its bootstrap status."""

    config: ThingConfig
    status: str
    updated_at: float | None
    bootstrapped_at: float | None
    client_address: str | None
    written_server_uri: str | None
    error: str | None


@dataclass(frozen=True)
class BootstrapTarget:
    """What the bootstrap server needs for one request: the record and its revision."""

    record: ThingRecord
    revision: int


@dataclass(frozen=True)
class StatusUpdate:
    """A status change computed by the bootstrap server for ``revision`` of a thing's config.
    ``None`` fields other than ``error`` keep their stored value."""

    name: str
    revision: int
    status: str
    at: float = field(default_factory=time.time)
    client_address: str | None = None
    written_server_uri: str | None = None
    bootstrapped_at: float | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in (STATUS_BOOTSTRAPPING, STATUS_BOOTSTRAPPED, STATUS_FAILED):
            raise ValueError(f"the bootstrap server cannot set status {self.status!r}")


_SCHEMA_V1 = """
CREATE TABLE things (
    name               TEXT PRIMARY KEY,
    owner              TEXT NOT NULL,
    stack              TEXT NOT NULL,
    vm                 TEXT,
    server_uri         TEXT,
    lifetime           INTEGER NOT NULL,
    binding            TEXT NOT NULL,
    short_server_id    INTEGER NOT NULL,
    deletes            TEXT NOT NULL,
    writes             TEXT NOT NULL,
    revision           INTEGER NOT NULL DEFAULT 1,
    status             TEXT NOT NULL,
    updated_at         REAL,
    bootstrapped_at    REAL,
    client_address     TEXT,
    written_server_uri TEXT,
    error              TEXT
) WITHOUT ROWID;
CREATE INDEX things_owner ON things(owner, name);
"""

_MIGRATIONS: Final[dict[int, str]] = {1: _SCHEMA_V1}

_COLUMNS = (
    "name, owner, stack, vm, server_uri, lifetime, binding, short_server_id, deletes, writes, "
    "revision, status, updated_at, bootstrapped_at, client_address, written_server_uri, error"
)

_UPDATE_STATUS_SQL = (
    "UPDATE things SET status = ?, updated_at = ?, "
    "client_address = COALESCE(?, client_address), "
    "written_server_uri = COALESCE(?, written_server_uri), "
    "bootstrapped_at = COALESCE(?, bootstrapped_at), "
    "error = ? "
    "WHERE name = ? AND revision = ? AND server_uri IS NOT NULL"
)


def _encode_writes(writes: Sequence[ResourceWrite]) -> str:
    return json.dumps([[w.path, w.value] for w in writes], separators=(",", ":"), allow_nan=False)


def _stored(cls: type[_T], **fields: Any) -> _T:
    """Rebuild a frozen config read back from the registry without validating it again: every
    row was validated when it was written (the bootstrap server reads one per request)."""
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


def _decode_writes(text: str) -> tuple[ResourceWrite, ...]:
    return tuple(_stored(ResourceWrite, path=str(path), value=value) for path, value in json.loads(text))


def _row_to_record(row: tuple[Any, ...]) -> tuple[ThingRecord, int]:
    (
        name,
        owner,
        stack,
        vm,
        server_uri,
        lifetime,
        binding,
        ssid,
        deletes,
        writes,
        revision,
        status,
        updated_at,
        bootstrapped_at,
        client_address,
        written_server_uri,
        error,
    ) = row
    config = _stored(
        ThingConfig,
        name=name,
        owner=owner,
        stack=stack,
        vm=vm,
        server_uri=server_uri,
        lifetime=lifetime,
        binding=binding,
        short_server_id=ssid,
        deletes=tuple(json.loads(deletes)),
        writes=_decode_writes(writes),
    )
    if server_uri is None:
        status = STATUS_WAITING
    record = ThingRecord(
        config=config,
        status=status,
        updated_at=updated_at,
        bootstrapped_at=bootstrapped_at,
        client_address=client_address,
        written_server_uri=written_server_uri,
        error=error,
    )
    return record, int(revision)


class Registry:
    """The things registry (one sqlite connection; use from one thread)."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        with self._guard():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so writers never
            # deadlock on a read-to-write lock upgrade
            self._db = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None)
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
            except BaseException:
                self._db.close()
                raise

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """sqlite and file errors become RegistryError (one clear line for the CLI)."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise RegistryError(f"registry {self.path}: {exc}") from exc

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _migrate(self) -> None:
        with self._transaction():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise RegistryError(
                    f"{self.path}: registry schema version {version} is newer than this epfiot ({SCHEMA_VERSION})"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")

    # -- reading -----------------------------------------------------------------------------

    def things(self, owner: str | None = None) -> list[ThingRecord]:
        """All things (or those of one owner), sorted by name."""
        with self._guard():
            return self._things(owner)

    def _things(self, owner: str | None) -> list[ThingRecord]:
        if owner is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM things ORDER BY name").fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM things WHERE owner = ? ORDER BY name", (owner,)
            ).fetchall()
        return [_row_to_record(row)[0] for row in rows]

    def get(self, name: str) -> ThingRecord | None:
        target = self.bootstrap_target(name)
        return None if target is None else target.record

    def bootstrap_target(self, name: str) -> BootstrapTarget | None:
        """The record and config revision of an endpoint (one indexed read)."""
        with self._guard():
            row = self._db.execute(f"SELECT {_COLUMNS} FROM things WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        record, revision = _row_to_record(row)
        return BootstrapTarget(record, revision)

    def data_version(self) -> int:
        """Changes whenever another connection committed to the database (SQLite
        ``PRAGMA data_version``); lets a reader cache what it read in between."""
        with self._guard():
            (version,) = self._db.execute("PRAGMA data_version").fetchone()
        return int(version)

    # -- configuration (reconcile) -----------------------------------------------------------

    def upsert(self, config: ThingConfig) -> None:
        """Insert or replace a thing's config. A changed config bumps its revision and resets
        its status to pending (waiting when it has no server URI); an unchanged one is left
        alone. Raises ThingConflictError when the name belongs to another owner."""
        self.upsert_many([config])

    def upsert_many(self, configs: Iterable[ThingConfig]) -> None:
        """:meth:`upsert` several configs in one transaction (all or nothing)."""
        configs = list(configs)
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate thing names in one upsert")
        now = time.time()
        with self._transaction():
            for config in configs:
                self._upsert_one(config, now)

    def _upsert_one(self, config: ThingConfig, now: float) -> None:
        if not isinstance(config, ThingConfig):
            raise TypeError("upsert expects a ThingConfig")
        row = self._db.execute(f"SELECT {_COLUMNS} FROM things WHERE name = ?", (config.name,)).fetchone()
        status = STATUS_PENDING if config.server_uri is not None else STATUS_WAITING
        values = (
            config.owner,
            config.stack,
            config.vm,
            config.server_uri,
            config.lifetime,
            config.binding,
            config.short_server_id,
            json.dumps(list(config.deletes)),
            _encode_writes(config.writes),
        )
        if row is None:
            self._db.execute(
                "INSERT INTO things (owner, stack, vm, server_uri, lifetime, binding, short_server_id, "
                "deletes, writes, name, revision, status, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                (*values, config.name, status, now),
            )
            return
        existing, _revision = _row_to_record(row)
        if existing.config.owner != config.owner:
            raise ThingConflictError(
                f"thing {config.name!r} is already defined by {existing.config.owner!r}; "
                "endpoint names are unique per host"
            )
        if existing.config == config:
            return
        self._db.execute(
            "UPDATE things SET owner = ?, stack = ?, vm = ?, server_uri = ?, lifetime = ?, binding = ?, "
            "short_server_id = ?, deletes = ?, writes = ?, revision = revision + 1, status = ?, "
            "updated_at = ?, error = NULL WHERE name = ?",
            (*values, status, now, config.name),
        )

    def delete(self, name: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM things WHERE name = ?", (name,))

    def prune(self, owner: str, keep: Iterable[str]) -> list[str]:
        """Delete the things of ``owner`` whose names are not in ``keep``; returns the deleted
        names (sorted)."""
        keep_set = set(keep)
        with self._transaction():
            names = [
                name
                for (name,) in self._db.execute(
                    "SELECT name FROM things WHERE owner = ? ORDER BY name", (owner,)
                )
                if name not in keep_set
            ]
            self._db.executemany("DELETE FROM things WHERE name = ?", [(n,) for n in names])
        return names

    # -- status (bootstrap server) -----------------------------------------------------------

    def apply_status(self, updates: Sequence[StatusUpdate]) -> int:
        """Apply status updates in one transaction. Updates for a revision that is no longer
        current (config changed), for deleted things, or for things waiting for their server
        are dropped. Returns how many rows changed."""
        if not updates:
            return 0
        with self._transaction():
            before = self._db.total_changes
            self._db.executemany(
                _UPDATE_STATUS_SQL,
                [
                    (
                        u.status,
                        u.at,
                        u.client_address,
                        u.written_server_uri,
                        u.bootstrapped_at,
                        u.error,
                        u.name,
                        u.revision,
                    )
                    for u in updates
                ],
            )
            return self._db.total_changes - before

    def mark_bootstrapping(self, name: str, revision: int, client_address: str) -> bool:
        return (
            self.apply_status(
                [StatusUpdate(name, revision, STATUS_BOOTSTRAPPING, client_address=client_address)]
            )
            > 0
        )

    def mark_bootstrapped(self, name: str, revision: int, client_address: str, server_uri: str) -> bool:
        now = time.time()
        update = StatusUpdate(
            name,
            revision,
            STATUS_BOOTSTRAPPED,
            at=now,
            client_address=client_address,
            written_server_uri=server_uri,
            bootstrapped_at=now,
        )
        return self.apply_status([update]) > 0

    def mark_failed(self, name: str, revision: int, error: str, client_address: str | None = None) -> bool:
        update = StatusUpdate(name, revision, STATUS_FAILED, client_address=client_address, error=error)
        return self.apply_status([update]) > 0

    # -- helpers -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error)."""
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
