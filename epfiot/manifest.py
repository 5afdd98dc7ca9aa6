"""Manifests: YAML files -> validated desired state (epfiot.model.Desired), or every problem at once.

    desired = load_manifests(["specs/first-vm.yaml", "stacks/", "-"])

Each PATH is a YAML file, a directory (every *.yaml and *.yml below it, in sorted order, hidden entries
skipped) or "-" for standard input. Files may hold several documents (separated by ---); every document and file
merges into one Desired. An empty document is skipped; a file without any document is an error.

Loading happens in three passes, and each pass reports everything it finds:
1. YAML: the text is composed into nodes (libyaml when available) and turned into plain data while the line of
   every mapping key and list item is recorded. Duplicate keys are errors (plain YAML keeps the last one silently).
   The values of name-like fields (name, owner, vendor, id ...) are kept as written, so `vendor: 0403` stays
   "0403" instead of becoming the octal number 259.
2. Schema: each document is checked against schemas/stack.schema.json (JSON Schema 2020-12); each error is mapped
   to file:line and a field path such as vms[1].memory, with a message written for people.
3. Meaning, across all documents: names defined twice (the message names both places), a stack claimed by two
   owners, unknown networks and VMs, overlapping networks, fixed addresses that DHCP could also hand out, limits
   below current values, duplicate LwM2M endpoint names, password sources that cannot be resolved ...

Fixed addresses must lie outside the network's dynamic DHCP range. libvirt would accept a reservation inside the
range, but dnsmasq keeps leases it has already handed out: a VM given that address dynamically before the
reservation existed would keep it, and two VMs would share an address. Outside the range that cannot happen. The
default dynamic range is the upper half of the network (as epfiot.plan.dhcp_range computes it), leaving the lower
half for reservations.

Nothing here touches the host: no libvirt, no CoAP. Passwords are resolved and hashed by epfiot.secrets, so no
plain password is kept in the result or shown in an error.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar
from urllib.parse import urlsplit

import yaml

from epfiot import secrets, units
from epfiot.errors import ManifestError, ManifestProblem
from epfiot.model import (
    Credentials,
    Desired,
    NetworkMode,
    NetworkSpec,
    PowerState,
    ResourceWriteSpec,
    Source,
    StackSpec,
    ThingSpec,
    UsbId,
    UsbSelector,
    VmSpec,
    libvirt_name,
)

if TYPE_CHECKING:  # jsonschema takes a while to import and is needed only for invalid documents
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "stack.schema.json"
STDIN_NAME = "<stdin>"
SUFFIXES = (".yaml", ".yml")
MIN_PREFIX, MAX_PREFIX = 8, 30  # a network needs room for the host, a dynamic range and reservations
# YAML aliases can make a small document expand without bound ("billion laughs"): a document may expand to at
# most this many times its distinct nodes, plus a little.
MAX_EXPANSION, EXPANSION_SLACK = 4, 10_000
MAX_DEPTH = 64

_Loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG = "tag:yaml.org,2002:"
_NULL, _STR, _MERGE, _MAP, _SEQ = (_TAG + t for t in ("null", "str", "merge", "map", "seq"))
_TYPED_TAGS = {_TAG + t for t in ("bool", "int", "float")}
_AS_WRITTEN_TAGS = {_TAG + t for t in ("timestamp", "binary")}  # not JSON types: the schema sees the text
# Fields whose values are text, whatever YAML 1.1 would make of them (0403 -> 259, yes -> True, 1_0 -> 10).
_TEXT_KEYS = frozenset(
    {"name", "stack", "owner", "image", "network", "address", "user", "hostname", "vendor", "product", "id",
     "serial", "vm", "server", "binding", "path", "env", "file", "hash", "password", "start", "end", "cidr"}
)  # fmt: skip
_TEXT_LIST_KEYS = frozenset({"aliases", "ssh_authorized_keys", "delete"})
# Values never repeated in a message: they may hold secrets (a password typed where a mapping was expected,
# a token in user_data ...). Problems there name the field and the line only.
_SENSITIVE_KEYS = frozenset({"credentials", "password", "user_data"})

PathKey = tuple[str | int, ...]
T = TypeVar("T")


# --- public API -------------------------------------------------------------------------------------------


def load_manifests(
    paths: Sequence[str],
    *,
    stdin: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    base_dir: str | Path | None = None,
) -> Desired:
    """Load, validate and merge manifests into one desired state.

    `paths`: files, directories, or "-" for `stdin` (default sys.stdin). `env`: where {env: NAME} passwords are
    looked up (default os.environ). `base_dir`: the directory {file: PATH} passwords of documents read from
    stdin are relative to (default: the current directory); a file's documents use the file's own directory.
    Raises ManifestError with every problem found; nothing else has any effect.
    """
    loader = _Loading(env=os.environ if env is None else env)
    stdin_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    for name, text, directory in _read_sources(paths, stdin, stdin_dir, loader.problems):
        loader.add_text(text, name, directory)
    return loader.finish()


def load_manifest_text(
    text: str,
    filename: str = "<string>",
    *,
    env: Mapping[str, str] | None = None,
    base_dir: str | Path | None = None,
) -> Desired:
    """load_manifests for text already in memory (`filename` is what messages and sources show)."""
    loader = _Loading(env=os.environ if env is None else env)
    loader.add_text(text, filename, Path(base_dir) if base_dir is not None else Path.cwd())
    return loader.finish()


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The manifest JSON Schema (schemas/stack.schema.json)."""
    data: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return data


