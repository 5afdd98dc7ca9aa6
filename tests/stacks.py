"""Writing manifests for tests: small YAML stacks in a temp dir, as users would write them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def vm(name: str, *, memory: str = "64MiB", vcpu: int = 1, state: str = "running", **extra: Any) -> dict[str, Any]:
    return {"name": name, "memory": memory, "vcpu": vcpu, "state": state, "shutdown_timeout": "2s", **extra}


def write_stack(
    directory: Path,
    owner: str,
    *,
    stack: str | None = None,
    vms: list[dict[str, Any]] | None = None,
    networks: list[dict[str, Any]] | None = None,
    things: list[dict[str, Any]] | None = None,
    filename: str | None = None,
) -> Path:
    document: dict[str, Any] = {"version": 1, "stack": stack or f"{owner}-stack", "owner": owner}
    if networks is not None:
        document["networks"] = networks
    if vms is not None:
        document["vms"] = vms
    if things is not None:
        document["things"] = things
    path = directory / (filename or f"{document['stack']}.yaml")
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def spec_for_tenant(spec: Path, tenant: str, directory: Path) -> Path:
    """A copy of an example stack from specs/ whose owner is the test's tenant, so that tests never touch
    anything but their own resources and clean up after themselves."""
    document_texts = spec.read_text().split("\n---")
    out = []
    for text in document_texts:
        data = yaml.safe_load(text)
        if isinstance(data, dict) and "owner" in data:
            text = text.replace(f"owner: {data['owner']}", f"owner: {tenant}", 1)
        out.append(text)
    target = directory / spec.name
    target.write_text("\n---".join(out))
    return target
