"""YAML text -> documents of plain data that remember the line of every mapping key and list item.

The text is composed into nodes (libyaml when available), then turned into data by the composer below rather
than by PyYAML's constructor, because manifests need more than plain YAML gives:
- lines: every mapping key and list item records its line, by field path, for file:line messages;
- duplicate keys are errors (plain YAML keeps the last one silently);
- the values of name-like fields (name, owner, vendor, id ...) are kept as written, so `vendor: 0403` stays
  "0403" instead of becoming the octal number 259;
- tags other than the JSON types are refused (!!timestamp and !!binary are kept as text, for the schema);
- the work is bounded. Aliases (*name) and merge keys (<<) share nodes, so a few hundred bytes can stand for
  billions of values, and an alias inside its own anchor for an endless structure. Before a document becomes
  data, its expansion is measured on the node graph, each shared node once (ExpansionBudget), and a
  document that would grow past what its text and the load's allowance permit is refused at the line where
  it does. Nesting is limited to MAX_DEPTH.

Every problem has a line (1-based) and says what is wrong in words; none repeats the text around it, which
could be a password.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from epfiot.desired.sources import SourceText
from epfiot.errors import ManifestProblem
from epfiot.model import Source

PathKey = tuple[str | int, ...]

Loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_DEPTH = 64
# The documents of one load may expand (through aliases and merge keys) to this many values more than their
# text has characters: plenty for sharing defaults among thousands of entries, milliseconds of work for a bomb.
EXPANSION_ALLOWANCE = 100_000

_TAG = "tag:yaml.org,2002:"
_NULL, _STR, _MERGE, _MAP, _SEQ = (_TAG + t for t in ("null", "str", "merge", "map", "seq"))
_TYPED_TAGS = {_TAG + t: t for t in ("bool", "int", "float")}
_AS_WRITTEN_TAGS = {_TAG + t for t in ("timestamp", "binary")}  # not JSON types: the schema sees the text
# Fields whose values are text, whatever YAML 1.1 would make of them (0403 -> 259, yes -> True, 1_0 -> 10).
_TEXT_KEYS = frozenset(
    {"name", "stack", "owner", "image", "network", "address", "user", "hostname", "vendor", "product", "id",
     "serial", "vm", "server", "binding", "path", "env", "file", "hash", "password", "start", "end", "cidr"}
)  # fmt: skip
_TEXT_LIST_KEYS = frozenset({"aliases", "ssh_authorized_keys", "delete"})
_TYPE_WORDS = {"bool": "true or false", "int": "a whole number", "float": "a number"}


def format_path(path: Sequence[str | int]) -> str:
    """("vms", 1, "memory") -> "vms[1].memory"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass
class Document:
    """One YAML document of a manifest, as plain data."""

    file: str
    directory: Path  # {file: PATH} secrets are relative to it
    start: int  # first line of the document
    data: Any
    lines: dict[PathKey, int]  # line of every mapping key and list item, by field path
    flagged: set[PathKey] = field(default_factory=set)  # fields with a YAML problem (reported already)
    manifest: str = ""  # the file relative to its root (SourceText.manifest)

    def line(self, path: Sequence[str | int]) -> int:
        """The line of `path`, or of the nearest enclosing field that has one."""
        key = tuple(path)
        while key:
            found = self.lines.get(key)
            if found is not None:
                return found
            key = key[:-1]
        return self.start


@dataclass(frozen=True)
class Where:
    """An entry's document and field path: the place of problems found in it."""

    doc: Document
    path: PathKey

    def at(self, *more: str | int) -> tuple[str, int, str]:
        """file, line and field path of a field below this entry (ManifestProblem's first three fields)."""
        full = (*self.path, *more)
        return self.doc.file, self.doc.line(full), format_path(full)

    @property
    def source(self) -> Source:
        return Source(self.doc.file, self.doc.line(self.path), self.doc.manifest)


def parse_documents(source: SourceText, budget: ExpansionBudget, problems: list[ManifestProblem]) -> list[Document]:
    """Every non-empty document of `source`. Problems are added to `problems`; a YAML syntax error ends the
    file (the parser cannot go on), any other problem only its document."""
    file, text = source.name, source.text
    documents: list[Document] = []
    loader = Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
                continue  # an empty document
            start = node.start_mark.line + 1
            if not isinstance(node, yaml.MappingNode):
                kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
                message = f"a manifest document must be a mapping (version, stack, owner ...), not {kind}"
                problems.append(ManifestProblem(file, start, "", message))
                continue
            too_large = budget.admit(node, text)
            if too_large is not None:
                problems.append(ManifestProblem(file, too_large[0], "", too_large[1]))
                continue
            composer = _Composer(file, problems)
            try:
                data = composer.value(node, ())
            except _TooDeep as deep:
                message = f"nested more than {MAX_DEPTH} levels deep"
                problems.append(ManifestProblem(file, deep.node.start_mark.line + 1, "", message))
                continue
            documents.append(Document(file, source.directory, start, data, composer.lines, composer.flagged, source.manifest))
    except yaml.YAMLError as e:
        line, reason = yaml_error(e, text)
        problems.append(ManifestProblem(file, line, "", f"invalid YAML: {reason}"))
        return []
    finally:
        loader.dispose()
    if not documents and not any(p.file == file for p in problems):
        problems.append(ManifestProblem(file, 0, "", f"no manifest in {file} (it has no document)"))
    return documents