def default_dhcp_range(cidr: str) -> tuple[str, str]:
    """The dynamic range of a network that declares none: its upper half, up to the address before broadcast.
    The same rule as epfiot.plan.dhcp_range (a test keeps the two in step)."""
    net = ipaddress.IPv4Network(cidr)
    return str(net.network_address + net.num_addresses // 2), str(net.broadcast_address - 1)


def format_path(path: Sequence[str | int]) -> str:
    """("vms", 1, "memory") -> "vms[1].memory"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


# --- reading sources ------------------------------------------------------------------------------------


def _read_sources(
    paths: Sequence[str], stdin: TextIO | None, stdin_dir: Path, problems: list[ManifestProblem]
) -> Iterator[tuple[str, str, Path]]:
    seen: set[str] = set()
    for given in paths:
        if given == "-":
            if "-" not in seen:
                seen.add("-")
                yield STDIN_NAME, (stdin if stdin is not None else sys.stdin).read(), stdin_dir
            continue
        path = Path(given)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*")
                if p.suffix in SUFFIXES and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )  # fmt: skip
            if not files:
                problems.append(ManifestProblem(given, 0, "", "no *.yaml or *.yml files in this directory"))
        elif path.exists():
            files = [path]
        else:
            problems.append(ManifestProblem(given, 0, "", "no such file or directory"))
            continue
        for file in files:
            key = str(file.resolve())
            if key in seen:
                continue
            seen.add(key)
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                problems.append(ManifestProblem(str(file), 0, "", "not UTF-8 text"))
                continue
            except OSError as e:
                problems.append(ManifestProblem(str(file), 0, "", f"cannot read: {e.strerror or e}"))
                continue
            yield str(file), text, file.resolve().parent


# --- YAML -> data with lines ----------------------------------------------------------------------------


@dataclass
class _Document:
    file: str
    directory: Path  # {file: PATH} secrets are relative to it
    start: int  # first line of the document
    data: Any
    lines: dict[PathKey, int]  # line of every mapping key and list item, by field path

    def line(self, path: Sequence[str | int]) -> int:
        key = tuple(path)
        while key:
            found = self.lines.get(key)
            if found is not None:
                return found
            key = key[:-1]
        return self.start


class _TooLarge(Exception):
    pass


@dataclass
class _Composer:
    """Turns composed YAML nodes into plain data, recording lines, flagging duplicate keys and odd tags."""

    file: str
    loader: Any
    problems: list[ManifestProblem]
    lines: dict[PathKey, int] = field(default_factory=dict)
    count: int = 0
    limit: int = 0

    def fail(self, node: yaml.Node, path: PathKey, message: str) -> None:
        self.problems.append(ManifestProblem(self.file, node.start_mark.line + 1, format_path(path), message))

    def value(self, node: yaml.Node, path: PathKey, text: bool = False, depth: int = 0) -> Any:
        self.count += 1
        if self.count > self.limit or depth > MAX_DEPTH:
            raise _TooLarge
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path, text)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                self.fail(node, path, f"unsupported YAML tag {node.tag!r}")
            items = []
            for index, item in enumerate(node.value):
                item_path = (*path, index)
                self.lines[item_path] = item.start_mark.line + 1
                items.append(self.value(item, item_path, text, depth + 1))
            return items
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP:
                self.fail(node, path, f"unsupported YAML tag {node.tag!r}")
            return self.mapping(node, path, depth)
        raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover

    def mapping(self, node: yaml.MappingNode, path: PathKey, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:  # "<<: *defaults": explicit keys win, earlier sources win
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        self.fail(source, path, "a merge (<<) needs a mapping or a list of mappings")
                        continue
                    for key, value in self.mapping(source, path, depth + 1).items():
                        merged.setdefault(key, value)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(key_node, path, "a key must be plain text")
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first_line:
                self.fail(key_node, (*path, key), f"given twice (first at line {first_line[key]})")
                continue
            first_line[key] = line
            key_path = (*path, key)
            self.lines[key_path] = line
            result[key] = self.value(
                value_node, key_path, key in _TEXT_KEYS or key in _TEXT_LIST_KEYS, depth + 1
            )
        for key, value in merged.items():
            result.setdefault(key, value)
        return result

    def scalar(self, node: yaml.ScalarNode, path: PathKey, text: bool) -> Any:
        tag = node.tag
        if tag == _NULL:
            return None
        if text:
            # Names, ids and addresses are one line: "example1\n" (from a | block) would pass a pattern's "$".
            if "\n" in node.value and "password" not in path:
                self.fail(node, path, "must be a single line")
            return node.value
        if tag == _STR or tag in _AS_WRITTEN_TAGS:
            return node.value
        if tag in _TYPED_TAGS:
            return self.loader.yaml_constructors[tag](self.loader, node)
        self.fail(node, path, f"unsupported YAML tag {tag!r}")
        return node.value


def _distinct_nodes(root: yaml.Node) -> int:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack += (key, value)
    return len(seen)


def _parse_yaml(text: str, file: str, directory: Path, problems: list[ManifestProblem]) -> list[_Document]:
    documents: list[_Document] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
                continue  # an empty document
            start = node.start_mark.line + 1
            if not isinstance(node, yaml.MappingNode):
                kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
                problems.append(
                    ManifestProblem(
                        file,
                        start,
                        "",
                        f"a manifest document must be a mapping (version, stack, owner ...), not {kind}",
                    )
                )
                continue
            composer = _Composer(
                file, loader, problems, limit=MAX_EXPANSION * _distinct_nodes(node) + EXPANSION_SLACK
            )
            try:
                data = composer.value(node, ())
            except _TooLarge:
                problems.append(
                    ManifestProblem(
                        file, start, "", "document too large or too deeply nested (YAML aliases?)"
                    )
                )
                continue
            documents.append(_Document(file, directory, start, data, composer.lines))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else 0
        # Only the problem and its context, never the snippet of the line: it could be a password.
        what = "; ".join(str(p) for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p)
        problems.append(ManifestProblem(file, line, "", f"invalid YAML: {what or type(e).__name__}"))
        return []
    finally:
        loader.dispose()
    if not documents and not any(p.file == file for p in problems):
        problems.append(ManifestProblem(file, 0, "", f"no manifest in {file} (it has no document)"))
    return documents


# --- schema errors -> problems --------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


# --- a fast validity check -------------------------------------------------------------------------------
#
# jsonschema is the authority on what is valid and says what is wrong, but it is slow: about 0.4 s for a
# document of 1,000 VMs on the test machines. Almost every document is valid, so each one is first checked by
# the function below, compiled once from the same schema; jsonschema runs only when that check fails (to find
# and explain the errors). The check supports the keywords the schema uses, with jsonschema's semantics
# (integers include 1.0, booleans are not numbers, patterns use re.search); a schema with any other keyword
# disables it. A test compares both on every test manifest and on many mutated documents.

Check = Callable[[Any], bool]
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$defs",
        "title",
        "description",
        "default",
        "examples",
        "errorMessage",
        "patternErrorMessage",
    }
)


class _Unsupported(Exception):
    pass


def _is_type(value: Any, name: str) -> bool:
    if name == "string":
        return isinstance(value, str)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, int | float)
    raise _Unsupported(name)


def _same(a: Any, b: Any) -> bool:
    """JSON equality as jsonschema sees it: true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _keyword(key: str, arg: Any, defs: dict[str, Check]) -> Check:
    """The check of one schema keyword (every check passes values of types the keyword does not apply to)."""
    if key == "$ref":
        if not (isinstance(arg, str) and arg.startswith("#/$defs/")):
            raise _Unsupported(str(arg))
        name = arg.removeprefix("#/$defs/")
        return lambda v: defs[name](v)
    if key == "type":
        kinds: list[str] = [arg] if isinstance(arg, str) else list(arg)
        for kind in kinds:
            _is_type(None, kind)  # an unknown type name fails here, at compile time
        return lambda v: any(_is_type(v, k) for k in kinds)
    if key == "required":
        keys: tuple[str, ...] = tuple(arg)
        return lambda v: not isinstance(v, dict) or all(k in v for k in keys)
    if key == "pattern":
        regex = re.compile(arg)
        return lambda v: not isinstance(v, str) or regex.search(v) is not None
    if key == "enum":
        options: tuple[Any, ...] = tuple(arg)
        return lambda v: any(_same(v, o) for o in options)
    if key == "const":
        return lambda v: _same(v, arg)
    if key in ("minimum", "maximum"):
        bound: float = arg
        low = key == "minimum"
        return lambda v: (
            isinstance(v, bool) or not isinstance(v, int | float) or (v >= bound if low else v <= bound)
        )
    if key == "minLength":
        return lambda v: not isinstance(v, str) or len(v) >= arg
    if key == "minProperties":
        return lambda v: not isinstance(v, dict) or len(v) >= arg
    if key == "maxProperties":
        return lambda v: not isinstance(v, dict) or len(v) <= arg
    if key == "items":
        item = _compile(arg, defs)
        return lambda v: not isinstance(v, list) or all(item(x) for x in v)
    if key in ("oneOf", "anyOf"):
        branches = [_compile(branch, defs) for branch in arg]
        if key == "oneOf":
            return lambda v: sum(1 for branch in branches if branch(v)) == 1
        return lambda v: any(branch(v) for branch in branches)
    if key == "not":
        negated = _compile(arg, defs)
        return lambda v: not negated(v)
    raise _Unsupported(key)


def _compile(node: Any, defs: dict[str, Check]) -> Check:
    if not isinstance(node, dict):
        raise _Unsupported(repr(node))
    checks = [
        _keyword(key, arg, defs)
        for key, arg in node.items()
        if key not in _ANNOTATIONS and key not in ("properties", "additionalProperties")
    ]
    properties = {name: _compile(sub, defs) for name, sub in node.get("properties", {}).items()}
    extra = node.get("additionalProperties", True)
    if extra not in (True, False):
        raise _Unsupported("additionalProperties")
    if properties or extra is False:

        def check_properties(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            for name, value in v.items():
                sub = properties.get(name)
                if sub is None:
                    if extra is False:
                        return False
                elif not sub(value):
                    return False
            return True

        checks.append(check_properties)
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(check(v) for check in checks)


@lru_cache(maxsize=1)
def _fast_check() -> Check:
    """The compiled validity check, or one that always says "ask jsonschema" when it cannot be compiled."""
    root = schema()
    defs: dict[str, Check] = {}
    try:
        for name, sub in root.get("$defs", {}).items():
            defs[name] = _compile(sub, defs)
        return _compile(root, defs)
    except _Unsupported:
        return lambda v: False


_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "nothing",
}


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


def _schema_problems(doc: _Document) -> tuple[list[ManifestProblem], set[PathKey]]:
    """Every schema error of a document, and the paths of the values in error."""
    problems: list[ManifestProblem] = []
    errors: set[PathKey] = set()
    if _fast_check()(doc.data):
        return problems, errors
    for error in _validator().iter_errors(doc.data):
        path: PathKey = tuple(error.absolute_path)
        errors.add(path)
        for where, message in _messages(error, path):
            problems.append(ManifestProblem(doc.file, doc.line(where), format_path(where), message))
    return problems, errors


def _messages(error: ValidationError, path: PathKey) -> list[tuple[PathKey, str]]:
    validator, instance, sub = error.validator, error.instance, error.schema
    expected: Any = error.validator_value
    if not isinstance(sub, dict):  # pragma: no cover - boolean schemas are not used
        return [(path, error.message)]
    if validator == "additionalProperties" and isinstance(instance, dict):
        known = list(sub.get("properties", {}))
        out = []
        for key in instance:
            if key in known:
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known fields: {', '.join(known)})"
            out.append(((*path, key), f"unknown field {key!r}{hint}"))
        return out
    if validator == "required" and isinstance(instance, dict):
        return [(path, f"missing required field {key!r}") for key in expected if key not in instance]
    shown = _shown(instance, path)
    # The schema's own messages (which editors show too) complete "<value> is ...", e.g. "not a valid memory
    # size (...)"; about a mapping, a list or an empty value they stand alone.
    custom = sub.get("patternErrorMessage") if validator == "pattern" else None
    custom = custom or sub.get("errorMessage")
    if custom:
        alone = instance is None or isinstance(instance, dict | list)
        return [(path, custom if alone else f"{shown} is {custom}")]
    if validator == "type":
        types = expected if isinstance(expected, list) else [expected]
        wanted = " or ".join(_TYPE_NAMES.get(str(t), str(t)) for t in types)
        return [(path, f"expected {wanted}, got {shown}")]
    if validator == "enum":
        choices = [str(c) for c in expected]
        close = difflib.get_close_matches(str(instance), choices, n=1) if not _is_sensitive(path) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return [(path, f"{shown} is not one of: {', '.join(choices)}{hint}")]
    if validator == "const":
        return [(path, f"must be {expected!r}, got {shown}")]
    if validator in ("minimum", "exclusiveMinimum"):
        return [(path, f"must be at least {expected}, got {shown}")]
    if validator in ("maximum", "exclusiveMaximum"):
        return [(path, f"must be at most {expected}, got {shown}")]
    if validator == "minLength":
        return [(path, "must not be empty")]
    if validator == "pattern":
        return [(path, f"{shown} does not have the expected form")]
    if _is_sensitive(path):
        return [(path, f"the value is not valid here ({validator})")]
    return [(path, error.message)]


