"""epfiot explain: what a manifest field is, from the manifest schema itself (as kubectl explain does).

`epfiot explain vms.memory` follows the schema (schemas/stack.schema.json) from the document down: a list
is explained by its items, a `$ref` by its definition, the field's own words coming before the definition's.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from typing import Any

from epfiot.errors import UsageError

LIMIT_KEYWORDS = (
    "const", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "pattern", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
)  # fmt: skip


def resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """`node` with its `$ref` followed: the definition's keywords, then the node's own over them (a field's
    title and description say more than its type's); `definition` keeps the type's own title and words."""
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return node
    target: Any = root
    for step in ref[2:].split("/"):
        target = target[step]
    definition = resolve(target, root)
    own = {k: v for k, v in node.items() if k != "$ref"}
    return definition | own | {"definition": definition}


def fields_of(node: dict[str, Any], root: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The named fields below `node`: its properties, those of a list's items, those of its alternatives."""
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        node = resolve(node["items"], root)
    found: dict[str, dict[str, Any]] = dict(node.get("properties", {}))
    for keyword in ("oneOf", "anyOf"):
        for alternative in node.get(keyword, ()):
            found |= fields_of(resolve(alternative, root), root)
    return found


def lookup(path: str, root: dict[str, Any]) -> dict[str, Any]:
    """The schema node of a field path such as `vms.memory` (list indexes, `vms[0].memory`, are allowed)."""
    node = root
    names = [n for n in re.sub(r"\[[^]]*\]", "", path).split(".") if n] if path else []
    for depth, name in enumerate(names):
        fields = fields_of(node, root)
        if name not in fields:
            where = ".".join(names[:depth]) or "a manifest"
            if not fields:
                raise UsageError(f"explain {path}: {where} is a single value, it has no field {name!r}")
            raise UsageError(f"explain {path}: {where} has no field {name!r}; its fields: {', '.join(sorted(fields))}")
        node = resolve(fields[name], root)
    return node


def type_of(node: dict[str, Any], root: dict[str, Any]) -> str:
    kind = node.get("type")
    if kind == "array" and isinstance(node.get("items"), dict):
        return f"list of {type_of(resolve(node['items'], root), root)}"
    if isinstance(kind, list):
        return " | ".join(kind)
    if kind:
        return str(kind)
    if "enum" in node:
        return "one of " + ", ".join(str(v) for v in node["enum"])
    if "const" in node:
        return f"always {node['const']}"
    return "any"


def explain(path: str, root: dict[str, Any]) -> dict[str, Any]:
    node = lookup(path, root)
    definition = node.get("definition", {})
    items = resolve(node["items"], root) if isinstance(node.get("items"), dict) else {}
    required = set(items.get("required", node.get("required", ())))
    return {
        "path": path,
        "title": node.get("title"),
        "description": node.get("description"),
        "type": type_of(node, root),
        "format": {"title": definition.get("title"), "description": definition.get("description")} if definition else None,
        "default": node.get("default"),
        "limits": {k: node[k] for k in LIMIT_KEYWORDS if k in node},
        "examples": node.get("examples", []),
        "fields": [
            {"name": name, "type": type_of(resolve(field, root), root), "required": name in required, "title": resolve(field, root).get("title")}
            for name, field in sorted(fields_of(node, root).items())
        ],
    }


def as_text(found: dict[str, Any]) -> str:
    def wrapped(text: str) -> list[str]:
        return textwrap.wrap(text, 100, initial_indent="  ", subsequent_indent="  ")

    lines = [f"FIELD: {found['path'] or '(a manifest document)'} <{found['type']}>"]
    if found["title"]:
        lines.append(f"TITLE: {found['title']}")
    if found["description"]:
        lines += ["DESCRIPTION:", *wrapped(found["description"])]
    if (form := found["format"]) and form["description"] and form["description"] != found["description"]:
        lines += [f"FORMAT: {form['title'] or ''}".rstrip(), *wrapped(form["description"])]
    if found["default"] is not None:
        lines.append(f"DEFAULT: {found['default']}")
    if found["limits"]:
        lines.append("LIMITS: " + ", ".join(f"{k} {v}" for k, v in found["limits"].items()))
    if found["examples"]:
        lines.append("EXAMPLES: " + ", ".join(str(e) for e in found["examples"]))
    if found["fields"]:
        rows = [(f["name"], f"<{f['type']}>" + (" (required)" if f["required"] else ""), f["title"] or "") for f in found["fields"]]
        widths = [max(len(row[i]) for row in rows) for i in (0, 1)]
        lines.append("FIELDS:")
        lines += [f"  {name:<{widths[0]}}  {kind:<{widths[1]}}  {title}".rstrip() for name, kind, title in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from epfiot import render
    from epfiot.desired.schema import schema

    found = explain(args.path, schema())
    print(render.to_json(found) if args.output == "json" else as_text(found))
    return 0
