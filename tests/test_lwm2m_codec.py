"""TLV and SenML-JSON codecs, checked against payloads a real LwM2M client accepted
(/work/shared/docs/lwm2m-bootstrap.md), in both directions."""

from __future__ import annotations

import json
import struct

import pytest

from epfiot.lwm2m.codec import (
    TLV_MULTIPLE_RESOURCE,
    TLV_OBJECT_INSTANCE,
    TLV_RESOURCE_INSTANCE,
    TLV_RESOURCE_VALUE,
    CodecError,
    decode_senml,
    decode_tlv,
    encode_senml_resources,
    encode_tlv_resources,
    tlv_entry,
    tlv_instance_resources,
    tlv_to_bool,
    tlv_to_float,
    tlv_to_int,
    tlv_to_str,
    tlv_value_bytes,
)

# Security /0/1: 0 URI, 1 bootstrap-server false, 2 security mode 3 (NoSec), 10 short server id 1
SECURITY_TLV = (
    b"\xc8\x00\x15" + b"coap://127.0.0.1:5693" + b"\xc1\x01\x00" + b"\xc1\x02\x03" + b"\xc1\x0a\x01"
)
SECURITY = {0: "coap://127.0.0.1:5693", 1: False, 2: 3, 10: 1}
# Server /1/1: 0 short server id 1, 1 lifetime 300, 6 notification storing false, 7 binding "U"
SERVER_TLV = b"\xc1\x00\x01" + b"\xc2\x01\x01\x2c" + b"\xc1\x06\x00" + b"\xc1\x07\x55"
SERVER = {0: 1, 1: 300, 6: False, 7: "U"}

SECURITY_SENML = (
    b'[{"bn":"/0/1/","n":"0","vs":"coap://host:5683"},{"n":"1","vb":false},{"n":"10","v":1},{"n":"2","v":3}]'
)
SERVER_SENML = b'[{"bn":"/1/1/","n":"0","v":1},{"n":"1","v":300},{"n":"6","vb":false},{"n":"7","vs":"U"}]'


def test_tlv_security_instance_matches_the_accepted_bytes() -> None:
    assert encode_tlv_resources(SECURITY) == SECURITY_TLV


def test_tlv_server_instance_matches_the_accepted_bytes() -> None:
    assert encode_tlv_resources(SERVER) == SERVER_TLV


def test_tlv_decodes_the_accepted_bytes() -> None:
    security = tlv_instance_resources(decode_tlv(SECURITY_TLV))
    assert tlv_to_str(security[0]) == "coap://127.0.0.1:5693"
    assert tlv_to_bool(security[1]) is False
    assert tlv_to_int(security[2]) == 3
    assert tlv_to_int(security[10]) == 1
    server = tlv_instance_resources(decode_tlv(SERVER_TLV))
    assert (tlv_to_int(server[0]), tlv_to_int(server[1]), tlv_to_bool(server[6]), tlv_to_str(server[7])) == (
        1,
        300,
        False,
        "U",
    )


def test_senml_security_and_server_match_the_accepted_strings() -> None:
    assert encode_senml_resources("/0/1/", {**SECURITY, 0: "coap://host:5683"}) == SECURITY_SENML
    assert encode_senml_resources("/1/1/", SERVER) == SERVER_SENML


def test_senml_decodes_the_accepted_strings() -> None:
    assert decode_senml(SECURITY_SENML) == {
        "/0/1/0": "coap://host:5683",
        "/0/1/1": False,
        "/0/1/10": 1,
        "/0/1/2": 3,
    }
    assert decode_senml(SERVER_SENML) == {"/1/1/0": 1, "/1/1/1": 300, "/1/1/6": False, "/1/1/7": "U"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x00\x80"),
        (-1, b"\xff"),
        (-129, b"\xff\x7f"),
        (32768, b"\x00\x00\x80\x00"),
        (2**31, b"\x00\x00\x00\x00\x80\x00\x00\x00"),
        (-(2**63), b"\x80" + b"\x00" * 7),
        (True, b"\x01"),
        (False, b"\x00"),
        ("é", "é".encode()),
        (1.5, struct.pack(">d", 1.5)),
    ],
)
def test_tlv_values_use_the_shortest_lwm2m_encoding(value: int | bool | str | float, expected: bytes) -> None:
    assert tlv_value_bytes(value) == expected