def yaml_error(error: yaml.YAMLError, text: str) -> tuple[int, str]:
    """The line (1-based) of a YAML error in `text`, and what is wrong: the parser's problem and its context,
    never the snippet of the line (it could be a password)."""
    if isinstance(error, yaml.reader.ReaderError):
        # No mark: a position, counted in characters by PyYAML and in UTF-8 bytes by libyaml. The character
        # itself says where: the reader stops at its first occurrence.
        code = error.character if isinstance(error.character, int) else ord(error.character)
        before = text[: max(text.find(chr(code)), 0)]
        column = len(before) - (before.rfind("\n") + 1) + 1
        kind = "a control character" if code < 0x20 or 0x7F <= code < 0xA0 else "not allowed in YAML text"
        return before.count("\n") + 1, f"character U+{code:04X} at column {column} ({kind}; write it escaped in a double-quoted string)"
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    parts = (getattr(error, "context", None), getattr(error, "problem", None))
    reason = "; ".join(str(p) for p in parts if p) or type(error).__name__
    last = text.count("\n") + 1  # libyaml may place the end of the text past its last line
    return (min(mark.line + 1, last) if mark is not None else 1), reason


@dataclass
class ExpansionBudget:
    """The values that aliases and merge keys may add, beyond what is written, to all the documents of one
    load together (manifests and the #cloud-config of their user_data): the work of loading stays within the
    size of the text plus EXPANSION_ALLOWANCE, however many files and documents share it."""

    left: int = EXPANSION_ALLOWANCE

    def admit(self, root: yaml.Node, text: str) -> tuple[int, str] | None:
        """None, after spending what the document under `root` (in `text`) adds; or (line, message) refusing
        it, at the node that crosses what is left or at an alias inside its own anchor.

        The expanded size of every node is computed once, from its children's (a walk of the node graph, not
        of the expansion), so a bomb costs no more to measure than its text to parse. A document without any
        alias reaches each node once and adds nothing: no '*' in its text means no alias."""
        written = text[root.start_mark.index : root.end_mark.index]
        if "*" not in written or not isinstance(root, yaml.CollectionNode):
            return None
        limit = len(written) + self.left
        size: dict[int, int] = {}
        entered: set[int] = set()  # nodes whose children are being measured: met again, they contain themselves
        stack: list[tuple[yaml.Node, bool]] = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            children = _children(node)
            if children_done:
                total = 1 + sum(size.get(id(child), 1) for child in children)
                size[id(node)] = total
                if total > limit:
                    return node.start_mark.line + 1, (
                        f"YAML aliases (*name) and merge keys (<<) expand this document past {limit:,} values: "
                        "refused, so that a small file cannot take minutes or all memory to load"
                    )
                continue
            if id(node) in size:
                continue
            if id(node) in entered:
                return node.start_mark.line + 1, "a YAML alias (*name) refers to a node that contains it: endless"
            entered.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if isinstance(child, yaml.CollectionNode))
        self.left -= max(0, size[id(root)] - len(written))
        return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


class _TooDeep(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


@dataclass
class _Composer:
    """Turns composed YAML nodes into plain data, recording lines, flagging duplicate keys and odd tags."""

    file: str
    problems: list[ManifestProblem]
    lines: dict[PathKey, int] = field(default_factory=dict)
    flagged: set[PathKey] = field(default_factory=set)

    def fail(self, node: yaml.Node, path: PathKey, message: str) -> None:
        self.flagged.add(path)
        self.problems.append(ManifestProblem(self.file, node.start_mark.line + 1, format_path(path), message))

    def value(self, node: yaml.Node, path: PathKey, text: bool = False, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise _TooDeep(node)
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
        if depth > MAX_DEPTH:
            raise _TooDeep(node)
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
            as_text = key in _TEXT_KEYS or key in _TEXT_LIST_KEYS
            result[key] = self.value(value_node, key_path, as_text, depth + 1)
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
        kind = _TYPED_TAGS.get(tag)
        if kind is None:
            self.fail(node, path, f"unsupported YAML tag {tag!r}")
            return node.value
        try:
            return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, node)
        except (ValueError, KeyError, yaml.YAMLError):  # an explicit tag on text that is no such value: !!int x
            self.fail(node, path, f"tagged !!{kind} but not {_TYPE_WORDS[kind]}")
            return node.value


_CONSTRUCTOR = yaml.constructor.SafeConstructor()  # only its scalar constructors: they keep no state
