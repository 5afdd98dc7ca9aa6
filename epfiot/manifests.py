"""Manifests to load, from paths or from texts (an API receives a body), and their load on behalf of a caller:
a document naming an owner the caller may not touch is a problem at its file and line (epfiot.authz), and
nothing of the load is used."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from epfiot import authz
from epfiot.errors import ManifestError
from epfiot.hostconfig import Caller
from epfiot.model import Desired


@dataclass(frozen=True)
class Manifests:
    """Manifests to load: `paths` (files, directories, "-" for `stdin`) or `texts`, (filename, text) pairs
    as an API receives them in a body. `env`: where {env: NAME} secrets are looked up (None: this
    process's environment); `secret_dirs`: where {file: PATH} secrets may lie (None: anywhere this
    process may read). Manifests read by a process for someone else (watch for a tenant, the API) get
    neither this process's environment nor its files: texts get `env={}`, `secret_dirs=()` by default."""

    paths: tuple[str, ...] = ()
    texts: tuple[tuple[str, str], ...] = ()
    stdin: TextIO | None = None
    env: dict[str, str] | None = None
    base_dir: Path | None = None
    secret_dirs: tuple[Path, ...] | None = None

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path], *, stdin: TextIO | None = None) -> Manifests:
        return cls(paths=tuple(str(p) for p in paths), stdin=stdin)

    @classmethod
    def from_text(
        cls, text: str, filename: str = "<request>", *, env: dict[str, str] | None = None, secret_dirs: tuple[Path, ...] = ()
    ) -> Manifests:
        return cls(texts=((filename, text),), env={} if env is None else env, secret_dirs=secret_dirs)

    def load(self) -> Desired:
        from epfiot.desired import load_manifest_texts, load_manifests

        if self.texts:
            return load_manifest_texts(self.texts, env=self.env, base_dir=self.base_dir, secret_dirs=self.secret_dirs)
        return load_manifests(self.paths, stdin=self.stdin, env=self.env, base_dir=self.base_dir, secret_dirs=self.secret_dirs)


def load_for(caller: Caller, manifests: Manifests) -> Desired:
    """The manifests' desired state, when every document is the caller's (else ManifestError, file:line)."""
    desired = manifests.load()
    if problems := authz.foreign_owners(desired, caller):
        raise ManifestError(problems)
    return desired
