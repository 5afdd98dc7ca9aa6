"""Bootstrap-Request parsing and the write plan (no CoAP involved), and the one module that reaches into
aiocoap."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import epfiot.lwm2m
from epfiot.lwm2m.codec import CF_LWM2M_TLV, CF_SENML_JSON, decode_senml, decode_tlv, tlv_instance_resources
from epfiot.lwm2m.protocol import (
    FINISH,
    BadRequest,
    BootstrapRequest,
    Forbidden,
    parse_bootstrap_query,
    plan_bootstrap,
)
from epfiot.registry import ResourceWrite, ThingConfig


def thing(**kw: object) -> ThingConfig:
    base: dict[str, object] = dict(
        name="sensor-1", owner="alice", stack="plant", vm="gw", server_uri="coap://10.0.0.5:5683"
    )
    base.update(kw)
    return ThingConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (("ep=sensor-1",), BootstrapRequest("sensor-1", None)),
        (("ep=sensor-1", "pct=110"), BootstrapRequest("sensor-1", 110)),
        (("pct=11542", "ep=a=b"), BootstrapRequest("a=b", 11542)),
        (("ep=x", "lwm2m=1.1", "b=U"), BootstrapRequest("x", None)),  # unknown parameters are ignored
    ],
)
def test_bootstrap_query(query: tuple[str, ...], expected: BootstrapRequest) -> None:
    assert parse_bootstrap_query(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        (),
        ("ep=",),
        ("ep=a", "ep=b"),
        ("ep=a", "pct=110", "pct=110"),
        ("ep=a", "pct=json"),
        ("ep=a", "pct=99999999"),
        ("ep=a", "pct=-1"),
        ("ep",),
        ("pct=110",),
        ("ep=a", "flag"),
    ],
)
def test_bad_bootstrap_queries(query: tuple[str, ...]) -> None:
    with pytest.raises(BadRequest) as info:
        parse_bootstrap_query(query)
    assert info.value.code == (4, 0)


def test_content_format_follows_the_client() -> None:
    assert BootstrapRequest("a", None).content_format == CF_LWM2M_TLV
    assert BootstrapRequest("a", 110).content_format == CF_SENML_JSON
    assert BootstrapRequest("a", 11542).content_format == CF_LWM2M_TLV
    assert BootstrapRequest("a", 112).content_format == CF_LWM2M_TLV  # SenML-CBOR not produced: TLV


def test_plan_order_and_payloads_tlv() -> None:
    plan = plan_bootstrap(thing(), CF_LWM2M_TLV)
    assert [op.describe() for op in plan] == ["DELETE /0", "DELETE /1", "PUT /0/1", "PUT /1/1", "POST /bs"]
    assert plan[-1] == FINISH and plan[-1].payload == b""
    security = tlv_instance_resources(decode_tlv(plan[2].payload))
    assert security == {0: b"coap://10.0.0.5:5683", 1: b"\x00", 2: b"\x03", 10: b"\x01"}
    assert plan[3].payload == b"\xc1\x00\x01\xc2\x01\x01\x2c\xc1\x06\x00\xc1\x07\x55"
    assert {op.content_format for op in plan[2:4]} == {CF_LWM2M_TLV}


def test_plan_senml_and_settings() -> None:
    plan = plan_bootstrap(thing(lifetime=60, binding="UQ", short_server_id=7), CF_SENML_JSON)
    assert decode_senml(plan[2].payload) == {
        "/0/1/0": "coap://10.0.0.5:5683",
        "/0/1/1": False,
        "/0/1/2": 3,
        "/0/1/10": 7,
    }
    assert decode_senml(plan[3].payload) == {"/1/1/0": 7, "/1/1/1": 60, "/1/1/6": False, "/1/1/7": "UQ"}
    assert json.loads(plan[3].payload)[0]["bn"] == "/1/1/"


def test_extra_writes_are_grouped_per_instance_in_order_after_the_server_accounts() -> None:
    writes = (
        ResourceWrite("/31024/0/1", "x"),
        ResourceWrite("/3/0/14", "+02"),
        ResourceWrite("/31024/0/2", 5),
        ResourceWrite("/1/1/2", 10),  # joins the Server instance write
        ResourceWrite("/3/0/6/1", 1),
    )
    plan = plan_bootstrap(thing(deletes=("/",), writes=writes), CF_SENML_JSON)
    assert [op.describe() for op in plan] == [
        "DELETE /",
        "PUT /0/1",
        "PUT /1/1",
        "PUT /31024/0",
        "PUT /3/0",
        "POST /bs",
    ]
    assert decode_senml(plan[2].payload)["/1/1/2"] == 10
    assert decode_senml(plan[3].payload) == {"/31024/0/1": "x", "/31024/0/2": 5}
    assert decode_senml(plan[4].payload) == {"/3/0/14": "+02", "/3/0/6/1": 1}
    assert all("/0/0" not in op.path for op in plan)


def test_no_deletes_and_waiting_things() -> None:
    assert next(op.describe() for op in plan_bootstrap(thing(deletes=()), CF_LWM2M_TLV)) == "PUT /0/1"
    with pytest.raises(Forbidden):
        plan_bootstrap(thing(server_uri=None), CF_LWM2M_TLV)


def test_only_one_module_reaches_into_aiocoap() -> None:
    """Everything beyond aiocoap's stable API (Context, Message) is in epfiot/lwm2m/aiocoap_compat.py (and
    aiocoap_dtls.py, its part for CoAP over DTLS)."""
    internals = re.compile(
        r"request_interfaces|token_interface|message_interface|datagram_msg_received|_recent_messages"
        r"|aiocoap\.(pipe|transports|tokenmanager|messagemanager|interfaces)|\.sockaddr|\.pktinfo"
    )
    package = Path(epfiot.lwm2m.__file__).parent
    offenders = {
        f"{path.name}:{number}"
        for path in package.glob("*.py")
        if path.name not in ("aiocoap_compat.py", "aiocoap_dtls.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if internals.search(line)
    }
    assert offenders == set()
