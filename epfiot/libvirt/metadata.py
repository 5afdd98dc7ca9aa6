"""What domains and networks share: epfiot's ownership element in <metadata>, and the XML templates.

The element is `<epfiot:resource xmlns:epfiot="https://epfiot.dev/xmlns/resource/1" owner= stack= name=
spec-hash= seed-digest= shutdown-timeout= manifest=/>`; manifest is the file that declared it, relative to its root. An object without a complete one is not epfiot's and is never touched.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from epfiot.libvirt.xmlmodel import XmlObject, text
from epfiot.model import Ownership

NAMESPACE = "https://epfiot.dev/xmlns/resource/1"
NAMESPACES = {"epfiot": NAMESPACE}
RESOURCE_PATH = "metadata/epfiot:resource"  # where a domain or a network has it
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


class Resource(XmlObject):
    """The ownership element, at RESOURCE_PATH in a domain or a network document."""

    owner = text("@owner")
    stack = text("@stack")
    name = text("@name")
    spec_hash = text("@spec-hash")
    seed_digest = text("@seed-digest")
    shutdown_timeout = text("@shutdown-timeout")
    manifest = text("@manifest")

    @property
    def ownership(self) -> Ownership | None:
        owner, stack, name = self.owner, self.stack, self.name
        if not owner or not stack or not name:
            return None  # not a complete epfiot record: treated as unmanaged, never touched
        try:
            timeout: float | None = float(self.shutdown_timeout or "")
        except ValueError:
            timeout = None
        return Ownership(
            owner=owner,
            stack=stack,
            name=name,
            spec_hash=self.spec_hash or "",
            seed_digest=self.seed_digest or "",
            shutdown_timeout=timeout,
            manifest=self.manifest or "",
        )


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