def test_tlv_integer_round_trip_and_float_widths() -> None:
    for value in (0, 1, -1, 255, 256, -32768, 2**40, -(2**63), 2**63 - 1):
        assert tlv_to_int(tlv_value_bytes(value)) == value
    assert tlv_to_float(struct.pack(">f", 0.5)) == 0.5
    assert tlv_to_float(tlv_value_bytes(-2.25)) == -2.25
    with pytest.raises(CodecError):
        tlv_value_bytes(2**63)
    with pytest.raises(CodecError):
        tlv_value_bytes(float("nan"))
    with pytest.raises(CodecError):
        tlv_to_int(b"\x00\x00\x00")


def test_tlv_lengths_and_identifiers_choose_their_field_sizes() -> None:
    assert tlv_entry(TLV_RESOURCE_VALUE, 5, b"1234567")[:2] == b"\xc7\x05"  # length in the type byte
    assert tlv_entry(TLV_RESOURCE_VALUE, 5, b"x" * 8)[:3] == b"\xc8\x05\x08"  # 8-bit length
    assert tlv_entry(TLV_RESOURCE_VALUE, 5, b"x" * 256)[:4] == b"\xd0\x05\x01\x00"  # 16-bit length
    assert tlv_entry(TLV_RESOURCE_VALUE, 5, b"x" * 65536)[:5] == b"\xd8\x05\x01\x00\x00"  # 24-bit length
    assert tlv_entry(TLV_RESOURCE_VALUE, 300, b"")[:3] == b"\xe0\x01\x2c"  # 16-bit identifier
    for size in (0, 7, 8, 255, 256, 65535, 65536):
        (entry,) = decode_tlv(tlv_entry(TLV_RESOURCE_VALUE, 300, b"y" * size))
        assert (entry.kind, entry.identifier, len(entry.value)) == (TLV_RESOURCE_VALUE, 300, size)


def test_tlv_multiple_resources_and_instance_wrapping() -> None:
    payload = encode_tlv_resources({14: "+02", (6, 0): 1, (6, 1): 5})
    entries = decode_tlv(payload)
    assert [e.kind for e in entries] == [TLV_MULTIPLE_RESOURCE, TLV_RESOURCE_VALUE]
    assert [c.kind for c in entries[0].children] == [TLV_RESOURCE_INSTANCE, TLV_RESOURCE_INSTANCE]
    flat = tlv_instance_resources(entries)
    assert {k: v for k, v in flat.items()} == {(6, 0): b"\x01", (6, 1): b"\x05", 14: b"+02"}
    # the same resources wrapped in an object-instance entry decode to the same values
    wrapped = decode_tlv(tlv_entry(TLV_OBJECT_INSTANCE, 0, payload))
    assert wrapped[0].kind == TLV_OBJECT_INSTANCE and tlv_instance_resources(wrapped) == flat


@pytest.mark.parametrize(
    "garbage",
    [b"\xc8\x00", b"\xc8\x00\x05abc", b"\xe1\x01", b"\x08\x00\x02\xc1", b"\x88\x00\x03\xc1\x00\x01"],
)
def test_tlv_truncated_or_misnested_payloads_are_errors(garbage: bytes) -> None:
    with pytest.raises(CodecError):
        decode_tlv(garbage)


def test_tlv_rejects_a_resource_both_single_and_multiple() -> None:
    with pytest.raises(CodecError):
        encode_tlv_resources({6: 1, (6, 0): 1})


def test_senml_values_names_and_types() -> None:
    payload = encode_senml_resources("/3/0/", {14: "+02", (6, 1): 5, 13: 1.5, 20: True})
    records = json.loads(payload)
    assert records[0]["bn"] == "/3/0/"
    assert [r["n"] for r in records] == ["13", "14", "20", "6/1"]
    assert decode_senml(payload) == {"/3/0/14": "+02", "/3/0/6/1": 5, "/3/0/13": 1.5, "/3/0/20": True}


def test_senml_decoder_accepts_base_names_opaque_and_skips_valueless_records() -> None:
    payload = b'[{"bn":"/5/0/","n":"0","vd":"AQI"},{"n":"1","vlo":"3:0"},{"bn":"/6/0/"},{"n":"1","v":-1.5}]'
    assert decode_senml(payload) == {"/5/0/0": b"\x01\x02", "/5/0/1": "3:0", "/6/0/1": -1.5}


@pytest.mark.parametrize(
    "garbage",
    [b"not json", b"{}", b"[1]", b'[{"n":1,"v":1}]', b'[{"n":"1","v":"x"}]', b'[{"n":"1","vb":1}]', b"\xff"],
)
def test_senml_garbage_is_an_error(garbage: bytes) -> None:
    with pytest.raises(CodecError):
        decode_senml(garbage)


def test_senml_refuses_non_finite_numbers() -> None:
    with pytest.raises(CodecError):
        encode_senml_resources("/3/0/", {13: float("inf")})
