"""Where manifest text comes from: files, directories of them, and standard input.

Each PATH is a YAML file, a directory (every *.yaml and *.yml below it, in sorted order, hidden entries
skipped) or "-" for standard input (read once, however often it is named). A file named twice, directly or
through a directory, is read once. Text must be UTF-8: a byte that is not is reported at its line, and no
undecodable text ever reaches the YAML parser.

Each text also carries its root, against which the file it came from is recorded in the resources it declares:
the directory given for `dir`, the file's own directory for `dir/a.yaml` (so both record `a.yaml`), the base
directory for stdin (whose resources record no file).

Problems about a path as a whole (missing, unreadable, an empty directory) have line 0: they concern no line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from epfiot.errors import ManifestProblem

STDIN_NAME = "<stdin>"
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class SourceText:
    """The text of one file or of standard input, and the directory its {file: PATH} passwords are relative to."""

    name: str  # what messages and sources show
    text: str
    directory: Path
    root: Path | None = None  # absolute; None for text given in memory
    manifest: str = ""  # the file relative to `root`, with "/" separators; "" for stdin


def read_sources(
    paths: Sequence[str], stdin: TextIO | None, stdin_dir: Path, problems: list[ManifestProblem]
) -> Iterator[SourceText]:
    seen: set[str] = set()
    for given in paths:
        if given == "-":
            if "-" not in seen:
                seen.add("-")
                text = _read_stream(stdin if stdin is not None else sys.stdin, problems)
                if text is not None:
                    yield SourceText(STDIN_NAME, text, stdin_dir, root=stdin_dir.absolute())
            continue
        path = Path(given)
        root = path.absolute() if path.is_dir() else path.absolute().parent
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*")
                if p.suffix in SUFFIXES and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )  # fmt: skip
            if not files:
                problems.append(ManifestProblem(given, 0, "", "no *.yaml or *.yml files in this directory"))
        elif path.exists():
            files = [path]
        else:
            problems.append(ManifestProblem(given, 0, "", "no such file or directory"))
            continue
        for file in files:
            key = str(file.resolve())
            if key in seen:
                continue
            seen.add(key)
            try:
                data = file.read_bytes()
            except OSError as e:
                problems.append(ManifestProblem(str(file), 0, "", f"cannot read: {e.strerror or e}"))
                continue
            text = decode(data, str(file), problems)
            if text is not None:
                manifest = file.relative_to(path).as_posix() if file != path else path.name
                yield SourceText(str(file), text, file.resolve().parent, root=root, manifest=manifest)


def unread_manifests(roots: Sequence[str], files: frozenset[str], recorded: Iterable[str]) -> frozenset[str]:
    """Those `recorded` manifest files (relative to a root) that exist below one of `roots` and are not among
    the `files` read: what they declare is kept, not pruned."""
    unread = set()
    for manifest in set(recorded) - {""}:
        for root in roots:
            path = Path(root, manifest)
            if path.is_file() and str(path.resolve()) not in files:
                unread.add(manifest)
                break
    return frozenset(unread)


def decode(data: bytes, name: str, problems: list[ManifestProblem]) -> str | None:
    """`data` as UTF-8 text, or None after reporting the line of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        _not_utf8(data[: e.start].decode("utf-8"), f"byte 0x{data[e.start]:02x}", name, problems)
        return None


def _read_stream(stream: TextIO, problems: list[ManifestProblem]) -> str | None:
    # The bytes, where there are any: a text stream would decode them with the locale's encoding, and
    # standard input's error handler (surrogateescape) would turn a bad byte into text no parser accepts.
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        return decode(buffer.read(), STDIN_NAME, problems)
    text = stream.read()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: bytes that a text stream could not decode
        code = ord(text[e.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"character U+{code:04X}"
        _not_utf8(text[: e.start], what, STDIN_NAME, problems)
        return None
    return text


def _not_utf8(before: str, what: str, name: str, problems: list[ManifestProblem]) -> None:
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    problems.append(ManifestProblem(name, line, "", f"not UTF-8 text: {what} at column {column} (save it as UTF-8)"))
