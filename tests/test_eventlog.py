"""The event log: `epfiot events` and its filters, and the retention bound that keeps the log from growing
without end."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from epfiot.cli import main
from epfiot.eventlog import EventLog, Retention


def events(state: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--state-dir", str(state), "events", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def history(state: Path) -> None:
    log = EventLog.in_state_dir(state)
    try:
        log.record("action.done", "vm/alice/example1", "create: declared", source="apply")
        log.record("action.failed", "vm/bob/example1", "create failed: no pool", error="no pool", source="apply")
        log.record("drift", "vm/alice/example1", "stopped, declared running", source="watch")
        log.record("bootstrap.finished", "thing/alice/sensor-1", "bootstrapped", endpoint="sensor-1", owner="alice")
        log.record("bootstrap.refused", "thing/intruder", "bootstrap refused", endpoint="intruder", reason="unknown endpoint")
        log.record("manifest.invalid", "watch", "alice.yaml:3: vms[0].memory: bad size")
        # a subject that merely contains the name is not about that owner
        log.record("action.done", "network/carol/alice", "create: declared", source="apply")
    finally:
        log.close()


def test_events_filtered_by_owner_and_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history(tmp_path)
    code, out, _ = events(tmp_path, capsys, "--owner", "alice", "-o", "json")
    assert code == 0
    assert [(e["kind"], e["subject"]) for e in json.loads(out)] == [
        ("action.done", "vm/alice/example1"),
        ("drift", "vm/alice/example1"),
        ("bootstrap.finished", "thing/alice/sensor-1"),
    ]
    code, out, _ = events(tmp_path, capsys, "--kind", "action.done", "--kind", "action.failed", "-o", "json")
    assert [e["subject"] for e in json.loads(out)] == ["vm/alice/example1", "vm/bob/example1", "network/carol/alice"]
    code, out, _ = events(tmp_path, capsys, "--owner", "alice", "--kind", "drift,bootstrap.finished", "--since", "1h")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and "drift" in lines[0] and "thing/alice/sensor-1: bootstrapped" in lines[1]
    code, out, _ = events(tmp_path, capsys, "--owner", "nobody")
    assert code == 0 and out.strip() == "No events match."


def test_an_unknown_kind_is_an_error_listing_the_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history(tmp_path)
    code, out, err = events(tmp_path, capsys, "--kind", "action.finished")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "unknown event kind 'action.finished'" in err
    assert "action.done" in err and "bootstrap.refused" in err and "Traceback" not in err
    # without a log, the kinds epfiot records are still known
    code, out, err = events(tmp_path / "empty", capsys, "--kind", "bootstrap.refused")
    assert code == 0 and out.strip() == "No events yet."
    code, _, err = events(tmp_path / "empty", capsys, "--kind", "refused")
    assert code == 2 and "bootstrap.refused" in err


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_the_log_keeps_to_its_size_bound_dropping_the_oldest_first(tmp_path: Path) -> None:
    bound = 256 * 1024
    log = EventLog.in_state_dir(tmp_path, Retention(max_bytes=bound))
    try:
        for i in range(20_000):
            log.record("action.done", f"vm/alice/vm-{i}", f"create: declared ({'x' * 100})", n=i)
        kept = log.since()
    finally:
        log.close()
    numbers = [e.fields["n"] for e in kept]
    assert numbers == list(range(numbers[0], 20_000))  # the newest, in order, none missing
    assert 500 < len(numbers) < 20_000
    assert (tmp_path / "events.db").stat().st_size < 2 * bound
    assert _file_bytes(tmp_path / "events.db") < 2 * bound + 1024 * 1024 + 64 * 1024  # with the write-ahead log


def test_events_older_than_the_age_bound_are_dropped(tmp_path: Path) -> None:
    log = EventLog.in_state_dir(tmp_path, Retention(max_age=7 * 86400))
    log.record("action.done", "vm/alice/recent", "create: declared")
    log.close()
    with sqlite3.connect(tmp_path / "events.db") as db:  # as if recorded long ago
        db.execute(
            "INSERT INTO events (at, kind, subject, message, fields) VALUES (?, 'drift', 'vm/alice/old', 'x', '{}')",
            (time.time() - 8 * 86400,),
        )
    log = EventLog.in_state_dir(tmp_path)  # a later writer (apply) keeps to the bound watch or serve set
    try:
        log.record("action.done", "vm/alice/new", "create: declared")
        assert log.retention == Retention(max_age=7 * 86400)
        assert [e.subject for e in log.since()] == ["vm/alice/recent", "vm/alice/new"]
    finally:
        log.close()


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--event-log-max-bytes", "12MB", "--event-log-max-bytes: '12MB' is ambiguous"),
        ("--event-log-max-bytes", "1K", "at least 64KiB"),
        ("--event-log-max-age", "soon", "--event-log-max-age: 'soon' is not a valid duration"),
    ],
)
def test_a_bad_retention_bound_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, expected: str
) -> None:
    code = main(["--state-dir", str(tmp_path / "state"), "serve", "--port", "0", option, value])
    _, err = capsys.readouterr()
    assert code == 2 and expected in err and err.count("\n") == 1
    assert not (tmp_path / "state").exists()  # nothing changed


def test_the_bound_given_to_serve_holds_for_later_writers(tmp_path: Path) -> None:
    import asyncio
    import signal

    from tests.lwm2m_client import Lwm2mTestClient
    from tests.lwm2m_support import epfiot_serve

    state = tmp_path / "state"
    with epfiot_serve(state, "--event-log-max-age", "7d", "--event-log-max-bytes", "1MiB") as child:

        async def refused() -> None:
            async with Lwm2mTestClient("nobody", "127.0.0.1", child.port) as client:
                await client.request_bootstrap()

        asyncio.run(refused())
        child.wait_for_line(lambda line: line.startswith("bootstrap.refused"))
        child.proc.send_signal(signal.SIGTERM)
        assert child.finish()[0] == 0
    log = EventLog.in_state_dir(state)  # as apply opens it
    try:
        assert [e.kind for e in log.since()] == ["bootstrap.refused"]
        assert log.retention == Retention(max_bytes=1024 * 1024, max_age=7 * 86400)
    finally:
        log.close()
