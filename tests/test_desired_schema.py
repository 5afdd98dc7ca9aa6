"""The manifest schema (schemas/stack.schema.json): valid itself, every field documented, in step with the unit
parsers; every way of breaking it said in words at a line; the example stacks of specs/ load and name it."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from test_manifest import DATA, REPO, SPECS, SPECS_ENV

from epfiot import units
from epfiot.addressing import dhcp_range
from epfiot.desired import SCHEMA_PATH, format_path, load_manifest_text, load_manifests, schema
from epfiot.errors import ManifestError
from epfiot.model import NetworkMode, NetworkSpec, PowerState, UsbId
from epfiot.secrets import sha512_crypt

# --- the schema itself ----------------------------------------------------------------------------------


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema_rs.meta.validate(schema())
    assert schema()["$id"]


def _objects(node: Any, path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            found.append((path, node))
        for key, value in node.items():
            found += _objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _objects(value, f"{path}/{index}")
    return found


def test_every_object_refuses_unknown_fields_and_every_field_is_documented() -> None:
    root = schema()
    defs = root["$defs"]
    for path, node in _objects(root):
        if "properties" not in node:
            continue
        assert node.get("additionalProperties") is False, path
        for name, prop in node["properties"].items():
            target = defs[prop["$ref"].rsplit("/", 1)[1]] if "$ref" in prop else {}
            for key in ("title", "description"):
                assert prop.get(key) or target.get(key), f"{path}/properties/{name} has no {key}"


def test_schema_patterns_agree_with_the_unit_parsers() -> None:
    defs = schema()["$defs"]
    assert defs["memorySize"]["pattern"] == units.SIZE_PATTERN == defs["diskSize"]["pattern"]
    assert defs["duration"]["pattern"] == units.DURATION_PATTERN


@pytest.mark.parametrize(
    ("cidr", "declared", "dynamic"),
    [
        ("10.128.0.0/24", None, ("10.128.0.128", "10.128.0.254")),
        ("10.0.0.0/8", None, ("10.128.0.0", "10.255.255.254")),
        ("192.168.7.0/30", None, ("192.168.7.2", "192.168.7.2")),
        ("172.16.4.0/22", None, ("172.16.6.0", "172.16.7.254")),
        ("10.128.0.0/24", ("10.128.0.100", "10.128.0.150"), ("10.128.0.100", "10.128.0.150")),
    ],
)
def test_the_dynamic_range_is_the_upper_half_unless_declared(
    cidr: str, declared: tuple[str, str] | None, dynamic: tuple[str, str]
) -> None:
    start, end = declared or (None, None)
    assert dhcp_range(NetworkSpec("o", "s", "n", NetworkMode.ROUTE, cidr, start, end)) == dynamic


def test_format_path() -> None:
    assert format_path(()) == ""
    assert format_path(("vms", 1, "memory")) == "vms[1].memory"
    assert format_path(("vms", 0, "devices", 2, "usb", "aliases", 0)) == "vms[0].devices[2].usb.aliases[0]"


# --- every way of breaking the schema has words, at a line ---------------------------------------------


def _documents() -> list[Any]:
    docs: list[Any] = []
    for path in [*SPECS, *sorted((DATA / "bad").rglob("*.yaml")), *sorted((DATA / "good").rglob("*.yaml"))]:
        try:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError:
            continue
    return docs


_ODD_VALUES: list[Any] = [None, True, False, 0, 1, -1, 1.0, 1.5, "", "x", "64MiB", "1-2", [], [1], {}, {"env": "X"}, 65536]


def _mutate(doc: Any, rng: random.Random) -> Any:
    doc = copy.deepcopy(doc)
    containers: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            containers.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            containers.append(node)
            for value in node:
                walk(value)

    walk(doc)
    target = rng.choice(containers)
    if isinstance(target, dict) and target:
        key = rng.choice(list(target))
        action = rng.randrange(3)
        if action == 0:
            target[key] = rng.choice(_ODD_VALUES)
        elif action == 1:
            del target[key]
        else:
            target[key + rng.choice(["", "x"])] = rng.choice(_ODD_VALUES)
    elif isinstance(target, list) and target:
        target[rng.randrange(len(target))] = rng.choice(_ODD_VALUES)
    return doc


def test_mutated_documents_give_problems_in_words_at_their_lines() -> None:
    rng = random.Random(1)
    documents = _documents()
    assert len(documents) > 20
    samples = documents + [_mutate(rng.choice(documents), rng) for _ in range(500)]
    invalid = 0
    for sample in samples:
        try:
            load_manifest_text(yaml.safe_dump(sample, sort_keys=False), "m.yaml", env={})  # no password to hash
        except ManifestError as e:
            invalid += 1
            for problem in e.problems:
                assert problem.line >= 1 and problem.message, problem
                assert "schema keyword" not in problem.message, problem  # the generic fallback: no words
    assert 50 < invalid < len(samples) - 20  # both outcomes are exercised


# --- specs/ ---------------------------------------------------------------------------------------------


def test_there_are_example_stacks() -> None:
    assert {p.name for p in SPECS} >= {"first-vm.yaml", "private-network.yaml", "coral.yaml", "things.yaml", "full-stack.yaml"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_every_spec_loads_and_names_the_schema(spec: Path) -> None:
    first = spec.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/stack.schema.json"
    assert (spec.parent / "../schemas/stack.schema.json").resolve() == SCHEMA_PATH
    desired = load_manifests([str(spec)], env=SPECS_ENV)
    assert desired.stacks and (desired.vms or desired.things)
    # tests/stacks.spec_for_tenant rewrites "owner: NAME" to give each test its own tenant
    for document in yaml.safe_load_all(spec.read_text()):
        assert f"owner: {document['owner']}" in spec.read_text()


def test_all_specs_load_side_by_side() -> None:
    desired = load_manifests([str(REPO / "specs")], env=SPECS_ENV)
    owners = [s.owner for s in desired.stacks]
    assert len(owners) == len(set(owners)) == len(SPECS)


def test_the_original_use_cases() -> None:
    first = load_manifests([str(REPO / "specs" / "first-vm.yaml")], env={})
    (vm,) = first.vms
    assert (vm.owner, vm.name, vm.state, vm.image, vm.network, vm.credentials) == ("charlie", "example1", PowerState.RUNNING, None, None, None)
    assert 64 <= vm.memory_mib <= 128

    net = load_manifests([str(REPO / "specs" / "private-network.yaml")], env={})
    assert [(n.cidr, n.mode) for n in net.networks] == [("10.129.0.0/24", NetworkMode.ROUTE)]
    assert len(net.vms) == 2 and all(v.address and v.image is None for v in net.vms)

    coral = load_manifests([str(REPO / "specs" / "coral.yaml")], env={})
    lent = [v for v in coral.vms if v.devices]
    assert len(coral.vms) == 2 and len(lent) == 1
    assert set(lent[0].devices[0].ids) == {UsbId("18d1", "9302"), UsbId("1a6e", "089a")}

    things = load_manifests([str(REPO / "specs" / "things.yaml")], env={})
    assert [(t.name, t.vm) for t in things.things] == [("sensor-1", "example2")]


def test_the_full_stack_spec_password_hash_is_what_its_comment_says() -> None:
    desired = load_manifests([str(REPO / "specs" / "full-stack.yaml")], env={})
    creds = next(v.credentials for v in desired.vms if v.credentials)
    assert creds is not None and creds.password_hash == sha512_crypt("epfiot-demo", "epfiotdemosalt")


# --- units --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mib"),
    [(64, 64), ("64", 64), ("512MiB", 512), ("1GiB", 1024), ("1.5GiB", 1536), ("2048KiB", 2), ("1Gi", 1024), ("512M", 512), ("1T", 1048576)],
)
def test_memory_sizes(text: object, mib: int) -> None:
    assert units.parse_memory_mib(text) == mib


@pytest.mark.parametrize("text", ["lots", "0", "0MiB", "1KiB", "1.3MiB", "512MB", "1GB", True, None, 1.5, -1])
def test_bad_memory_sizes(text: object) -> None:
    with pytest.raises(ValueError, match=r"memory size|whole number|ambiguous"):
        units.parse_memory_mib(text)


@pytest.mark.parametrize(("text", "gib"), [(10, 10), ("10GiB", 10), ("1TiB", 1024), ("2048MiB", 2)])
def test_disk_sizes(text: object, gib: int) -> None:
    assert units.parse_disk_gib(text) == gib


@pytest.mark.parametrize("text", ["512MiB", "0GiB", "ten"])
def test_bad_disk_sizes(text: object) -> None:
    with pytest.raises(ValueError, match=r"disk size|whole number"):
        units.parse_disk_gib(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(60, 60.0), (2.5, 2.5), ("60", 60.0), ("60s", 60.0), ("2m", 120.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("1d", 86400.0), ("0s", 0.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert units.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1s", "1 m", "m", -1, True, None, "1.s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        units.parse_duration(text)


def test_format_helpers() -> None:
    assert [units.format_mib(m) for m in (64, 1024, 1536, 2048)] == ["64MiB", "1GiB", "1536MiB", "2GiB"]
    assert units.format_seconds(90.0) == "90s"