# --- documents -> specs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """A spec's document and path, for problems found after conversion."""

    doc: _Document
    path: PathKey

    def at(self, *more: str | int) -> tuple[str, int, str]:
        full = (*self.path, *more)
        return self.doc.file, self.doc.line(full), format_path(full)

    @property
    def source(self) -> Source:
        return Source(self.doc.file, self.doc.line(self.path))


@dataclass(frozen=True)
class _Declared:
    """An entry with a valid name, and the names it refers to (network: of a VM, vm: of a thing) when valid."""

    owner: str
    name: str
    where: _Where
    refers_to: str | None = None


_KINDS = ("networks", "vms", "things")
_SINGULAR = {"networks": "network", "vms": "VM", "things": "thing"}
_REFERENCE = {"vms": "network", "things": "vm"}


@dataclass
class _Loading:
    env: Mapping[str, str]
    problems: list[ManifestProblem] = field(default_factory=list)
    documents: list[_Document] = field(default_factory=list)

    def add_text(self, text: str, name: str, directory: Path) -> None:
        self.documents.extend(_parse_yaml(text, name, directory, self.problems))

    def fail(self, where: tuple[str, int, str], message: str) -> None:
        self.problems.append(ManifestProblem(*where, message))

    def parse(self, where: _Where, key: str, parser: Callable[[Any], T], value: Any) -> T | None:
        try:
            return parser(value)
        except ValueError as e:
            self.fail(where.at(key), str(e))
            return None

    def finish(self) -> Desired:
        stacks: list[StackSpec] = []
        vms: list[tuple[VmSpec, _Where]] = []
        networks: list[tuple[NetworkSpec, _Where]] = []
        things: list[tuple[ThingSpec, _Where]] = []
        # Every entry whose name is valid, converted or not: duplicates and references are checked on these,
        # so that one mistake in an entry does not hide (or fake) problems elsewhere.
        declared: dict[str, list[_Declared]] = {kind: [] for kind in _KINDS}
        for doc in self.documents:
            schema_problems, errors = _schema_problems(doc)
            self.problems.extend(schema_problems)
            spoiled = {_spoiled_part(path) for path in errors}
            if () in spoiled:
                continue
            owner, stack = doc.data["owner"], doc.data["stack"]
            stacks.append(StackSpec(owner, stack, Source(doc.file, doc.line(("stack",)))))
            for kind in _KINDS:
                if (kind,) in spoiled:
                    continue
                for index, item in enumerate(doc.data.get(kind) or ()):
                    where = _Where(doc, (kind, index))
                    if (
                        isinstance(item, dict)
                        and isinstance(item.get("name"), str)
                        and (kind, index, "name") not in errors
                    ):
                        ref_key = _REFERENCE.get(kind)
                        ref = item.get(ref_key) if ref_key else None
                        valid_ref = isinstance(ref, str) and (kind, index, ref_key) not in errors
                        declared[kind].append(
                            _Declared(owner, item["name"], where, ref if valid_ref else None)
                        )
                    if (kind, index) in spoiled:
                        continue
                    if (
                        kind == "networks"
                        and (network := self.network(item, owner, stack, where)) is not None
                    ):
                        networks.append((network, where))
                    elif kind == "vms" and (vm := self.vm(item, owner, stack, where)) is not None:
                        vms.append((vm, where))
                    elif kind == "things" and (thing := self.thing(item, owner, stack, where)) is not None:
                        things.append((thing, where))
        unique_stacks = self.check_stacks(stacks)
        self.check_duplicates(declared)
        self.check_networks(networks)
        self.check_references(declared)
        self.check_addresses(vms, networks)
        if self.problems:
            raise ManifestError(_unique(self.problems))
        return Desired(
            stacks=tuple(unique_stacks),
            vms=tuple(spec for spec, _ in vms),
            networks=tuple(spec for spec, _ in networks),
            things=tuple(spec for spec, _ in things),
        )

    # --- entries ---

    def network(self, item: dict[str, Any], owner: str, stack: str, where: _Where) -> NetworkSpec | None:
        ok = True
        try:
            net = ipaddress.IPv4Network(item["cidr"])
        except ValueError:
            net = ipaddress.IPv4Network(item["cidr"], strict=False)
            self.fail(where.at("cidr"), f"{item['cidr']!r} has host bits set: the network is {net}")
            ok = False
        if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
            self.fail(
                where.at("cidr"), f"{item['cidr']!r}: the prefix must be /{MIN_PREFIX} to /{MAX_PREFIX}"
            )
            return None
        start = end = None
        dhcp = item.get("dhcp")
        if dhcp is not None:
            start, end = dhcp["start"], dhcp["end"]
            reserved = {net.network_address: "the network address", net.broadcast_address: "the broadcast address",
                        net.network_address + 1: "the host's address"}  # fmt: skip
            for key in ("start", "end"):
                address = ipaddress.IPv4Address(dhcp[key])
                if address not in net:
                    self.fail(where.at("dhcp", key), f"{dhcp[key]} is outside the network {net}")
                    ok = False
                elif address in reserved:
                    self.fail(where.at("dhcp", key), f"{dhcp[key]} is {reserved[address]} of {net}")
                    ok = False
            if ok and ipaddress.IPv4Address(start) > ipaddress.IPv4Address(end):
                self.fail(
                    where.at("dhcp"), f"the range {start} - {end} is empty: start must not come after end"
                )
                ok = False
        if not ok:
            return None
        return NetworkSpec(
            owner=owner,
            stack=stack,
            name=item["name"],
            mode=NetworkMode(item.get("mode", NetworkMode.ROUTE.value)),
            cidr=str(net),
            dhcp_start=start,
            dhcp_end=end,
            source=where.source,
        )

    def vm(self, item: dict[str, Any], owner: str, stack: str, where: _Where) -> VmSpec | None:
        problems_before = len(self.problems)
        memory = self.parse(where, "memory", units.parse_memory_mib, item["memory"])
        max_memory = memory
        if "max_memory" in item:
            max_memory = self.parse(where, "max_memory", units.parse_memory_mib, item["max_memory"])
        vcpu = int(item["vcpu"])  # the schema's integers include 1.0
        max_vcpu = int(item.get("max_vcpu", vcpu))
        if memory is not None and max_memory is not None and memory > max_memory:
            self.fail(
                where.at("memory"),
                f"memory ({units.format_mib(memory)}) is more than max_memory ({units.format_mib(max_memory)})",
            )
        if vcpu > max_vcpu:
            self.fail(where.at("vcpu"), f"vcpu ({vcpu}) is more than max_vcpu ({max_vcpu})")
        timeout = self.parse(
            where, "shutdown_timeout", units.parse_duration, item.get("shutdown_timeout", 60)
        )
        wait = None
        if "wait_for_address" in item:
            wait = self.parse(where, "wait_for_address", units.parse_duration, item["wait_for_address"])
            if wait == 0:
                self.fail(where.at("wait_for_address"), "must be more than 0 (leave it out not to wait)")
        disk = None
        if "disk_size" in item:
            disk = self.parse(where, "disk_size", units.parse_disk_gib, item["disk_size"])
            if "image" not in item:
                self.fail(
                    where.at("disk_size"),
                    "a disk size needs an image: the disk is an overlay of that base image",
                )
        for key in ("address", "wait_for_address"):
            if key in item and "network" not in item:
                self.fail(
                    where.at(key), f"{key} needs network: (without one the VM has no network interface)"
                )
        credentials = None
        if "credentials" in item:
            credentials = self.credentials(item["credentials"], owner, item["name"], where)
        devices = self.devices(item.get("devices") or [], where)
        if len(self.problems) > problems_before:
            return None
        assert memory is not None and max_memory is not None and timeout is not None and devices is not None
        return VmSpec(
            owner=owner,
            stack=stack,
            name=item["name"],
            memory_mib=memory,
            vcpu=vcpu,
            max_memory_mib=max_memory,
            max_vcpu=max_vcpu,
            state=PowerState(item.get("state", PowerState.RUNNING.value)),
            allow_restart=item.get("allow_restart", False),
            shutdown_timeout=timeout,
            image=item.get("image"),
            disk_size_gib=disk,
            network=item.get("network"),
            address=item.get("address"),
            credentials=credentials,
            devices=devices,
            wait_for_address=wait,
            source=where.source,
        )

    def credentials(self, block: dict[str, Any], owner: str, vm: str, where: _Where) -> Credentials | None:
        ok = True
        password_hash = None
        if "password" in block:
            try:
                password_hash = secrets.resolve_password(
                    block["password"],
                    identity=f"{libvirt_name(owner, vm)}:{block['user']}",
                    base_dir=where.doc.directory,
                    env=self.env,
                    allow_literal=block.get("allow_literal_password", False),
                )
            except secrets.SecretError as e:
                self.fail(where.at("credentials", "password"), str(e))
                ok = False
        user_data = block.get("user_data")
        if user_data is not None:
            problem = _cloud_config_problem(user_data)
            if problem:
                self.fail(where.at("credentials", "user_data"), problem)
                ok = False
        if not ok:
            return None
        return Credentials(
            user=block["user"],
            password_hash=password_hash,
            ssh_authorized_keys=tuple(block.get("ssh_authorized_keys", ())),
            hostname=block.get("hostname"),
            user_data=user_data,
        )

    def devices(self, items: list[dict[str, Any]], where: _Where) -> tuple[UsbSelector, ...] | None:
        selectors: list[UsbSelector] = []
        seen: dict[tuple[frozenset[UsbId], str | None, str | None], int] = {}
        ok = True
        for index, item in enumerate(items):
            usb = item["usb"]
            at = ("devices", index, "usb")
            main = (
                UsbId.parse(usb["id"])
                if "id" in usb
                else UsbId(usb["vendor"].lower(), usb["product"].lower())
            )
            aliases: list[UsbId] = []
            for number, text in enumerate(usb.get("aliases", ())):
                alias = UsbId.parse(text)
                if alias == main or alias in aliases:
                    self.fail(
                        where.at(*at, "aliases", number), f"{alias} is already one of this device's ids"
                    )
                    ok = False
                else:
                    aliases.append(alias)
            for usb_id in (main, *aliases):
                if usb_id.vendor == "0000":
                    self.fail(where.at(*at), f"{usb_id}: vendor id 0000 is not a USB vendor")
                    ok = False
            selector = UsbSelector(
                id=main,
                aliases=tuple(aliases),
                serial=usb.get("serial"),
                port=usb.get("port"),
                required=usb.get("required", True),
                source=Source(where.doc.file, where.doc.line((*where.path, "devices", index))),
            )
            identity = (frozenset(selector.ids), selector.serial, selector.port)
            if identity in seen:
                self.fail(
                    where.at("devices", index), f"the same device as devices[{seen[identity]}] ({selector})"
                )
                ok = False
            seen.setdefault(identity, index)
            selectors.append(selector)
        return tuple(selectors) if ok else None

    def thing(self, item: dict[str, Any], owner: str, stack: str, where: _Where) -> ThingSpec | None:
        ok = True
        if "vm" in item and "server" in item:
            self.fail(where.at("server"), "give either vm: or server:, not both")
            ok = False
        if "port" in item and "vm" not in item:
            self.fail(where.at("port"), "port applies to vm: only (a server: URI carries its own port)")
            ok = False
        server = item.get("server")
        if server is not None:
            try:
                port = urlsplit(server).port
            except ValueError:
                port = 0
            if port == 0:
                self.fail(where.at("server"), f"{server!r} has an invalid port (1 to 65535)")
                ok = False
        bootstrap = item.get("bootstrap") or {}
        deletes = tuple(bootstrap.get("delete", ("/0", "/1")))
        seen_deletes: set[str] = set()
        for index, path in enumerate(deletes):
            ids = _lwm2m_ids(path)
            at = where.at("bootstrap", "delete", index)
            if ids is None:
                self.fail(at, f"{path!r}: object and instance ids are at most 65535")
                ok = False
            elif ids == (0, 0):
                self.fail(at, "/0/0 holds the device's own bootstrap account and is never deleted")
                ok = False
            elif path in seen_deletes:
                self.fail(at, f"{path} is deleted twice")
                ok = False
            seen_deletes.add(path)
        writes: list[ResourceWriteSpec] = []
        written: dict[tuple[int, ...], int] = {}
        for index, write in enumerate(bootstrap.get("write", ())):
            at = where.at("bootstrap", "write", index, "path")
            ids = _lwm2m_ids(write["path"])
            problem = None
            if ids is None:
                problem = f"{write['path']!r}: ids are at most 65535"
            elif ids[:2] == (0, 0):
                problem = "instance /0/0 (the device's own bootstrap account) is never written"
            elif ids[:2] in ((0, 1), (1, 1)) and ids[2] in _MANAGED_RESOURCES[ids[0]]:
                problem = f"{write['path']} is set from the thing's server settings (vm:/server:, lifetime, binding)"
            else:
                clash = next(
                    (
                        i
                        for other, i in written.items()
                        if other[:3] == ids[:3] and (len(other) == 3 or len(ids) == 3 or other == ids)
                    ),
                    None,
                )
                if clash is not None:
                    problem = f"{write['path']} is already written by bootstrap.write[{clash}]"
                written[ids] = index
            value = write["value"]
            if isinstance(value, float) and not math.isfinite(value):
                problem = problem or "the value must be a finite number"
            elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
                problem = problem or "the value does not fit in a 64-bit integer"
            if problem:
                self.fail(at, problem)
                ok = False
            writes.append(ResourceWriteSpec(write["path"], value))
        if not ok:
            return None
        return ThingSpec(
            owner=owner,
            stack=stack,
            name=item["name"],
            vm=item.get("vm"),
            server=server,
            port=int(item.get("port", 5683)),
            lifetime=int(item.get("lifetime", 300)),
            binding=item.get("binding", "U"),
            deletes=deletes,
            writes=tuple(writes),
            source=where.source,
        )

    # --- across documents ---

    def check_stacks(self, stacks: list[StackSpec]) -> list[StackSpec]:
        first: dict[str, StackSpec] = {}
        unique: list[StackSpec] = []
        for spec in stacks:
            other = first.get(spec.name)
            if other is None:
                first[spec.name] = spec
                unique.append(spec)
            elif other.owner != spec.owner:
                self.problems.append(ManifestProblem(
                    spec.source.file, spec.source.line, "stack",
                    f"stack {spec.name!r} belongs to owner {other.owner!r} ({other.source}), not {spec.owner!r}: "
                    "a stack has one owner; give this one another name",
                ))  # fmt: skip
        return unique

    def check_duplicates(self, declared: dict[str, list[_Declared]]) -> None:
        for kind, entries in declared.items():
            first: dict[tuple[str, str], _Declared] = {}
            for entry in entries:
                # VM and network names are per owner; endpoint names are unique on the whole host.
                key = ("", entry.name) if kind == "things" else (entry.owner, entry.name)
                other = first.setdefault(key, entry)
                if other is entry:
                    continue
                if kind == "things":
                    message = (
                        f"endpoint name {entry.name!r} is already used by a thing of owner {other.owner!r} "
                        f"({other.where.source}): endpoint names are unique on the host"
                    )
                else:
                    message = (
                        f"{_SINGULAR[kind]} {entry.name!r} of owner {entry.owner!r} is defined twice: "
                        f"here and at {other.where.source}"
                    )
                self.fail(entry.where.at("name"), message)

    def check_networks(self, networks: list[tuple[NetworkSpec, _Where]]) -> None:
        ordered = sorted(networks, key=lambda pair: ipaddress.IPv4Network(pair[0].cidr).network_address)
        widest: tuple[NetworkSpec, ipaddress.IPv4Network] | None = None
        for spec, where in ordered:
            net = ipaddress.IPv4Network(spec.cidr)
            if widest is not None and net.overlaps(widest[1]):
                other = widest[0]
                self.fail(
                    where.at("cidr"),
                    f"{spec.cidr} overlaps network {other.owner}/{other.name} ({other.cidr}, {other.source})",
                )
            if widest is None or net.broadcast_address > widest[1].broadcast_address:
                widest = (spec, net)

    def check_references(self, declared: dict[str, list[_Declared]]) -> None:
        """A VM's network and a thing's VM are declared by the same owner in the loaded manifests."""
        for kind, target_kind, field_name in (("vms", "networks", "network"), ("things", "vms", "vm")):
            known = {(d.owner, d.name) for d in declared[target_kind]}
            for entry in declared[kind]:
                if entry.refers_to is None or (entry.owner, entry.refers_to) in known:
                    continue
                names = sorted(n for o, n in known if o == entry.owner)
                what = _SINGULAR[target_kind]
                hint = (
                    f"{what}s of {entry.owner}: {', '.join(names)}"
                    if names
                    else f"{entry.owner} declares no {what}"
                )
                self.fail(
                    entry.where.at(field_name),
                    f"no {what} {entry.refers_to!r} of owner {entry.owner!r} in these manifests ({hint})",
                )

    def check_addresses(
        self, vms: list[tuple[VmSpec, _Where]], networks: list[tuple[NetworkSpec, _Where]]
    ) -> None:
        """Fixed addresses: inside their network, not its network, broadcast or host address, outside its
        dynamic DHCP range, and each used once."""
        layouts = {(spec.owner, spec.name): _Layout.of(spec) for spec, _ in networks}
        taken: dict[str, VmSpec] = {}
        for spec, where in vms:
            if spec.address is None or spec.network is None:
                continue
            layout = layouts.get((spec.owner, spec.network))
            if layout is None:
                continue  # an unknown or invalid network: reported already
            address = ipaddress.IPv4Address(spec.address)
            problem = layout.problem(address, spec.network)
            if problem is None and spec.address in taken:
                other = taken[spec.address]
                problem = (
                    f"{address} is already the address of VM {other.owner}/{other.name} ({other.source})"
                )
            if problem:
                self.fail(where.at("address"), problem)
            else:
                taken[spec.address] = spec


