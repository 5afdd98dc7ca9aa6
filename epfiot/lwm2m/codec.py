"""LwM2M payload codecs used by the bootstrap server: OMA-TLV (11542) and SenML-JSON (110).

Only what bootstrap needs: single-value resources, multiple-instance resources and object
instances, with the value types a manifest can express (str, int, float, bool) on the encoding
side, and a lossless tree of raw values on the TLV decoding side (TLV carries no type
information; the reader has to know the object model).

This module does not import aiocoap.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# CoAP content-format numbers
CF_LINK_FORMAT = 40
CF_SENML_JSON = 110
CF_SENML_CBOR = 112
CF_LWM2M_TLV = 11542
CF_LWM2M_TLV_LEGACY = 1542
CF_LWM2M_JSON_LEGACY = 1543

Value = str | int | float | bool | bytes
"""A resource value; bytes are Opaque (the identity and key of a PSK Security object instance)."""

# TLV identifier types (bits 7-6 of the type byte)
TLV_OBJECT_INSTANCE = 0b00
TLV_RESOURCE_INSTANCE = 0b01
TLV_MULTIPLE_RESOURCE = 0b10
TLV_RESOURCE_VALUE = 0b11

_MAX_ID = 0xFFFF
_MAX_LENGTH = 0xFFFFFF


class CodecError(ValueError):
    """A payload could not be encoded or decoded."""


# --------------------------------------------------------------------------------------------
# Resource addressing inside one object instance
# --------------------------------------------------------------------------------------------

ResourceKey = int | tuple[int, int]
"""A resource inside an object instance: its id, or (resource id, resource instance id)."""


def _check_id(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ID:
        raise CodecError(f"{what} must be an integer 0..65535, got {value!r}")
    return value


def _group_resources(
    resources: Mapping[ResourceKey, Value],
) -> list[tuple[int, Value | dict[int, Value]]]:
    """Group (resource, instance) keys into multiple resources, ordered by resource id."""
    grouped: dict[int, Value | dict[int, Value]] = {}
    for key, value in resources.items():
        if isinstance(key, tuple):
            rid, riid = key
            _check_id(rid, "resource id")
            _check_id(riid, "resource instance id")
            current = grouped.setdefault(rid, {})
            if not isinstance(current, dict):
                raise CodecError(f"resource {rid} given both as a single value and as instances")
            current[riid] = value
        else:
            _check_id(key, "resource id")
            if key in grouped:
                raise CodecError(f"resource {key} given both as a single value and as instances")
            grouped[key] = value
    return sorted(grouped.items(), key=lambda item: item[0])


# --------------------------------------------------------------------------------------------
# OMA-TLV
# --------------------------------------------------------------------------------------------


def tlv_value_bytes(value: Value) -> bytes:
    """The TLV value bytes of a scalar: UTF-8 string, shortest signed big-endian integer
    (1, 2, 4 or 8 bytes), 8-byte IEEE-754 float, 1-byte boolean, Opaque bytes as they are."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        for size in (1, 2, 4, 8):
            try:
                return value.to_bytes(size, "big", signed=True)
            except OverflowError:
                continue
        raise CodecError(f"integer {value} does not fit in 64 bits")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CodecError(f"float {value} cannot be written")
        return struct.pack(">d", value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise CodecError(f"unsupported value type {type(value).__name__}")


def tlv_entry(kind: int, identifier: int, value: bytes) -> bytes:
    """One TLV entry (type byte, identifier, length, value)."""
    _check_id(identifier, "TLV identifier")
    length = len(value)
    if length > _MAX_LENGTH:
        raise CodecError("TLV value longer than 2**24-1 bytes")
    type_byte = kind << 6
    header = bytearray()
    if identifier > 0xFF:
        type_byte |= 0x20
        id_bytes = identifier.to_bytes(2, "big")
    else:
        id_bytes = identifier.to_bytes(1, "big")
    if length < 8:
        type_byte |= length
        len_bytes = b""
    elif length <= 0xFF:
        type_byte |= 0x08
        len_bytes = length.to_bytes(1, "big")
    elif length <= 0xFFFF:
        type_byte |= 0x10
        len_bytes = length.to_bytes(2, "big")
    else:
        type_byte |= 0x18
        len_bytes = length.to_bytes(3, "big")
    header.append(type_byte)
    header += id_bytes
    header += len_bytes
    return bytes(header) + value


def encode_tlv_resources(resources: Mapping[ResourceKey, Value]) -> bytes:
    """The TLV payload of an object instance write: its resources, in resource id order,
    without an enclosing object-instance entry."""
    out = bytearray()
    for rid, value in _group_resources(resources):
        if isinstance(value, dict):
            inner = b"".join(
                tlv_entry(TLV_RESOURCE_INSTANCE, riid, tlv_value_bytes(v))
                for riid, v in sorted(value.items())
            )
            out += tlv_entry(TLV_MULTIPLE_RESOURCE, rid, inner)
        else:
            out += tlv_entry(TLV_RESOURCE_VALUE, rid, tlv_value_bytes(value))
    return bytes(out)


@dataclass(frozen=True)
class TlvEntry:
    """A decoded TLV entry. ``value`` holds the raw bytes of a resource (instance) value;
    ``children`` the nested entries of an object instance or multiple resource."""

    kind: int
    identifier: int
    value: bytes = b""
    children: tuple[TlvEntry, ...] = ()

    @property
    def is_container(self) -> bool:
        return self.kind in (TLV_OBJECT_INSTANCE, TLV_MULTIPLE_RESOURCE)


def decode_tlv(data: bytes) -> list[TlvEntry]:
    """Decode a TLV payload into entries (nested for object instances and multiple resources)."""
    entries: list[TlvEntry] = []
    pos = 0
    size = len(data)
    while pos < size:
        type_byte = data[pos]
        pos += 1
        kind = type_byte >> 6
        id_len = 2 if type_byte & 0x20 else 1
        len_type = (type_byte >> 3) & 0x03
        if pos + id_len + len_type > size:
            raise CodecError("truncated TLV header")
        identifier = int.from_bytes(data[pos : pos + id_len], "big")
        pos += id_len
        if len_type == 0:
            length = type_byte & 0x07
        else:
            length = int.from_bytes(data[pos : pos + len_type], "big")
            pos += len_type
        if pos + length > size:
            raise CodecError("truncated TLV value")
        value = data[pos : pos + length]
        pos += length
        if kind in (TLV_OBJECT_INSTANCE, TLV_MULTIPLE_RESOURCE):
            children = tuple(decode_tlv(value))
            expected = TLV_RESOURCE_INSTANCE if kind == TLV_MULTIPLE_RESOURCE else None
            for child in children:
                if expected is not None and child.kind != expected:
                    raise CodecError("a multiple resource may only contain resource instances")
                if expected is None and child.kind not in (TLV_RESOURCE_VALUE, TLV_MULTIPLE_RESOURCE):
                    raise CodecError("an object instance may only contain resources")
            entries.append(TlvEntry(kind, identifier, b"", children))
        else:
            entries.append(TlvEntry(kind, identifier, bytes(value)))
    return entries


def tlv_to_int(raw: bytes) -> int:
    if len(raw) not in (1, 2, 4, 8):
        raise CodecError(f"TLV integer of {len(raw)} bytes")
    return int.from_bytes(raw, "big", signed=True)


def tlv_to_float(raw: bytes) -> float:
    if len(raw) == 4:
        return float(struct.unpack(">f", raw)[0])
    if len(raw) == 8:
        return float(struct.unpack(">d", raw)[0])
    raise CodecError(f"TLV float of {len(raw)} bytes")


def tlv_to_bool(raw: bytes) -> bool:
    if raw not in (b"\x00", b"\x01"):
        raise CodecError(f"TLV boolean {raw!r}")
    return raw == b"\x01"


def tlv_to_str(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError("TLV string is not UTF-8") from exc


def tlv_instance_resources(entries: Sequence[TlvEntry]) -> dict[ResourceKey, bytes]:
    """Flatten the entries of one object instance (with or without the enclosing
    object-instance entry) into ``{resource id or (id, instance): raw bytes}``."""
    if len(entries) == 1 and entries[0].kind == TLV_OBJECT_INSTANCE:
        entries = entries[0].children
    out: dict[ResourceKey, bytes] = {}
    for entry in entries:
        if entry.kind == TLV_RESOURCE_VALUE:
            out[entry.identifier] = entry.value
        elif entry.kind == TLV_MULTIPLE_RESOURCE:
            for child in entry.children:
                out[(entry.identifier, child.identifier)] = child.value
        else:
            raise CodecError("expected the resources of one object instance")
    return out


# --------------------------------------------------------------------------------------------
# SenML-JSON (RFC 8428, as profiled by LwM2M 1.1)
# --------------------------------------------------------------------------------------------


def _senml_value(value: Value) -> tuple[str, Value]:
    if isinstance(value, bytes):  # RFC 8428: base64url without padding
        return "vd", base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")
    if isinstance(value, bool):
        return "vb", value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise CodecError(f"float {value} cannot be written")
        return "v", value
    if isinstance(value, str):
        return "vs", value
    raise CodecError(f"unsupported value type {type(value).__name__}")


def _resource_name(key: ResourceKey) -> str:
    return f"{key[0]}/{key[1]}" if isinstance(key, tuple) else str(key)


def encode_senml_resources(base: str, resources: Mapping[ResourceKey, Value]) -> bytes:
    """SenML-JSON records for the resources of one object instance, e.g.
    ``[{"bn":"/1/1/","n":"0","v":1},{"n":"1","v":300}]``. The base name ``base`` ends with a
    slash; records are ordered by name."""
    records: list[dict[str, Any]] = []
    items = sorted(((_resource_name(k), k, v) for k, v in resources.items()), key=lambda item: item[0])
    for name, key, value in items:
        if isinstance(key, tuple):
            _check_id(key[0], "resource id")
            _check_id(key[1], "resource instance id")
        else:
            _check_id(key, "resource id")
        field, senml_value = _senml_value(value)
        record: dict[str, Any] = {}
        if not records:
            record["bn"] = base
        record["n"] = name
        record[field] = senml_value
        records.append(record)
    return json.dumps(records, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


SenmlValue = str | int | float | bool | bytes


def decode_senml(data: bytes) -> dict[str, SenmlValue]:
    """Decode a SenML-JSON pack into ``{full name: value}`` (base names resolved; ``vd`` decoded
    from base64url to bytes, ``vlo`` kept as a string)."""
    try:
        records = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CodecError("SenML payload is not JSON") from exc
    if not isinstance(records, list):
        raise CodecError("SenML payload is not an array")
    out: dict[str, SenmlValue] = {}
    base_name = ""
    for record in records:
        if not isinstance(record, dict):
            raise CodecError("SenML record is not an object")
        if "bn" in record:
            if not isinstance(record["bn"], str):
                raise CodecError("SenML bn is not a string")
            base_name = record["bn"]
        name = record.get("n", "")
        if not isinstance(name, str):
            raise CodecError("SenML n is not a string")
        full = base_name + name
        value: SenmlValue
        if "v" in record:
            value = record["v"]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CodecError("SenML v is not a number")
        elif "vs" in record:
            value = record["vs"]
            if not isinstance(value, str):
                raise CodecError("SenML vs is not a string")
        elif "vb" in record:
            value = record["vb"]
            if not isinstance(value, bool):
                raise CodecError("SenML vb is not a boolean")
        elif "vd" in record:
            raw = record["vd"]
            if not isinstance(raw, str):
                raise CodecError("SenML vd is not a string")
            try:
                value = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            except ValueError as exc:
                raise CodecError("SenML vd is not base64url") from exc
        elif "vlo" in record:
            value = record["vlo"]
            if not isinstance(value, str):
                raise CodecError("SenML vlo is not a string")
        else:
            continue  # a record without a value (e.g. only base fields)
        out[full] = value
    return out
