"""What domains and networks share: epfiot's ownership element in <metadata>, and the XML templates.

The element is `<epfiot:resource xmlns:epfiot="https://epfiot.dev/xmlns/resource/1" owner= stack= name=
spec-hash= seed-digest= shutdown-timeout=/>`. An object without a complete one is not epfiot's and is never touched.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from epfiot.model import Ownership

NAMESPACE = "https://epfiot.dev/xmlns/resource/1"
RESOURCE_TAG = f"{{{NAMESPACE}}}resource"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def ownership_from_attributes(attrs: Mapping[str, str]) -> Ownership | None:
    owner, stack, name = attrs.get("owner"), attrs.get("stack"), attrs.get("name")
    if not owner or not stack or not name:
        return None  # not a complete epfiot record: treated as unmanaged, never touched
    try:
        timeout: float | None = float(attrs.get("shutdown-timeout") or "")
    except ValueError:
        timeout = None
    return Ownership(
        owner=owner,
        stack=stack,
        name=name,
        spec_hash=attrs.get("spec-hash") or "",
        seed_digest=attrs.get("seed-digest") or "",
        shutdown_timeout=timeout,
    )


def parse_ownership(root: ET.Element) -> Ownership | None:
    """The ownership of a parsed domain or network document."""
    element = root.find(f"metadata/{RESOURCE_TAG}")
    return None if element is None else ownership_from_attributes(element.attrib)


@functools.cache
def _environment() -> Any:
    import jinja2  # imported on first render only: observing never needs it

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # select_autoescape() would not apply to .j2 files
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render(template: str, **context: object) -> str:
    """Render one of templates/*.j2, XML-escaping every value."""
    return str(_environment().get_template(template).render(namespace=NAMESPACE, **context))
