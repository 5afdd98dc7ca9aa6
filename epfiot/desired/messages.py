"""Schema violations -> problems for people: file:line, field path, and a message in plain words.

    vms[0].memroy: unknown field 'memroy' (did you mean 'memory'?)
    vms[1].memory: 'lots' is not a valid memory size (use e.g. 512MiB, 1GiB, or a whole number of MiB)

The schema's own messages (which editors show too) come first: `<keyword>ErrorMessage` (patternErrorMessage,
maximumErrorMessage) for that keyword, else errorMessage for any keyword of the object. They complete
"<value> is ..."; about a mapping, a list or an empty value they stand alone. Otherwise the message is made
from the keyword and its value in the schema.

Values of sensitive fields (credentials, password, user_data) are never repeated: a password typed where a
mapping was expected, a token in user_data ... Problems there name the field and the line only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epfiot.desired.nodes import Document, PathKey, format_path
from epfiot.desired.schema import SCHEMA_PATH, Violation, violations
from epfiot.errors import ManifestProblem

_SENSITIVE_KEYS = frozenset({"credentials", "password", "user_data"})
_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "nothing",
}


@dataclass
class CheckedDocument:
    """A document and the paths of its values that break the schema (none: the document is valid)."""

    doc: Document
    errors: set[PathKey] = field(default_factory=set)


def check_document(doc: Document, problems: list[ManifestProblem], schema_path: Path = SCHEMA_PATH) -> CheckedDocument:
    """Checks `doc` against the schema (the manifest's unless told otherwise), adding a problem for each violation, except about fields whose YAML
    had a problem already (a multi-line name, a value of an unsupported tag): one mistake, one message."""
    checked = CheckedDocument(doc)
    for violation in violations(doc.data, schema_path):
        checked.errors.add(violation.path)
        for where, message in explain(violation, _value_at(doc.data, violation.path)):
            if where not in doc.flagged:
                problems.append(ManifestProblem(doc.file, doc.line(where), format_path(where), message))
    return checked


def explain(violation: Violation, value: Any) -> list[tuple[PathKey, str]]:
    """The problems one violation makes: (field path, message) pairs (an unknown-field violation names each
    unknown field, a missing-fields one each missing field)."""
    path, keyword, rule = violation.path, violation.keyword, violation.rule
    expected: Any = rule.get(keyword)
    if keyword == "additionalProperties" and isinstance(value, dict):
        known = list(rule.get("properties", {}))
        out = []
        for key in value:
            if key in known:
                continue
            import difflib  # only a bad document needs suggestions

            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known fields: {', '.join(known)})"
            out.append(((*path, key), f"unknown field {key!r}{hint}"))
        return out
    if keyword == "required" and isinstance(value, dict):
        return [(path, f"missing required field {key!r}") for key in expected if key not in value]
    shown = _shown(value, path)
    custom = rule.get(f"{keyword}ErrorMessage") or rule.get("errorMessage")
    if custom:
        alone = value is None or isinstance(value, dict | list)
        return [(path, custom if alone else f"{shown} is {custom}")]
    return [(path, _message(keyword, expected, value, shown, path))]


def _message(keyword: str, expected: Any, value: Any, shown: str, path: PathKey) -> str:
    if keyword == "type":
        types = expected if isinstance(expected, list) else [expected]
        return f"expected {' or '.join(_TYPE_NAMES.get(str(t), str(t)) for t in types)}, got {shown}"
    if keyword == "enum":
        choices = [str(c) for c in expected]
        import difflib

        close = difflib.get_close_matches(str(value), choices, n=1) if not _is_sensitive(path) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{shown} is not one of: {', '.join(choices)}{hint}"
    if keyword == "const":
        return f"must be {expected!r}, got {shown}"
    if keyword in ("minimum", "exclusiveMinimum"):
        return f"must be at least {expected}, got {shown}"
    if keyword in ("maximum", "exclusiveMaximum"):
        return f"must be at most {expected}, got {shown}"
    if keyword == "minLength":
        return "must not be empty"
    if keyword == "pattern":
        return f"{shown} does not have the expected form"
    if _is_sensitive(path):
        return f"the value is not valid here (schema keyword {keyword})"
    return f"{shown} is not valid here (schema keyword {keyword})"


def _value_at(data: Any, path: PathKey) -> Any:
    for step in path:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return None  # not reached: the validator reports paths of the data it was given
    return data


def _is_sensitive(path: Sequence[str | int]) -> bool:
    return any(part in _SENSITIVE_KEYS for part in path)


def _shown(value: Any, path: Sequence[str | int]) -> str:
    if _is_sensitive(path):
        return "the value"
    if value is None:
        return "an empty value"
    text = (
        repr(value)
        if not isinstance(value, dict | list)
        else ("a mapping" if isinstance(value, dict) else "a list")
    )
    return text if len(text) <= 60 else text[:57] + "..."
