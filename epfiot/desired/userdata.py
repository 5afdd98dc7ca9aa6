"""Extra user-data (a VM's credentials.user_data): the forms a manifest may give, and what each one holds.

- nothing, or only blanks: no extra user-data;
- first line `#cloud-config`: a YAML mapping, merged into epfiot's own cloud-config (epfiot.cloudinit);
- a MIME multipart document (it starts with `Content-Type:`): its parts;
- first line `#!` (a script), `#cloud-boothook`, `#include`, `#part-handler`, `#cloud-config-archive` or
  `## template: jinja`: one part of that type, next to epfiot's cloud-config in a MIME multipart.
Anything else is refused. The manifest checks read it (a problem at the user_data line, reported with every
other), and the seed builder reads it again to build the user-data, with this same function.

A #cloud-config is YAML with plain YAML's meaning (cloud-init reads it so), loaded with the bound of
epfiot.desired.nodes on aliases and merge keys. No message repeats any of the text: it may hold secrets.
"""

from __future__ import annotations

import email
from dataclasses import dataclass
from typing import Any

import yaml

from epfiot.desired.nodes import ExpansionBudget, Loader, yaml_error

CLOUD_CONFIG = "#cloud-config"
_PART_TYPES = (  # first line of extra user-data -> MIME type of its part (longest prefixes first)
    ("#cloud-config-archive", "text/cloud-config-archive"),
    ("#cloud-boothook", "text/cloud-boothook"),
    ("#part-handler", "text/part-handler"),
    ("#include", "text/x-include-url"),
    ("## template: jinja", "text/jinja2"),
    ("#!", "text/x-shellscript"),
)
FORMS = (
    "extra user-data must start with #cloud-config, #!, #cloud-boothook, #include, #part-handler, "
    "#cloud-config-archive or '## template: jinja', or be a MIME multipart document"
)


@dataclass(frozen=True)
class ExtraUserData:
    config: dict[str, Any]  # a #cloud-config's mapping; empty for the other forms
    parts: tuple[tuple[str, str], ...] = ()  # (MIME type, text) of each part of the other forms


def read_extra_user_data(text: str | None, budget: ExpansionBudget | None = None) -> ExtraUserData:
    """What `text` holds. ValueError, with a message that quotes none of it, for text of no accepted form.
    `budget`: what YAML aliases may add to a #cloud-config (default: a budget of its own)."""
    if not text or not text.strip():
        return ExtraUserData({})
    first_line = text.lstrip().split("\n", 1)[0].strip()
    if first_line == CLOUD_CONFIG:
        return ExtraUserData(_cloud_config(text, budget or ExpansionBudget()))
    if text.lstrip().lower().startswith("content-type:"):
        return ExtraUserData({}, _mime_parts(text))
    part_type = next((t for prefix, t in _PART_TYPES if first_line.startswith(prefix)), None)
    if part_type is None:
        raise ValueError(FORMS)
    return ExtraUserData({}, ((part_type, text),))


def _cloud_config(text: str, budget: ExpansionBudget) -> dict[str, Any]:
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        too_large = budget.admit(node, text) if node is not None else None
        data = loader.construct_document(node) if node is not None and too_large is None else None
    except yaml.YAMLError as e:
        # Only the line: even the parser's problem can quote the text ("found undefined alias 'x'").
        raise ValueError(f"extra #cloud-config is not valid YAML (line {yaml_error(e, text)[0]} of the text)") from None
    except (ValueError, KeyError, TypeError):  # an explicit tag on text that is no such value: !!int x
        raise ValueError("extra #cloud-config has a value that is not of its tag's type (such as !!int x)") from None
    finally:
        loader.dispose()
    if too_large is not None:
        raise ValueError(f"extra #cloud-config, line {too_large[0]} of the text: {too_large[1]}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("extra #cloud-config must be a mapping (keys such as packages:, runcmd:, write_files:)")
    return data


def _mime_parts(text: str) -> tuple[tuple[str, str], ...]:
    message = email.message_from_string(text.lstrip())
    parts = []
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        try:
            parts.append((part.get_content_type(), payload.decode("utf-8")))
        except UnicodeDecodeError:
            raise ValueError("a part of the extra MIME user-data is not UTF-8 text") from None
    if not parts:
        raise ValueError("the extra MIME user-data has no parts")
    return tuple(parts)
