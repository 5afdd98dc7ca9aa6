"""The registry's table, its migrations, and how a row maps to a :class:`ThingRecord` and back.

The schema version is sqlite's ``PRAGMA user_version``; :data:`MIGRATIONS` brings a database from any
older version to :data:`SCHEMA_VERSION` one step at a time (:class:`epfiot.registry.Registry` runs them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final, TypeVar

from epfiot.registry.things import STATUS_WAITING, ResourceWrite, ThingConfig, ThingRecord

_T = TypeVar("_T")

SCHEMA_VERSION: Final = 2

SCHEMA_V1 = """
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

# v2: the file that declared each thing, relative to its root ("": declared before it was recorded, or on stdin)
MIGRATIONS: Final[dict[int, str]] = {1: SCHEMA_V1, 2: "ALTER TABLE things ADD COLUMN manifest TEXT NOT NULL DEFAULT ''"}

COLUMNS = (
    "name, owner, stack, vm, server_uri, lifetime, binding, short_server_id, deletes, writes, "
    "revision, status, updated_at, bootstrapped_at, client_address, written_server_uri, error, manifest"
)


def encode_writes(writes: Sequence[ResourceWrite]) -> str:
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


def row_to_record(row: tuple[Any, ...]) -> tuple[ThingRecord, int]:
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
        manifest,
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
        manifest=manifest,
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
