"""One line per event: the log format of the long-running commands (watch, serve).

Human (default), for a terminal or the journal:

    2026-11-28 15:42:07.123 action.start      vm/charlie/example1: create (not defined yet)

JSON lines (--log-format json), one object per line, for log shippers and tests:

    {"ts": 1795966927.123, "time": "2026-11-28T15:42:07.123Z", "level": "info", "event": "action.start",
     "subject": "vm/charlie/example1", "message": "create (not defined yet)", ...fields}

`ts` is the wall-clock time in seconds (time.time()) when the line was produced: benchmarks compare it
with the time a file was saved. Fields come from plans, events and errors, which hold no secrets.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Literal, TextIO

Format = Literal["human", "json"]
LEVELS = ("debug", "info", "warning", "error")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def format_human(ts: float, level: str, event: str, subject: str, message: str, fields: dict[str, object]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
    marker = {"warning": " WARNING", "error": " ERROR"}.get(level, "")
    text = f"{subject}: {message}" if subject else message
    line = f"{stamp}{marker} {event:<17} {text}".rstrip()
    if fields.get("traceback"):  # a bug: the traceback says where (the only multi-line entry)
        line += "\n" + str(fields["traceback"]).rstrip()
    return line.replace("\n", "\n    ")


def format_json(ts: float, level: str, event: str, subject: str, message: str, fields: dict[str, object]) -> str:
    record: dict[str, object] = {
        "ts": round(ts, 6),
        "time": _iso(ts),
        "level": level,
        "event": event,
        "subject": subject,
        "message": message,
    }
    for key, value in fields.items():
        record.setdefault(key, value)
    return json.dumps(record, default=str, separators=(",", ":"))


class Log:
    """Writes one line per call, atomically with respect to other threads; flushes each line."""

    def __init__(
        self,
        stream: TextIO | None = None,
        fmt: Format = "human",
        *,
        verbose: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.fmt: Format = fmt
        self.verbose = verbose
        self._clock = clock
        self._lock = threading.Lock()
        self._format = format_json if fmt == "json" else format_human

    def __call__(self, event: str, message: str, *, subject: str = "", level: str = "info", **fields: object) -> None:
        self.emit(event, message, subject=subject, level=level, **fields)

    def emit(self, event: str, message: str, *, subject: str = "", level: str = "info", **fields: object) -> None:
        if level == "debug" and not self.verbose:
            return
        line = self._format(self._clock(), level, event, subject, message, fields)
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):  # the reader went away, or the stream was closed
                pass

    def bridge_logging(self, *loggers: str, level: int = logging.INFO) -> logging.Handler:
        """Route the standard logging records of `loggers` (e.g. "epfiot", "aiocoap") through this log,
        one line each, so that a process writes one format only. Returns the handler (to remove it)."""
        handler = _Bridge(self)
        handler.setLevel(level)
        for name in loggers:
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            logger.setLevel(min(logger.level or level, level))
            logger.propagate = False
        return handler


class _Bridge(logging.Handler):
    def __init__(self, log: Log) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f": {record.exc_info[1]!r}"
            level = "debug" if record.levelno < logging.INFO else record.levelname.lower()
            if level not in LEVELS:
                level = "error"
            self.log.emit("log", message, subject=record.name, level=level)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)