@dataclass(frozen=True)
class _Layout:
    """A network's addresses: the host takes the first; DHCP hands out [start, end]."""

    net: ipaddress.IPv4Network
    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address

    @classmethod
    def of(cls, spec: NetworkSpec) -> _Layout:
        start, end = (
            (spec.dhcp_start, spec.dhcp_end)
            if spec.dhcp_start and spec.dhcp_end
            else default_dhcp_range(spec.cidr)
        )
        return cls(ipaddress.IPv4Network(spec.cidr), ipaddress.IPv4Address(start), ipaddress.IPv4Address(end))

    def problem(self, address: ipaddress.IPv4Address, name: str) -> str | None:
        net = self.net
        if address not in net:
            return f"{address} is outside network {name} ({net})"
        if address == net.network_address:
            return f"{address} is the network address of {net}"
        if address == net.broadcast_address:
            return f"{address} is the broadcast address of {net}"
        if address == net.network_address + 1:
            return f"{address} is the host's own address on {name}"
        if self.start <= address <= self.end:
            return (
                f"{address} is inside the dynamic DHCP range {self.start} - {self.end} of {name}: pick a fixed "
                "address outside it (DHCP could already have leased it to another VM)"
            )
        return None


def _spoiled_part(path: PathKey) -> PathKey:
    """What a schema error at `path` spoils: an entry ("vms", 1), a whole list ("vms",), or the document ()."""
    return path[:2] if path and path[0] in _KINDS else ()


_MANAGED_RESOURCES = {0: frozenset({0, 1, 2, 10}), 1: frozenset({0, 1, 6, 7})}  # as epfiot.lwm2m.registry


def _lwm2m_ids(path: str) -> tuple[int, ...] | None:
    ids = tuple(int(part) for part in path.strip("/").split("/") if part)
    return ids if all(i <= 65535 for i in ids) else None


def _cloud_config_problem(text: str) -> str | None:
    """Why `text` is not a cloud-config mapping, without repeating any of it; None when it is one."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        # Not even the parser's problem: it can quote the text ("found undefined alias 'x'").
        mark = getattr(e, "problem_mark", None)
        return "not valid YAML" + (f" (line {mark.line + 1} of the text)" if mark is not None else "")
    if data is not None and not isinstance(data, dict):
        return "must be a cloud-config mapping (keys such as packages:, runcmd:, write_files:)"
    return None


def _unique(problems: list[ManifestProblem]) -> list[ManifestProblem]:
    return list(dict.fromkeys(problems))
