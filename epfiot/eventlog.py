"""The event log: every action taken (by apply or watch), its outcome, and each drift or bootstrap event.

SQLite in the state directory, so `epfiot events` can show what happened long after the process ended.
Fields never hold secrets: they come from plans, which hold none.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3

    from epfiot.apply import Outcome
    from epfiot.plan import Action
    from epfiot.reconcile import CreatePool, Result

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    message TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events(at);
"""


@dataclass(frozen=True)
class Event:
    at: float
    kind: str  # "action.done", "action.failed", "drift", "bootstrap.finished", "manifest.invalid" ...
    subject: str  # "vm/charlie/example1", "thing/prueba", "watch"
    message: str
    fields: dict[str, object]

    def as_dict(self) -> dict[str, object]:
        return {"at": self.at, "kind": self.kind, "subject": self.subject, "message": self.message, **self.fields}


class EventLog:
    """Opened on first use: a command that records nothing never creates or opens the database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> EventLog:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(state_dir / "events.db")

    def _connection(self) -> sqlite3.Connection:  # under self._lock
        if self._db is None:
            import sqlite3  # with datetime: only for a command that records or reads events

            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def record(self, kind: str, subject: str, message: str, **fields: object) -> None:
        blob = json.dumps(fields, sort_keys=True, default=str)
        with self._lock:
            self._connection().execute(
                "INSERT INTO events (at, kind, subject, message, fields) VALUES (?, ?, ?, ?, ?)",
                (time.time(), kind, subject, message, blob),
            )

    def since(self, seconds_ago: float | None = None, limit: int = 10_000) -> list[Event]:
        floor = time.time() - seconds_ago if seconds_ago is not None else 0.0
        with self._lock:
            rows = self._connection().execute(
                "SELECT at, kind, subject, message, fields FROM events WHERE at >= ? ORDER BY id DESC LIMIT ?",
                (floor, limit),
            ).fetchall()
        return [Event(at, kind, subject, message, json.loads(fields)) for at, kind, subject, message, fields in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class EventRecorder:
    """The part of a reconcile Reporter (epfiot.reconcile) that the CLI and watch share: what a run does
    goes to the event log, marked with its source ("apply", "delete", "watch"). Front ends subclass it and
    add their own output."""

    def __init__(self, events: EventLog, source: str) -> None:
        self.events = events
        self.source = source

    def lock_wait(self, message: str) -> None:
        pass

    def pool_created(self, pool: CreatePool, seconds: float) -> None:
        self.events.record("pool.created", pool.address, pool.describe(), seconds=round(seconds, 3), source=self.source)

    def planned(self, result: Result, applying: bool) -> None:
        pass

    def action_started(self, action: Action) -> None:
        self.events.record("action.start", action.address, f"{action.verb}: {action.reason}", source=self.source)

    def action_finished(self, outcome: Outcome) -> None:
        action = outcome.action
        if outcome.ok:
            steps = [step.describe() for step in action.steps]
            self.events.record("action.done", action.address, f"{action.verb}: {action.reason}", seconds=round(outcome.seconds, 3), steps=steps, source=self.source)
        else:
            message = outcome.message
            self.events.record("action.failed", action.address, f"{action.verb} failed: {message}", error=message, retry=outcome.retry, source=self.source)


def describe_bootstrap(kind: str, fields: dict[str, object]) -> tuple[str, str]:
    """Subject and one-line message for an event of the bootstrap server (fields hold no written values)."""
    endpoint = str(fields.get("endpoint", "?"))
    owner = fields.get("owner")
    subject = f"thing/{owner}/{endpoint}" if owner else f"thing/{endpoint}"
    client = fields.get("client", "?")
    what = kind.rpartition(".")[2]
    if what == "finished":
        message = f"bootstrapped from {client} to {fields.get('server_uri')}"
    elif what == "started":
        message = f"bootstrap requested from {client}"
    else:
        why = fields.get("error") or fields.get("reason") or "no reason given"
        message = f"bootstrap {what} ({client}): {why}"
    return subject, message
