"""The administrator's files (the host configuration, the USB policy): which one to read, and its text.

Each is named by an option, else an environment variable, else sits at a default path. A file named
explicitly must exist; at the default path, no file means no such settings. A file that cannot be read,
or is not UTF-8 (its line said), is one line of the error type the caller gives: never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path


def chosen_path(path: Path | None, env: str, default: Path) -> tuple[Path, bool]:
    """The file to read and whether it was named explicitly (option or environment)."""
    if path is not None:
        return path, True
    if named := os.environ.get(env):
        return Path(named), True
    return default, False


def read_host_file(path: Path, explicit: bool, what: str, error: type[Exception]) -> str | None:
    """The text of `path` (`what`: "host configuration"), or None when it is at its default place and absent."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise error(f"{what} {path} does not exist") from None
        return None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: the {what} is not UTF-8 text") from None
