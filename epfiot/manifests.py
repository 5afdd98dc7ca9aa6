"""Manifests to load, from paths or from texts (an API receives a body), and their load on behalf of a caller:
a document naming an owner the caller may not touch is a problem at its file and line (epfiot.authz), and
nothing of the load is used."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from epfiot import authz
from epfiot.errors import ManifestError
from epfiot.hostconfig import Caller
from epfiot.model import Desired

if TYPE_CHECKING:
    from epfiot.desired import SecretAccess
    from epfiot.desired.sources import SourceText
    from epfiot.salts import SaltStore


@dataclass(frozen=True)
class Manifests:
    """Manifests to load: `paths` (files, directories, "-" for `stdin`) or `texts`, (filename, text) pairs
    as an API receives them in a body. `env`: where {env: NAME} secrets are looked up (None: this
    process's environment); `secret_dirs`: where {file: PATH} secrets may lie (None: anywhere this
    process may read). Manifests read by a process for someone else (watch for a tenant, the API) get
    neither this process's environment nor its files: texts get `env={}`, `secret_dirs=()` by default.
    `secrets_dirs`: the secrets directories {file: PATH} may point into besides the manifest's directory
    (--secrets-dir, $EPFIOT_SECRETS_DIR: epfiot.secrets.secrets_dirs); `secret_dirs` bounds those too.
    `read` False: identities only (delete -f), no secret is read. `sources`: texts with the directories
    their {file: PATH} secrets are relative to (the files an API caller read and sent)."""

    paths: tuple[str, ...] = ()
    texts: tuple[tuple[str, str], ...] = ()
    stdin: TextIO | None = None
    env: dict[str, str] | None = None
    base_dir: Path | None = None
    secret_dirs: tuple[Path, ...] | None = None
    secrets_dirs: tuple[Path, ...] = ()
    read: bool = True
    sources: tuple[SourceText, ...] = ()

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path], *, stdin: TextIO | None = None) -> Manifests:
        return cls(paths=tuple(str(p) for p in paths), stdin=stdin)

    @classmethod
    def from_text(
        cls, text: str, filename: str = "<request>", *, env: dict[str, str] | None = None, secret_dirs: tuple[Path, ...] = ()
    ) -> Manifests:
        return cls(texts=((filename, text),), env={} if env is None else env, secret_dirs=secret_dirs)

    def access(self, salts: SaltStore | None = None) -> SecretAccess:
        """Where this load finds its secrets; `salts`: the recorded salts passwords hash with."""
        from epfiot.desired import SecretAccess

        env = os.environ if self.env is None else self.env
        return SecretAccess(env, self.secrets_dirs, salts if self.read else None, self.read, self.secret_dirs)

    def load(self, salts: SaltStore | None = None) -> Desired:
        """The desired state; passwords hash with `salts` (None: a new random salt each), new salts stay in
        `salts` until it is saved."""
        from epfiot.desired import load_manifest_sources, load_manifest_texts, load_manifests

        access = self.access(salts)
        if self.sources:
            return load_manifest_sources(self.sources, access=access)
        if self.texts:
            return load_manifest_texts(self.texts, base_dir=self.base_dir, access=access)
        return load_manifests(self.paths, stdin=self.stdin, base_dir=self.base_dir, access=access)


def load_for(caller: Caller, manifests: Manifests, salts: SaltStore | None = None) -> Desired:
    """The manifests' desired state, when every document is the caller's (else ManifestError, file:line).
    `salts`: as for Manifests.load (not saved here: the caller saves them once the load is accepted)."""
    desired = manifests.load(salts)
    if problems := authz.foreign_owners(desired, caller):
        raise ManifestError(problems)
    return desired
