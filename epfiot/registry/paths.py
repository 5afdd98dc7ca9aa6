"""LwM2M paths ("/", "/3", "/3/0", "/3/0/14", "/3/0/14/1"): what manifests, the registry and the bootstrap
server name objects, instances and resources with. Pure: no I/O, no CoAP."""

from __future__ import annotations

from collections.abc import Iterable

MAX_ID = 0xFFFF


class PathError(ValueError):
    """Text that is not an LwM2M path of the expected depth."""


def parse_path(path: str, *, min_depth: int = 0, max_depth: int = 4) -> tuple[int, ...]:
    """The ids of an LwM2M path; one trailing slash is tolerated ("/0/1/")."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise PathError(f"LwM2M path must start with '/': {path!r}")
    parts = path[1:].split("/") if path != "/" else []
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    ids: list[int] = []
    for part in parts:
        if not part.isdigit() or not part.isascii() or (len(part) > 1 and part[0] == "0"):
            raise PathError(f"invalid LwM2M path {path!r}")
        if int(part) > MAX_ID:
            raise PathError(f"invalid LwM2M path {path!r}: path element must be an integer 0..65535")
        ids.append(int(part))
    if not min_depth <= len(ids) <= max_depth:
        raise PathError(f"LwM2M path {path!r} must have {min_depth} to {max_depth} elements")
    return tuple(ids)


def format_path(ids: Iterable[int]) -> str:
    return "/" + "/".join(str(i) for i in ids)
