"""Things as the registry holds them: the desired LwM2M bootstrap configuration of an endpoint (validated
when it is built), its record with the bootstrap status, and the status updates the bootstrap server
computes. Pure data: no I/O, no CoAP.

Statuses: ``waiting`` (no server URI yet: the thing's VM has no address), ``pending`` (configured, not
bootstrapped since), ``bootstrapping`` (an exchange is running), ``bootstrapped``, ``failed`` (an error
answer, no answer within the exchange timeout, or a re-bootstrap loop) and ``timeout`` (left in
``bootstrapping`` by a bootstrap server that stopped without recording an outcome).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from epfiot.errors import EpfiotError
from epfiot.registry.paths import PathError, parse_path

STATUS_WAITING: Final = "waiting"
STATUS_PENDING: Final = "pending"
STATUS_BOOTSTRAPPING: Final = "bootstrapping"
STATUS_BOOTSTRAPPED: Final = "bootstrapped"
STATUS_FAILED: Final = "failed"
STATUS_TIMEOUT: Final = "timeout"
STATUSES: Final = (
    STATUS_WAITING,
    STATUS_PENDING,
    STATUS_BOOTSTRAPPING,
    STATUS_BOOTSTRAPPED,
    STATUS_FAILED,
    STATUS_TIMEOUT,
)

SECURITY_INSTANCE: Final = 1
"""Instance of the Security (0) and Server (1) objects the bootstrap server writes. Instance
/0/0 usually holds the client's own bootstrap-server account and is never written."""

SECURITY_MANAGED_RESOURCES: Final = frozenset({0, 1, 2, 10})
SERVER_MANAGED_RESOURCES: Final = frozenset({0, 1, 6, 7})

_BINDING_RE = re.compile(r"^[UQSTN]{1,8}$")
_MAX_EP_BYTES = 252  # Uri-Query options are at most 255 bytes, "ep=" included


class RegistryError(EpfiotError):
    """The registry cannot be used as asked (database errors, schema, conflicting ownership)."""


class ThingConflictError(RegistryError):
    """An endpoint name is already registered by another owner (names are unique per host)."""


class InvalidThingConfig(RegistryError, ValueError):
    """A thing configuration that cannot be bootstrapped as given."""


@dataclass(frozen=True)
class ResourceWrite:
    """An extra bootstrap write of one resource (``/3/0/14``) or resource instance
    (``/3/0/14/1``) value."""

    path: str
    value: str | int | float | bool

    def __post_init__(self) -> None:
        try:
            ids = parse_path(self.path, min_depth=3, max_depth=4)
        except PathError as exc:
            raise InvalidThingConfig(f"write path {self.path!r}: {exc}") from None
        if ids[:2] == (0, 0):
            raise InvalidThingConfig(
                f"write path {self.path!r}: instance /0/0 (the bootstrap account) is never written"
            )
        if not isinstance(self.value, str | int | float | bool):
            raise InvalidThingConfig(f"write {self.path}: value must be a string, number or boolean")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise InvalidThingConfig(f"write {self.path}: value must be a finite number")
        if (
            isinstance(self.value, int)
            and not isinstance(self.value, bool)
            and not -(2**63) <= self.value < 2**63
        ):
            raise InvalidThingConfig(f"write {self.path}: integer does not fit in 64 bits")

    @property
    def ids(self) -> tuple[int, ...]:
        return parse_path(self.path, min_depth=3, max_depth=4)


@dataclass(frozen=True)
class ThingConfig:
    """Desired bootstrap configuration of one thing (what reconcile writes, resolved)."""

    name: str
    owner: str
    stack: str
    vm: str | None
    server_uri: str | None
    lifetime: int = 300
    binding: str = "U"
    short_server_id: int = 1
    deletes: tuple[str, ...] = ("/0", "/1")
    writes: tuple[ResourceWrite, ...] = ()
    # The declaring file, relative to its root: what pruning asks about, never part of what is bootstrapped
    # (a thing moved to another file is not written again).
    manifest: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # tolerate lists from callers; store tuples so configs compare and hash by value
        object.__setattr__(self, "deletes", tuple(self.deletes))
        object.__setattr__(self, "writes", tuple(self.writes))
        _validate_config(self)


