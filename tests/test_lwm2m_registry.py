"""The things registry: SQLite (WAL) model of desired bootstrap configs plus their status."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from epfiot.errors import EpfiotError
from epfiot.registry import (
    SCHEMA_VERSION,
    STATUS_BOOTSTRAPPED,
    STATUS_BOOTSTRAPPING,
    STATUS_FAILED,
    STATUS_PENDING,
    STATUS_TIMEOUT,
    STATUS_WAITING,
    InvalidThingConfig,
    Registry,
    RegistryError,
    ResourceWrite,
    StatusUpdate,
    ThingConfig,
    ThingConflictError,
    server_uri_for,
)
from epfiot.registry.paths import PathError, format_path, parse_path


def cfg(name: str = "sensor-1", owner: str = "alice", **kw: object) -> ThingConfig:
    base: dict[str, object] = dict(stack="plant", vm="gw", server_uri="coap://10.0.0.5:5683")
    base.update(kw)
    return ThingConfig(name=name, owner=owner, **base)  # type: ignore[arg-type]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "state" / "registry.db") as reg:
        yield reg


def test_creates_schema_in_wal_mode_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "state" / "registry.db"
    with Registry(path) as reg:
        reg.upsert(cfg(writes=(ResourceWrite("/3/0/14", "+02"), ResourceWrite("/31024/0/1", 1.5))))
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    with Registry(path) as reg:
        record = reg.get("sensor-1")
    assert record is not None
    assert record.config == cfg(writes=(ResourceWrite("/3/0/14", "+02"), ResourceWrite("/31024/0/1", 1.5)))
    assert record.status == STATUS_PENDING and record.updated_at is not None


def test_value_types_survive_storage(registry: Registry) -> None:
    writes = (
        ResourceWrite("/3/0/14", "+02"),
        ResourceWrite("/3/0/13", 7),
        ResourceWrite("/3/0/15", True),
        ResourceWrite("/3/0/16", 1.0),
        ResourceWrite("/3/0/6/1", 0),
    )
    registry.upsert(cfg(writes=writes))
    stored = registry.get("sensor-1")
    assert stored is not None
    assert [(type(w.value), w.value) for w in stored.config.writes] == [
        (type(w.value), w.value) for w in writes
    ]


def test_things_sorted_by_name_and_filtered_by_owner(registry: Registry) -> None:
    registry.upsert_many([cfg("c", "bob"), cfg("a", "alice"), cfg("b", "alice")])
    assert [t.config.name for t in registry.things()] == ["a", "b", "c"]
    assert [t.config.name for t in registry.things("alice")] == ["a", "b"]
    assert registry.things("nobody") == []
    assert registry.get("missing") is None


def test_waiting_when_no_server_uri(registry: Registry) -> None:
    registry.upsert(cfg(server_uri=None))
    record = registry.get("sensor-1")
    assert record is not None and record.status == STATUS_WAITING


def test_unchanged_upsert_keeps_status_and_a_change_resets_it(registry: Registry) -> None:
    registry.upsert(cfg())
    target = registry.bootstrap_target("sensor-1")
    assert target is not None
    assert registry.mark_bootstrapped("sensor-1", target.revision, "127.0.0.1:5000", "coap://10.0.0.5:5683")

    registry.upsert(cfg())  # same config: nothing changes
    record = registry.get("sensor-1")
    assert record is not None and record.status == STATUS_BOOTSTRAPPED
    assert registry.bootstrap_target("sensor-1").revision == target.revision  # type: ignore[union-attr]

    registry.upsert(cfg(lifetime=600))  # changed: pending again, new revision, history kept
    after = registry.bootstrap_target("sensor-1")
    assert after is not None
    assert after.revision == target.revision + 1
    assert after.record.status == STATUS_PENDING
    assert after.record.written_server_uri == "coap://10.0.0.5:5683"
    assert after.record.client_address == "127.0.0.1:5000"

    registry.upsert(cfg(lifetime=600, server_uri=None))  # VM lost its address: waiting
    waiting = registry.get("sensor-1")
    assert waiting is not None and waiting.status == STATUS_WAITING


def test_status_updates_for_an_old_revision_are_dropped(registry: Registry) -> None:
    registry.upsert(cfg())
    old = registry.bootstrap_target("sensor-1")
    assert old is not None
    registry.upsert(cfg(binding="UQ"))
    assert not registry.mark_bootstrapped("sensor-1", old.revision, "127.0.0.1:1", "coap://10.0.0.5:5683")
    record = registry.get("sensor-1")
    assert record is not None and record.status == STATUS_PENDING and record.bootstrapped_at is None


def test_status_updates_never_touch_waiting_or_deleted_things(registry: Registry) -> None:
    registry.upsert(cfg(server_uri=None))
    target = registry.bootstrap_target("sensor-1")
    assert target is not None
    assert not registry.mark_failed("sensor-1", target.revision, "boom")
    assert registry.get("sensor-1").status == STATUS_WAITING  # type: ignore[union-attr]
    registry.delete("sensor-1")
    assert registry.apply_status([StatusUpdate("sensor-1", target.revision, STATUS_FAILED, error="x")]) == 0


def test_status_flow_and_batches(registry: Registry) -> None:
    registry.upsert_many([cfg("a"), cfg("b")])
    rev = {n: registry.bootstrap_target(n).revision for n in "ab"}  # type: ignore[union-attr]
    changed = registry.apply_status(
        [
            StatusUpdate("a", rev["a"], STATUS_BOOTSTRAPPING, at=10.0, client_address="[::1]:7"),
            StatusUpdate("b", rev["b"], STATUS_BOOTSTRAPPING, at=10.0, client_address="127.0.0.1:8"),
            StatusUpdate(
                "a",
                rev["a"],
                STATUS_BOOTSTRAPPED,
                at=11.0,
                client_address="[::1]:7",
                written_server_uri="coap://10.0.0.5:5683",
                bootstrapped_at=11.0,
            ),
            StatusUpdate("b", rev["b"], STATUS_FAILED, at=12.0, error="PUT /1/1 answered 4.00 Bad Request"),
        ]
    )
    assert changed == 4
    a, b = registry.things()
    assert (a.status, a.bootstrapped_at, a.client_address, a.written_server_uri, a.error) == (
        STATUS_BOOTSTRAPPED,
        11.0,
        "[::1]:7",
        "coap://10.0.0.5:5683",
        None,
    )
    assert (b.status, b.updated_at, b.client_address, b.error) == (
        STATUS_FAILED,
        12.0,
        "127.0.0.1:8",
        "PUT /1/1 answered 4.00 Bad Request",
    )


def test_bootstrapping_left_by_a_stopped_server_expires_as_timeout(registry: Registry) -> None:
    registry.upsert_many([cfg("old"), cfg("young"), cfg("done"), cfg("other-revision")])
    now = time.time()

    def status(name: str, value: str, at: float) -> StatusUpdate:
        target = registry.bootstrap_target(name)
        assert target is not None
        return StatusUpdate(name, target.revision, value, at=at)

    registry.apply_status(
        [
            status("old", STATUS_BOOTSTRAPPING, now - 100),
            status("young", STATUS_BOOTSTRAPPING, now - 1),
            status("done", STATUS_BOOTSTRAPPED, now - 100),
            status("other-revision", STATUS_BOOTSTRAPPING, now - 100),
        ]
    )
    registry.upsert(cfg("other-revision", lifetime=600))  # reconfigured since: pending again
    assert [t.config.name for t in registry.expire_bootstrapping(now - 30, "server gone")] == ["old"]
    old = registry.get("old")
    assert old is not None and (old.status, old.error) == (STATUS_TIMEOUT, "server gone")
    assert [t.status for t in registry.things()] == [
        STATUS_BOOTSTRAPPED,
        STATUS_TIMEOUT,
        STATUS_PENDING,
        STATUS_BOOTSTRAPPING,
    ]
    assert registry.expire_bootstrapping(now - 30, "server gone") == []


def test_endpoint_names_are_unique_per_host(registry: Registry) -> None:
    registry.upsert(cfg(owner="alice"))
    with pytest.raises(ThingConflictError) as info:
        registry.upsert(cfg(owner="bob"))
    assert isinstance(info.value, EpfiotError)
    record = registry.get("sensor-1")
    assert record is not None and record.config.owner == "alice"


def test_upsert_many_is_all_or_nothing(registry: Registry) -> None:
    registry.upsert(cfg("taken", "bob"))
    with pytest.raises(ThingConflictError):
        registry.upsert_many([cfg("new-1"), cfg("taken")])
    assert [t.config.name for t in registry.things()] == ["taken"]


def test_delete_and_prune_are_scoped_by_owner(registry: Registry) -> None:
    registry.upsert_many([cfg("a1"), cfg("a2"), cfg("a3"), cfg("b1", "bob")])
    registry.delete("a3")
    registry.delete("does-not-exist")
    assert registry.prune("alice", keep=["a1"]) == ["a2"]
    assert [t.config.name for t in registry.things()] == ["a1", "b1"]
    assert registry.prune("alice", keep=[]) == ["a1"]
    assert [t.config.name for t in registry.things()] == ["b1"]


def test_data_version_changes_with_other_connections_only(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    with Registry(path) as reader, Registry(path) as writer:
        before = reader.data_version()
        reader.upsert(cfg("own"))
        assert reader.data_version() == before
        writer.upsert(cfg("other"))
        assert reader.data_version() != before


def test_concurrent_writers_in_threads_do_not_lose_updates(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    errors: list[BaseException] = []

    def work(owner: str) -> None:
        try:
            with Registry(path) as reg:
                for i in range(50):
                    reg.upsert(cfg(f"{owner}-{i}", owner))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"o{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Registry(path) as reg:
        assert len(reg.things()) == 200


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(RegistryError, match="newer"):
        Registry(path)


def test_unusable_database_is_a_registry_error(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError):
        Registry(path)


@pytest.mark.parametrize(
    "change",
    [
        dict(name=""),
        dict(name="a&b"),
        dict(name="tab\there"),
        dict(name="x" * 253),
        dict(owner=""),
        dict(server_uri="http://10.0.0.5:5683"),
        dict(server_uri="coap+tcp://10.0.0.5:5684"),
        dict(server_uri="coap://"),
        dict(server_uri="coap://10.0.0.5:99999"),
        dict(server_uri="coap://10.0.0.5:5683/rd"),
        dict(lifetime=0),
        dict(lifetime=True),
        dict(binding=""),
        dict(binding="X"),
        dict(short_server_id=0),
        dict(short_server_id=65535),
        dict(deletes=("/0/0",)),
        dict(deletes=("/3/0/1",)),
        dict(deletes=("0",)),
        dict(writes=(ResourceWrite("/3/0/14", "a"), ResourceWrite("/3/0/14", "b"))),
        dict(writes=(ResourceWrite("/3/0/6", 1), ResourceWrite("/3/0/6/0", 1))),
        dict(writes=(ResourceWrite("/0/1/0", "coap://evil"),)),
        dict(writes=(ResourceWrite("/1/1/7", "T"),)),
        dict(writes=("/3/0/14",)),
    ],
)
def test_invalid_configs_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(InvalidThingConfig) as info:
        replace(cfg(), **change)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError) and isinstance(info.value, EpfiotError)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("/0/0/0", "x"),
        ("/3/0", 1),
        ("/3", 1),
        ("3/0/1", 1),
        ("/3/0/1", None),
        ("/3/0/1", float("nan")),
        ("/3/0/1", 2**63),
    ],
)
def test_invalid_writes_are_refused(path: str, value: object) -> None:
    with pytest.raises(InvalidThingConfig):
        ResourceWrite(path, value)  # type: ignore[arg-type]


def test_valid_edge_configs() -> None:
    cfg(name="é" * 126, server_uri="coap://[fd00::5]:5683", binding="UQS", short_server_id=65534)
    cfg(deletes=("/",), writes=(ResourceWrite("/0/2/0", "coap://other:5683"), ResourceWrite("/1/1/2", 5)))
    assert cfg(deletes=["/0", "/1"]).deletes == ("/0", "/1")  # type: ignore[arg-type]


def test_server_uri_for() -> None:
    assert server_uri_for(None) is None
    assert server_uri_for("") is None
    assert server_uri_for("10.0.0.5") == "coap://10.0.0.5:5683"
    assert server_uri_for("fd00::5", 5690) == "coap://[fd00::5]:5690"


@pytest.mark.parametrize(
    ("path", "ids"),
    [
        ("/", ()),
        ("/0", (0,)),
        ("/0/1", (0, 1)),
        ("/3/0/14", (3, 0, 14)),
        ("/3/0/6/1", (3, 0, 6, 1)),
        ("/0/1/", (0, 1)),
    ],
)
def test_paths_parse_and_format(path: str, ids: tuple[int, ...]) -> None:
    assert parse_path(path) == ids
    assert format_path(ids) == (path.rstrip("/") or "/")


@pytest.mark.parametrize("path", ["", "0/1", "/a", "/1//2", "/01", "/65536", "/-1", "/1/2/3/4/5", "/\u0661"])
def test_bad_paths_are_errors(path: str) -> None:
    with pytest.raises(PathError):
        parse_path(path)


def test_the_registry_is_a_model_that_loads_no_protocol() -> None:
    """Reconcile, the CLI and the planner's views use the registry without paying for (or depending on) CoAP."""
    code = "import sys, epfiot.registry; print(sorted(m for m in sys.modules if m.startswith(('aiocoap', 'epfiot.lwm2m'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
