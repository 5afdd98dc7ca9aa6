"""Manifests -> the validated desired state (epfiot.model.Desired), or every problem at once.

    desired = load_manifests(["specs/first-vm.yaml", "stacks/", "-"])

Files may hold several documents (separated by ---); every document and file merges into one Desired. An
empty document is skipped; a file without any document is an error. The data flows through one module per
step, and each step reports everything it finds (ManifestProblem: file, line, field path, message):

    sources    paths, directories, stdin        -> SourceText (UTF-8 text, its name and directory)
    nodes      YAML text                        -> Document (plain data, the line of every field)
    schema     schemas/stack.schema.json        -> Violations of a document (the one validator)
    messages   Violations                       -> problems in plain words, at file:line and field path
    semantics  schema-checked documents         -> Desired, after the rules within entries (entries) and
                                                   across documents (duplicates, references, addresses)

Nothing here touches the host: no libvirt, no CoAP. Passwords are resolved and hashed by epfiot.secrets, so
no plain password is kept in the result or shown in an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from epfiot.desired.entries import SecretAccess
from epfiot.desired.messages import check_document
from epfiot.desired.nodes import ExpansionBudget, format_path, parse_documents
from epfiot.desired.schema import SCHEMA_PATH, schema
from epfiot.desired.semantics import build_desired
from epfiot.desired.sources import SourceText, read_sources
from epfiot.errors import ManifestProblem
from epfiot.model import Desired, ManifestOrigin

__all__ = ["SCHEMA_PATH", "SecretAccess", "format_path", "load_manifest_sources", "load_manifest_text", "load_manifest_texts", "load_manifests", "schema"]


def load_manifests(
    paths: Sequence[str],
    *,
    stdin: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    base_dir: str | Path | None = None,
    access: SecretAccess | None = None,
) -> Desired:
    """Load, validate and merge manifests into one desired state.

    `paths`: files, directories, or "-" for `stdin` (default sys.stdin). `env`: where {env: NAME} secrets are
    looked up (default os.environ). `base_dir`: the directory {file: PATH} secrets of documents read from
    stdin are relative to (default: the current directory); a file's documents use the file's own directory.
    `access`: where else secrets come from (secrets directories, recorded salts), or not to read them; it
    replaces `env`. Raises ManifestError with every problem found; nothing else has any effect (new salts
    stay in `access.salts` until it is saved).
    """
    problems: list[ManifestProblem] = []
    stdin_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    return _load(read_sources(paths, stdin, stdin_dir, problems), access or _access(env), problems)


def load_manifest_text(
    text: str,
    filename: str = "<string>",
    *,
    env: Mapping[str, str] | None = None,
    base_dir: str | Path | None = None,
    access: SecretAccess | None = None,
) -> Desired:
    """load_manifests for text already in memory (`filename` is what messages and sources show)."""
    source = SourceText(filename, text, Path(base_dir) if base_dir is not None else Path.cwd())
    return _load([source], access or _access(env), [])


def load_manifest_texts(
    texts: Iterable[tuple[str, str]],
    *,
    env: Mapping[str, str] | None = None,
    base_dir: str | Path | None = None,
    access: SecretAccess | None = None,
) -> Desired:
    """load_manifests for several (filename, text) pairs already in memory, as one load (an API body)."""
    directory = Path(base_dir) if base_dir is not None else Path.cwd()
    return _load([SourceText(name, text, directory) for name, text in texts], access or _access(env), [])


def load_manifest_sources(sources: Iterable[SourceText], *, access: SecretAccess) -> Desired:
    """load_manifests for sources read elsewhere (the files an API caller sent, with their directories)."""
    return _load(sources, access, [])


def _access(env: Mapping[str, str] | None) -> SecretAccess:
    return SecretAccess(os.environ if env is None else env)


def _load(sources: Iterable[SourceText], access: SecretAccess, problems: list[ManifestProblem]) -> Desired:
    budget = ExpansionBudget()  # one for the whole load: many files or documents do not multiply it
    texts = list(sources)
    documents = [doc for source in texts for doc in parse_documents(source, budget, problems)]
    checked = [check_document(doc, problems) for doc in documents]
    desired = build_desired(checked, access, budget, problems)
    roots = tuple(dict.fromkeys(str(t.root) for t in texts if t.root is not None))
    files = frozenset(str((t.root / t.manifest).resolve()) for t in texts if t.root is not None and t.manifest)
    return replace(desired, origin=ManifestOrigin(roots, files))
