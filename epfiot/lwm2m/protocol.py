"""The client-initiated bootstrap exchange, independent of the CoAP library.

* :func:`parse_bootstrap_query` turns the Uri-Query of ``POST /bs`` into a
  :class:`BootstrapRequest` or raises a typed :class:`ProtocolError` (which the server turns
  into a CoAP error response);
* :func:`plan_bootstrap` turns a :class:`~epfiot.registry.ThingConfig` into the ordered
  list of operations the bootstrap server sends (deletes, Security /0/1, Server /1/1, extra
  writes grouped per object instance), each with its payload already encoded for the
  client's content format.

This module does not import aiocoap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epfiot.lwm2m.codec import (
    CF_LWM2M_TLV,
    CF_LWM2M_TLV_LEGACY,
    CF_SENML_JSON,
    ResourceKey,
    Value,
    encode_senml_resources,
    encode_tlv_resources,
)
from epfiot.psk import PskCredential
from epfiot.registry import SECURITY_INSTANCE, ThingConfig
from epfiot.registry.paths import format_path, parse_path

SECURITY_MODE_PSK = 0
SECURITY_MODE_NOSEC = 3

SUPPORTED_FORMATS = (CF_LWM2M_TLV, CF_SENML_JSON)


class ProtocolError(Exception):
    """A request the bootstrap server refuses. ``code`` is the CoAP response code as
    (class, detail), e.g. (4, 4) for 4.04 Not Found; ``reason`` is for logs and events."""

    code: tuple[int, int] = (4, 0)

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(ProtocolError):
    code = (4, 0)


class Forbidden(ProtocolError):
    code = (4, 3)


class NotFound(ProtocolError):
    code = (4, 4)


class MethodNotAllowed(ProtocolError):
    code = (4, 5)


class ServiceUnavailable(ProtocolError):
    code = (5, 3)


@dataclass(frozen=True)
class BootstrapRequest:
    endpoint: str
    preferred_format: int | None  # the client's pct, if it sent one

    @property
    def content_format(self) -> int:
        """Content format of the writes: SenML-JSON when asked for (pct=110), TLV otherwise
        (no pct: LwM2M 1.0; TLV is also the fallback for formats this server cannot produce)."""
        return CF_SENML_JSON if self.preferred_format == CF_SENML_JSON else CF_LWM2M_TLV


def parse_bootstrap_query(query: Sequence[str]) -> BootstrapRequest:
    """Parse the Uri-Query options of a Bootstrap-Request (``ep=<name>`` and optionally
    ``pct=<content format>``). Unknown parameters are ignored; a missing, empty or repeated
    ``ep``, a repeated or non-numeric ``pct`` and parameters without ``=`` are bad requests."""
    endpoint: str | None = None
    pct: int | None = None
    seen_pct = False
    for item in query:
        key, sep, value = item.partition("=")
        if not sep:
            raise BadRequest(f"malformed query parameter {item[:32]!r}")
        if key == "ep":
            if endpoint is not None:
                raise BadRequest("repeated ep parameter")
            if not value:
                raise BadRequest("empty ep parameter")
            endpoint = value
        elif key == "pct":
            if seen_pct:
                raise BadRequest("repeated pct parameter")
            seen_pct = True
            if not value.isascii() or not value.isdigit() or len(value) > 5 or int(value) > 0xFFFF:
                raise BadRequest("pct is not a content format number")
            pct = int(value)
    if endpoint is None:
        raise BadRequest("missing ep parameter")
    return BootstrapRequest(endpoint, pct)


def is_tlv(content_format: int) -> bool:
    return content_format in (CF_LWM2M_TLV, CF_LWM2M_TLV_LEGACY)


@dataclass(frozen=True)
class Operation:
    """One request of the bootstrap exchange, as sent by the bootstrap server."""

    method: str  # "DELETE" | "PUT" | "POST"
    path: str
    payload: bytes = b""
    content_format: int | None = None

    @property
    def uri_path(self) -> tuple[str, ...]:
        return tuple(p for p in self.path.split("/") if p)

    def describe(self) -> str:
        return f"{self.method} {self.path}"


FINISH = Operation("POST", "/bs")


def security_resources(
    config: ThingConfig, server_psk: PskCredential | None = None
) -> dict[ResourceKey, Value]:
    """Security object instance /0/1: server URI, not a bootstrap server, the security mode, short id;
    with a PSK (mode 0, the server URI is then ``coaps://``) also the identity (resource 3, "Public Key or
    Identity") and the key (resource 5, "Secret Key"), both Opaque."""
    assert config.server_uri is not None
    if server_psk is None:
        return {0: config.server_uri, 1: False, 2: SECURITY_MODE_NOSEC, 10: config.short_server_id}
    return {
        0: config.server_uri,
        1: False,
        2: SECURITY_MODE_PSK,
        3: server_psk.identity.encode("utf-8"),
        5: server_psk.key,
        10: config.short_server_id,
    }


def server_resources(config: ThingConfig) -> dict[ResourceKey, Value]:
    """Server object instance /1/1: short id, lifetime, notification storing off, binding."""
    return {0: config.short_server_id, 1: config.lifetime, 6: False, 7: config.binding}


def encode_instance(content_format: int, obj: int, inst: int, resources: dict[ResourceKey, Value]) -> bytes:
    if content_format == CF_SENML_JSON:
        return encode_senml_resources(f"/{obj}/{inst}/", resources)
    return encode_tlv_resources(resources)


def plan_bootstrap(
    config: ThingConfig, content_format: int, server_psk: PskCredential | None = None
) -> list[Operation]:
    """The operations of one bootstrap, in order, ending with Bootstrap-Finish. ``server_psk`` is the
    credential of the thing's LwM2M server (its server URI is then ``coaps://``)."""
    if config.server_uri is None:
        raise Forbidden("thing is waiting for its server")
    if (server_psk is not None) != config.server_uri.startswith("coaps://"):
        raise Forbidden("a coaps:// server needs a pre-shared key, and a key a coaps:// server")
    fmt = CF_SENML_JSON if content_format == CF_SENML_JSON else CF_LWM2M_TLV

    # object instances to write, in order: our two, then extra writes in order of first use
    instances: dict[tuple[int, int], dict[ResourceKey, Value]] = {
        (0, SECURITY_INSTANCE): security_resources(config, server_psk),
        (1, SECURITY_INSTANCE): server_resources(config),
    }
    for write in config.writes:
        ids = parse_path(write.path, min_depth=3, max_depth=4)
        key: ResourceKey = ids[2] if len(ids) == 3 else (ids[2], ids[3])
        instances.setdefault((ids[0], ids[1]), {})[key] = write.value
    if server_psk is not None:  # a write of /0/1/3 or /0/1/5 (allowed for NoSec) never replaces the key
        instances[(0, SECURITY_INSTANCE)].update(security_resources(config, server_psk))

    ops = [Operation("DELETE", path) for path in config.deletes]
    for (obj, inst), resources in instances.items():
        ops.append(
            Operation("PUT", format_path((obj, inst)), encode_instance(fmt, obj, inst, resources), fmt)
        )
    ops.append(FINISH)
    return ops
