"""The event log: every action taken (by apply or watch), its outcome, and each drift or bootstrap event.

SQLite in the state directory, so `epfiot events` can show what happened long after the process ended.
Fields never hold secrets: they come from plans, which hold none.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Collection
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
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value REAL NOT NULL);
"""

# What the log records, for `epfiot events --kind` (kinds found in the log are accepted too).
KINDS = (
    "action.done",
    "action.failed",
    "action.start",
    "bootstrap.failed",
    "bootstrap.finished",
    "bootstrap.refused",
    "bootstrap.started",
    "bootstrap.timeout",
    "drift",
    "manifest.invalid",
    "plan.invalid",
    "pool.created",
    "reconcile.failed",
    "removal.pending",
)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_AGE = 90 * 86400.0
PRUNE_EVERY = 256  # records between two looks at the log's size and age
_WAL_LIMIT = 1024 * 1024  # the write-ahead log is checkpointed, and cut back, at about this size


@dataclass(frozen=True)
class Retention:
    """How much history the log keeps: the oldest entries go first once it holds more than ``max_bytes``
    or they are older than ``max_age`` seconds."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_age: float = DEFAULT_MAX_AGE

    def __post_init__(self) -> None:
        if self.max_bytes < 64 * 1024:
            raise ValueError("the event log's size bound must be at least 64KiB")
        if not self.max_age > 0:
            raise ValueError("the event log's age bound must be positive")


def retention_from_options(max_bytes: str | None, max_age: str | None) -> Retention | None:
    """The Retention of --event-log-max-bytes and --event-log-max-age; None when neither is given (the log
    keeps the bound it was last given)."""
    from epfiot import units
    from epfiot.errors import UsageError

    if max_bytes is None and max_age is None:
        return None
    try:
        size = units.parse_size_bytes(max_bytes) if max_bytes is not None else DEFAULT_MAX_BYTES
    except ValueError as error:
        raise UsageError(f"--event-log-max-bytes: {error}") from None
    try:
        age = units.parse_duration(max_age) if max_age is not None else DEFAULT_MAX_AGE
    except ValueError as error:
        raise UsageError(f"--event-log-max-age: {error}") from None
    try:
        return Retention(size, age)
    except ValueError as error:
        raise UsageError(f"event log: {error}") from None


@dataclass(frozen=True)
class Event:
    at: float
    kind: str  # "action.done", "action.failed", "drift", "bootstrap.finished", "manifest.invalid" ...
    subject: str  # "vm/charlie/example1", "thing/prueba", "watch"
    message: str
    fields: dict[str, object]

    def as_dict(self) -> dict[str, object]:
        return {"at": self.at, "kind": self.kind, "subject": self.subject, "message": self.message, **self.fields}


def event_owner(subject: str, fields: dict[str, object]) -> str | None:
    """The tenant an event is about: its ``owner`` field, else the OWNER of a KIND/OWNER/NAME subject."""
    owner = fields.get("owner")
    if isinstance(owner, str) and owner:
        return owner
    parts = subject.split("/")
    return parts[1] if len(parts) == 3 and parts[1] else None


class EventLog:
    """Opened on first use: a command that records nothing never creates or opens the database.

    ``retention`` given (watch, serve) is stored in the log, and every later writer keeps to it; a writer
    given none (apply, delete) keeps to the stored one, else to the defaults."""

    def __init__(self, path: Path, retention: Retention | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._given = retention
        self.retention = retention or Retention()
        self._since_prune = 0
        self._written = 0

    @classmethod
    def in_state_dir(cls, state_dir: Path, retention: Retention | None = None) -> EventLog:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(state_dir / "events.db", retention)

    def _connection(self) -> sqlite3.Connection:  # under self._lock
        if self._db is None:
            import sqlite3  # with datetime: only for a command that records or reads events

            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            db.execute(f"PRAGMA wal_autocheckpoint={_WAL_LIMIT // 4096}")
            db.executescript(_SCHEMA)
            self._db = db
            self._settle_retention(db)
        return self._db

    def _settle_retention(self, db: sqlite3.Connection) -> None:
        if self._given is not None:
            db.executemany(
                "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                [("max_bytes", self._given.max_bytes), ("max_age", self._given.max_age)],
            )
            return
        stored = dict(db.execute("SELECT key, value FROM settings").fetchall())
        try:
            self.retention = Retention(int(stored.get("max_bytes", DEFAULT_MAX_BYTES)), float(stored.get("max_age", DEFAULT_MAX_AGE)))
        except ValueError:
            self.retention = Retention()

    def record(self, kind: str, subject: str, message: str, **fields: object) -> None:
        blob = json.dumps(fields, sort_keys=True, default=str)
        with self._lock:
            db = self._connection()
            db.execute(
                "INSERT INTO events (at, kind, subject, message, fields) VALUES (?, ?, ?, ?, ?)",
                (time.time(), kind, subject, message, blob),
            )
            # a look at the bound now and then: after PRUNE_EVERY records, or a 16th of the bound written
            self._since_prune += 1
            self._written += len(blob) + len(message) + len(subject) + 64
            if self._since_prune == 1 or self._since_prune > PRUNE_EVERY or self._written * 16 > self.retention.max_bytes:
                self._since_prune, self._written = 1, 0
                self._prune(db)

    def _prune(self, db: sqlite3.Connection) -> None:  # under self._lock
        """Drop what the retention bound no longer allows: the old first."""
        db.execute("DELETE FROM events WHERE at < ?", (time.time() - self.retention.max_age,))
        # Freed pages are reused by later records, so the file stays about as large as its content.
        for _ in range(8):
            used = self._content_bytes(db)
            if used <= self.retention.max_bytes:
                return
            (rows,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
            if rows == 0:
                return
            # down to 90% of the bound, so that pruning is not needed again at the very next look
            drop = max(1, int(rows * (1 - 0.9 * self.retention.max_bytes / used)) + 1)
            db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)", (drop,))

    @staticmethod
    def _content_bytes(db: sqlite3.Connection) -> int:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)

    def known_kinds(self) -> list[str]:
        """The kinds epfiot records, and any other kind the log holds."""
        with self._lock:
            found = [kind for (kind,) in self._connection().execute("SELECT DISTINCT kind FROM events")]
        return sorted({*KINDS, *found})

    def since(
        self,
        seconds_ago: float | None = None,
        limit: int = 10_000,
        *,
        kinds: Collection[str] = (),
        owner: str | None = None,
    ) -> list[Event]:
        """The latest ``limit`` events (oldest first), of ``kinds`` (all if none) and about ``owner``."""
        floor = time.time() - seconds_ago if seconds_ago is not None else 0.0
        query = "SELECT at, kind, subject, message, fields FROM events WHERE at >= ?"
        params: list[object] = [floor]
        if kinds:
            query += f" AND kind IN ({', '.join('?' * len(kinds))})"
            params.extend(kinds)
        if owner is not None and owner.isascii():
            # a first cut in SQL (the name appears in the subject or the fields), then the exact rule
            query += " AND (subject LIKE ? ESCAPE '\\' OR fields LIKE ? ESCAPE '\\')"
            pattern = "%" + owner.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            params.extend([pattern, pattern])
        events: list[Event] = []
        with self._lock:
            rows = self._connection().execute(query + " ORDER BY id DESC", params)
            for at, kind, subject, message, blob in rows:
                fields = json.loads(blob)
                if owner is None or event_owner(subject, fields) == owner:
                    events.append(Event(at, kind, subject, message, fields))
                    if len(events) >= limit:
                        break
        events.reverse()
        return events

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
    if kind.endswith(".refused") and "endpoint" not in fields and "endpoints" not in fields:
        return "lwm2m/refusals", f"refused ({fields.get('client', '?')}): {fields.get('reason')}"
    if "endpoints" in fields:  # refusals summed up (epfiot.lwm2m.refusals)
        endpoints, clients_seen = fields["endpoints"], fields.get("clients")
        samples = ", ".join(str(e) for e in endpoints) if isinstance(endpoints, list) else ""
        clients = ", ".join(str(c) for c in clients_seen) if isinstance(clients_seen, list) else "?"
        example = f" (e.g. {samples} from {clients})" if samples else f" (from {clients})"
        return "lwm2m/refusals", (
            f"{fields.get('count')} more requests refused over {fields.get('transport')}"
            f" in {fields.get('seconds')} s: {fields.get('reason')}{example}"
        )
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
