"""epfiot explain: manifest fields described from schemas/stack.schema.json, and its errors."""

from __future__ import annotations

import json

import pytest

from epfiot.cli import main
from epfiot.desired.schema import schema


def explain(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["explain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_field_shows_title_description_type_default_and_limits(capsys: pytest.CaptureFixture[str]) -> None:
    vm = schema()["$defs"]["vm"]["properties"]
    code, out, _ = explain(capsys, "vms.memory")
    assert code == 0
    assert out.startswith("FIELD: vms.memory <integer | string>\nTITLE: Memory\n")
    assert "Memory of the VM" in out and "FORMAT: Memory size" in out  # the field's words, then its type's
    assert "LIMITS: minimum 1, maximum 16777216" in out
    code, out, _ = explain(capsys, "vms[0].shutdown_timeout")
    assert code == 0 and f"DEFAULT: {vm['shutdown_timeout']['default']}" in out
    code, out, _ = explain(capsys, "vms.vcpu", "-o", "json")
    found = json.loads(out)
    assert (found["title"], found["type"], found["limits"]) == (vm["vcpu"]["title"], "integer", {"minimum": 1, "maximum": 1024})


def test_a_list_or_object_lists_its_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, "vms", "-o", "json")
    fields = {f["name"]: f for f in json.loads(out)["fields"]}
    assert code == 0 and set(fields) == set(schema()["$defs"]["vm"]["properties"])
    assert fields["memory"]["required"] and not fields["image"]["required"]
    code, out, _ = explain(capsys, "vms")
    assert "FIELDS:" in out and "\n  memory " in out and "(required)" in out
    code, out, _ = explain(capsys)
    assert code == 0 and "vms " in out and "things " in out
    code, out, _ = explain(capsys, "vms.devices.usb.id")  # through a list of devices and a $ref
    assert code == 0 and "LIMITS: pattern ^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$" in out


def test_an_unknown_path_names_the_valid_next_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = explain(capsys, "vms.memroy")
    assert code == 2 and not out
    assert "error: explain vms.memroy: vms has no field 'memroy'; its fields: address, allow_restart," in err
    assert "memory" in err and "Traceback" not in err
    code, _, err = explain(capsys, "vm")
    assert code == 2 and "a manifest has no field 'vm'; its fields: networks, owner, stack, things, version, vms" in err
    code, _, err = explain(capsys, "vms.memory.unit")
    assert code == 2 and "vms.memory is a single value, it has no field 'unit'" in err
