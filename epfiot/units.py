"""Sizes and durations as people write them in manifests.

Memory:    512MiB, 1GiB, 1.5GiB, 2048 (a bare number is MiB), also Ki/Mi/Gi/Ti and K/M/G/T (all binary, as
           QEMU reads "-m 512M"). Decimal units (MB, GB) are refused: they are ambiguous. The result must be a
           whole, positive number of MiB.
Disk size: the same units; a bare number is GiB; the result must be a whole, positive number of GiB.
Size:      the same units, for settings (the event log's bound); a bare number is bytes.
Duration:  60s, 2m, 1h, 1m30s, 500ms, or a number of seconds (60, 2.5).

Each parser raises ValueError with a message that completes "<value> is ..." style sentences: the manifest
loader puts the field path and line in front of it.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# Kept in sync with the patterns in schemas/stack.schema.json (a test checks that both agree).
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?(KiB|MiB|GiB|TiB|Ki|Mi|Gi|Ti|K|M|G|T)?$"
DURATION_PATTERN = r"^(([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+|[0-9]+(\.[0-9]+)?)$"

_SIZE_RE = re.compile(SIZE_PATTERN)
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_RE = re.compile(DURATION_PATTERN)

_KIB = 1024
_UNIT_BYTES = {
    "B": 1,  # the default unit of a plain byte count; no written unit starts with B
    "K": _KIB,
    "M": _KIB**2,
    "G": _KIB**3,
    "T": _KIB**4,
}
_SECONDS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}

MEMORY_HINT = "use e.g. 512MiB, 1GiB, or a whole number of MiB"
DISK_HINT = "use e.g. 10GiB, or a whole number of GiB"
SIZE_HINT = "use e.g. 64MiB, 1GiB, or a number of bytes"
DURATION_HINT = "use e.g. 30s, 2m, 1m30s, or a number of seconds"


def _size_bytes(value: object, default_unit: str, hint: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not a valid {what} ({hint})")
    if isinstance(value, int):
        return value * _UNIT_BYTES[default_unit]
    text = value.strip()
    match = _SIZE_RE.match(text)
    if match is None:
        if re.match(r"^[0-9.]+\s*[kKmMgGtT][bB]$", text):
            raise ValueError(
                f"{value!r} is ambiguous: decimal units are not accepted ({hint}; 1GiB = 1024MiB)"
            )
        raise ValueError(f"{value!r} is not a valid {what} ({hint})")
    unit = match.group(2)
    number = text[: len(text) - len(unit)] if unit else text
    try:
        amount = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimal numbers
        raise ValueError(f"{value!r} is not a valid {what} ({hint})") from None
    scaled = amount * _UNIT_BYTES[unit[0] if unit else default_unit]
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(scaled)


def _whole_units(value: object, unit: str, hint: str, what: str) -> int:
    """A size as a count of `unit` (a binary prefix: "M" is MiB), a bare number being one; more than 0."""
    size = _size_bytes(value, unit, hint, what)
    count, rest = divmod(size, _UNIT_BYTES[unit])
    if rest:
        raise ValueError(f"{value!r} is not a whole number of {unit}iB")
    if count <= 0:
        raise ValueError(f"{value!r} is not a valid {what} (it must be more than 0)")
    return count


def parse_memory_mib(value: object) -> int:
    """A memory size in MiB: "512MiB" -> 512, "1GiB" -> 1024, 256 -> 256."""
    return _whole_units(value, "M", MEMORY_HINT, "memory size")


def parse_disk_gib(value: object) -> int:
    """A disk size in GiB: "10GiB" -> 10, "1TiB" -> 1024, 20 -> 20."""
    return _whole_units(value, "G", DISK_HINT, "disk size")


def parse_size_bytes(value: object) -> int:
    """A size in bytes, for settings such as the event log's bound: "64MiB", "512K", 1048576."""
    size = _size_bytes(value, "B", SIZE_HINT, "size")
    if size <= 0:
        raise ValueError(f"{value!r} is not a valid size (it must be more than 0)")
    return size


def parse_duration(value: object) -> float:
    """A duration in seconds: "60s" -> 60.0, "2m" -> 120.0, "1m30s" -> 90.0, 45 -> 45.0."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a valid duration ({DURATION_HINT})")
    if isinstance(value, int | float):
        if value < 0 or value != value or value in (float("inf"),):
            raise ValueError(f"{value!r} is not a valid duration ({DURATION_HINT})")
        return float(value)
    text = value.strip()
    if not _DURATION_RE.match(text):
        raise ValueError(f"{value!r} is not a valid duration ({DURATION_HINT})")
    if text[-1].isdigit():
        return float(Decimal(text))
    return float(sum(Decimal(n) * _SECONDS[u] for n, u in _DURATION_PART_RE.findall(text)))


def format_mib(mib: int) -> str:
    """512 -> "512MiB", 2048 -> "2GiB": the shortest exact form."""
    if mib >= 1024 and mib % 1024 == 0:
        return f"{mib // 1024}GiB"
    return f"{mib}MiB"


def format_seconds(seconds: float) -> str:
    """90.0 -> "90s", 0.5 -> "0.5s"."""
    return f"{seconds:g}s"
