"""Pre-shared keys: the key rules, the key file (mode 0600, never in repr), and the Security object
instance the bootstrap writes for a coaps:// server (LwM2M security mode 0)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from epfiot.lwm2m.codec import CF_LWM2M_TLV, CF_SENML_JSON, decode_tlv, tlv_instance_resources
from epfiot.lwm2m.protocol import Forbidden, plan_bootstrap
from epfiot.psk import (
    InvalidKey,
    PskCredential,
    ThingKeys,
    key_file_path,
    parse_psk_key,
    read_key_file,
    write_key_file,
)
from epfiot.registry import ResourceWrite, ThingConfig

KEY = bytes(range(16))


def test_keys_are_read_as_hex_or_base64_and_checked_for_length() -> None:
    assert parse_psk_key(KEY.hex()) == KEY
    assert parse_psk_key(KEY.hex().upper()) == KEY
    assert parse_psk_key(base64.b64encode(bytes(32)).decode()) == bytes(32)
    for short in (bytes(15).hex(), base64.b64encode(bytes(65)).decode()):
        with pytest.raises(InvalidKey, match="16 to 64 bytes"):
            parse_psk_key(short)
    with pytest.raises(InvalidKey, match="hex or base64") as info:
        parse_psk_key("not a key at all!")
    assert "not a key" not in str(info.value)


def test_a_credential_shows_no_key() -> None:
    cred = PskCredential("thing-1", KEY)
    assert KEY.hex() not in repr(cred) and repr(KEY) not in repr(cred)
    assert cred.digest.startswith("sha256:") and KEY.hex() not in cred.digest
    assert cred.digest != PskCredential("thing-1", bytes(16)).digest
    with pytest.raises(InvalidKey):
        PskCredential("", KEY)
    with pytest.raises(InvalidKey):
        PskCredential("id", b"short")


def test_the_key_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = key_file_path(tmp_path / "things.db")
    keys = {"t1": ThingKeys(bootstrap=PskCredential("t1", KEY), server=PskCredential("t1-s", bytes(64)))}
    write_key_file(path, keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == keys
    assert read_key_file(tmp_path / "none.keys") == {}
    os.chmod(path, 0o644)
    with pytest.raises(InvalidKey, match="0600"):
        read_key_file(path)


def _config(uri: str, **kw: object) -> ThingConfig:
    return ThingConfig(name="t1", owner="o", stack="s", vm=None, server_uri=uri, **kw)  # type: ignore[arg-type]


def test_a_coaps_server_is_written_with_security_mode_0_identity_and_key() -> None:
    cred = PskCredential("t1-at-server", KEY)
    plan = plan_bootstrap(_config("coaps://192.0.2.1:5684"), CF_LWM2M_TLV, cred)
    security = next(op for op in plan if op.path == "/0/1")
    res = tlv_instance_resources(decode_tlv(security.payload))
    assert res[0] == b"coaps://192.0.2.1:5684"
    assert res[2] == b"\x00"  # PSK
    assert res[3] == b"t1-at-server" and res[5] == KEY
    senml = next(
        op for op in plan_bootstrap(_config("coaps://h:5684"), CF_SENML_JSON, cred) if op.path == "/0/1"
    )
    assert b'"vd":"' + base64.urlsafe_b64encode(KEY).rstrip(b"=") + b'"' in senml.payload


def test_a_write_of_the_identity_or_key_never_replaces_the_credential() -> None:
    writes = (ResourceWrite("/0/1/3", "other"), ResourceWrite("/0/1/5", "other"))
    plan = plan_bootstrap(_config("coaps://h:5684", writes=writes), CF_LWM2M_TLV, PskCredential("id", KEY))
    res = tlv_instance_resources(decode_tlv(next(op for op in plan if op.path == "/0/1").payload))
    assert res[3] == b"id" and res[5] == KEY


def test_coaps_needs_a_key_and_a_key_needs_coaps() -> None:
    with pytest.raises(Forbidden):
        plan_bootstrap(_config("coaps://h:5684"), CF_LWM2M_TLV)
    with pytest.raises(Forbidden):
        plan_bootstrap(_config("coap://h:5683"), CF_LWM2M_TLV, PskCredential("id", KEY))


def test_a_bootstrap_key_is_what_the_bootstrap_servers_dtls_takes() -> None:
    with pytest.raises(InvalidKey, match="16 bytes"):
        ThingKeys(bootstrap=PskCredential("t1", bytes(32)))
    with pytest.raises(InvalidKey, match="at most 32 bytes"):
        ThingKeys(bootstrap=PskCredential("t" * 33, KEY))
    assert ThingKeys(server=PskCredential("t" * 100, bytes(64))).server is not None
