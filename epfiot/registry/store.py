"""The things registry: SQLite in WAL mode at ``<state_dir>/registry.db``.

Reconcile writes configurations (:meth:`Registry.upsert` / :meth:`Registry.delete` /
:meth:`Registry.prune`); the bootstrap server reads them per request and records status with
:meth:`Registry.apply_status`, and at start-up expires what a stopped server left in ``bootstrapping``
(:meth:`Registry.expire_bootstrapping`).

Every configuration change bumps a per-thing ``revision``; status updates carry the revision they were
computed for and are dropped when the configuration changed in the meantime, so a bootstrap that ran with
an old configuration never marks the new one as bootstrapped.

A :class:`Registry` holds one sqlite connection and must be used from one thread; open one per
thread/process (the server opens its own).

The table, its migrations and the row mapping are :mod:`epfiot.registry.schema`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

from epfiot.registry.schema import (
    COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    encode_writes,
    row_to_record,
)
from epfiot.registry.things import (
    STATUS_BOOTSTRAPPED,
    STATUS_BOOTSTRAPPING,
    STATUS_FAILED,
    STATUS_PENDING,
    STATUS_TIMEOUT,
    STATUS_WAITING,
    BootstrapTarget,
    RegistryError,
    StatusUpdate,
    ThingConfig,
    ThingConflictError,
    ThingRecord,
)

_UPDATE_STATUS_SQL = (
    "UPDATE things SET status = ?, updated_at = ?, "
    "client_address = COALESCE(?, client_address), "
    "written_server_uri = COALESCE(?, written_server_uri), "
    "bootstrapped_at = COALESCE(?, bootstrapped_at), "
    "error = ? "
    "WHERE name = ? AND revision = ? AND server_uri IS NOT NULL"
)


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
                for statement in MIGRATIONS[target].split(";"):
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
            rows = self._db.execute(f"SELECT {COLUMNS} FROM things ORDER BY name").fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM things WHERE owner = ? ORDER BY name", (owner,)
            ).fetchall()
        return [row_to_record(row)[0] for row in rows]

    def get(self, name: str) -> ThingRecord | None:
        target = self.bootstrap_target(name)
        return None if target is None else target.record

    def bootstrap_target(self, name: str) -> BootstrapTarget | None:
        """The record and config revision of an endpoint (one indexed read)."""
        with self._guard():
            row = self._db.execute(f"SELECT {COLUMNS} FROM things WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        record, revision = row_to_record(row)
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
        row = self._db.execute(f"SELECT {COLUMNS} FROM things WHERE name = ?", (config.name,)).fetchone()
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
            encode_writes(config.writes),
        )
        if row is None:
            self._db.execute(
                "INSERT INTO things (owner, stack, vm, server_uri, lifetime, binding, short_server_id, "
                "deletes, writes, name, revision, status, updated_at, manifest) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
                (*values, config.name, status, now, config.manifest),
            )
            return
        existing, _revision = row_to_record(row)
        if existing.config.owner != config.owner:
            raise ThingConflictError(
                f"thing {config.name!r} is already defined by {existing.config.owner!r}; "
                "endpoint names are unique per host"
            )
        if existing.config.manifest != config.manifest:  # not a change of the thing: no new revision
            self._db.execute("UPDATE things SET manifest = ? WHERE name = ?", (config.manifest, config.name))
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

    def expire_bootstrapping(self, updated_before: float, error: str) -> list[ThingRecord]:
        """Mark ``timeout`` the things left in ``bootstrapping`` since before ``updated_before`` (wall
        clock): the bootstrap server that ran their exchange stopped without recording an outcome (it
        crashed or was killed), and the exchange timeout that would have ended them died with it.
        Returns them as they are now, sorted by name."""
        now = time.time()
        with self._transaction():
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM things WHERE status = ? AND updated_at < ? ORDER BY name",
                (STATUS_BOOTSTRAPPING, updated_before),
            ).fetchall()
            expired = [
                dataclasses.replace(row_to_record(row)[0], status=STATUS_TIMEOUT, updated_at=now, error=error)
                for row in rows
            ]
            self._db.executemany(
                "UPDATE things SET status = ?, updated_at = ?, error = ? WHERE name = ?",
                [(STATUS_TIMEOUT, now, error, record.config.name) for record in expired],
            )
        return expired

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