def _validate_config(cfg: ThingConfig) -> None:
    if not isinstance(cfg.name, str) or not cfg.name:
        raise InvalidThingConfig("thing name (LwM2M endpoint name) must be a non-empty string")
    if len(cfg.name.encode("utf-8")) > _MAX_EP_BYTES:
        raise InvalidThingConfig(f"endpoint name {cfg.name[:40]!r}...: at most {_MAX_EP_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in cfg.name) or "&" in cfg.name:
        raise InvalidThingConfig(f"endpoint name {cfg.name!r} contains control characters or '&'")
    if not isinstance(cfg.owner, str) or not cfg.owner:
        raise InvalidThingConfig(f"thing {cfg.name}: owner must be a non-empty string")
    if not isinstance(cfg.stack, str):
        raise InvalidThingConfig(f"thing {cfg.name}: stack must be a string")
    if cfg.server_uri is not None:
        _validate_server_uri(cfg.name, cfg.server_uri)
    if isinstance(cfg.lifetime, bool) or not isinstance(cfg.lifetime, int) or not 1 <= cfg.lifetime < 2**31:
        raise InvalidThingConfig(f"thing {cfg.name}: lifetime must be a positive integer (seconds)")
    if not isinstance(cfg.binding, str) or not _BINDING_RE.match(cfg.binding):
        raise InvalidThingConfig(
            f"thing {cfg.name}: binding {cfg.binding!r} is not a LwM2M binding (e.g. 'U', 'UQ')"
        )
    ssid = cfg.short_server_id
    if isinstance(ssid, bool) or not isinstance(ssid, int) or not 1 <= ssid <= 65534:
        raise InvalidThingConfig(f"thing {cfg.name}: short_server_id must be 1..65534")
    for path in cfg.deletes:
        try:
            ids = parse_path(path, min_depth=0, max_depth=2)
        except PathError as exc:
            raise InvalidThingConfig(f"thing {cfg.name}: delete {path!r}: {exc}") from None
        if ids == (0, 0):
            raise InvalidThingConfig(f"thing {cfg.name}: /0/0 (the bootstrap account) is never deleted")
    seen: set[tuple[int, ...]] = set()
    for write in cfg.writes:
        if not isinstance(write, ResourceWrite):
            raise InvalidThingConfig(f"thing {cfg.name}: writes must be ResourceWrite values")
        ids = write.ids
        if ids in seen or ids[:3] in seen or any(s[:3] == ids for s in seen):
            raise InvalidThingConfig(f"thing {cfg.name}: {write.path} written twice")
        seen.add(ids)
        if set_from_server_settings(ids):
            raise InvalidThingConfig(
                f"thing {cfg.name}: {write.path} is set from the thing's server settings"
            )


def set_from_server_settings(ids: tuple[int, ...]) -> bool:
    """Whether the resource at `ids` is one the bootstrap writes from the thing's server settings (its URI,
    lifetime, binding), so that a manifest's own bootstrap writes may not set it."""
    if len(ids) < 3 or ids[1] != SECURITY_INSTANCE:
        return False
    return ids[2] in {0: SECURITY_MANAGED_RESOURCES, 1: SERVER_MANAGED_RESOURCES}.get(ids[0], frozenset())


def _validate_server_uri(name: str, uri: str) -> None:
    if not isinstance(uri, str):
        raise InvalidThingConfig(f"thing {name}: server_uri must be a string or None")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidThingConfig(f"thing {name}: server_uri {uri!r}: {exc}") from None
    if (
        parts.scheme not in ("coap", "coaps")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
    ):
        raise InvalidThingConfig(
            f"thing {name}: server_uri {uri!r} must look like coap://host:port (NoSec) or coaps://host:port (PSK)"
        )
    if port == 0:
        raise InvalidThingConfig(f"thing {name}: server_uri {uri!r} has port 0")


def server_uri_for(address: str | None, port: int = 5683) -> str | None:
    """The LwM2M server URI of a VM address (``coap://<address>:<port>``, IPv6 in brackets);
    None while the VM has no address yet (the thing is then waiting for its server)."""
    if not address:
        return None
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"coap://{host}:{port}"


@dataclass(frozen=True)
class ThingRecord:
    """A thing's configuration plus its bootstrap status."""

    config: ThingConfig
    status: str
    updated_at: float | None
    bootstrapped_at: float | None
    client_address: str | None
    written_server_uri: str | None
    error: str | None


@dataclass(frozen=True)
class BootstrapTarget:
    """What the bootstrap server needs for one request: the record and its revision."""

    record: ThingRecord
    revision: int


@dataclass(frozen=True)
class StatusUpdate:
    """A status change computed by the bootstrap server for ``revision`` of a thing's config.
    ``None`` fields other than ``error`` keep their stored value."""

    name: str
    revision: int
    status: str
    at: float = field(default_factory=time.time)
    client_address: str | None = None
    written_server_uri: str | None = None
    bootstrapped_at: float | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in (STATUS_BOOTSTRAPPING, STATUS_BOOTSTRAPPED, STATUS_FAILED):
            raise ValueError(f"the bootstrap server cannot set status {self.status!r}")
