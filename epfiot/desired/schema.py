"""The manifest JSON Schema (schemas/stack.schema.json, draft 2020-12) and its one validator.

The schema file is the single statement of what a document may hold: `epfiot schema` prints it, editors use
it, and jsonschema-rs (a compiled validator: about a millisecond for a document of 1,000 VMs) checks every
document against it. The validator's findings come out as Violations, in epfiot's terms: the field path of
the value, the keyword it breaks, and the schema object that holds the keyword (where the messages of
epfiot.desired.messages find the schema's own wording: errorMessage, patternErrorMessage,
maximumErrorMessage).

Limits that the schema states for numbers (the largest memory and disk sizes) hold for sizes written with a
unit too: the meaning checks convert those and compare them with the same `maximum` (see limit()).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema_rs import Draft202012Validator

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "stack.schema.json"
HOST_SCHEMA_PATH = SCHEMA_PATH.with_name("host.schema.json")  # the host configuration (epfiot.hostconfig)

PathKey = tuple[str | int, ...]


@dataclass(frozen=True)
class Violation:
    """One way a document breaks the schema."""

    path: PathKey  # of the value in error, e.g. ("vms", 1, "memory")
    keyword: str  # "type", "pattern", "required", "additionalProperties" ...
    rule: dict[str, Any]  # the schema object holding the keyword (after following $ref)


@dataclass(frozen=True)
class Limit:
    """The largest value of a schema definition, and the schema's words for a value above it."""

    maximum: int
    message: str  # completes "<value> is ..."


@lru_cache(maxsize=2)
def schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """A JSON Schema of epfiot's: the manifest's (schemas/stack.schema.json) unless told otherwise."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@lru_cache(maxsize=2)
def _validator(path: Path) -> Draft202012Validator:
    import jsonschema_rs  # imported on first use: commands that load no manifest do not pay for it

    return jsonschema_rs.Draft202012Validator(schema(path))


def violations(data: Any, path: Path = SCHEMA_PATH) -> Iterator[Violation]:
    """Every violation of the schema at `path` by `data` (plain JSON-like data: dict, list, str, int, float,
    bool, None)."""
    root = schema(path)
    for error in _validator(path).iter_errors(data):
        # schema_path is where the keyword is in the schema file, references already followed
        # (["$defs", "vm", "properties", "vcpu", "minimum"]): the rule is the object holding it.
        *where, keyword = error.schema_path
        rule: Any = root
        for step in where:
            rule = rule[step]
        yield Violation(tuple(error.instance_path), str(keyword), rule)


@cache
def limit(definition: str) -> Limit:
    """The maximum of $defs/`definition` ("memorySize", "diskSize") and its maximumErrorMessage."""
    rule = schema()["$defs"][definition]
    return Limit(int(rule["maximum"]), str(rule["maximumErrorMessage"]))
