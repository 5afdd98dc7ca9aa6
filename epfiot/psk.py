"""Pre-shared keys of things (CoAP over DTLS, LwM2M security mode 0): the credential, the rules for a key's
text, and the key file the bootstrap server reads its handshake keys from.

A key never reaches a log, a plan, an event or the SQLite registry: :class:`PskCredential` shows only
its identity and a digest, and keys are kept in a separate file readable by its owner (root) only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from epfiot.errors import EpfiotError, UsageError

log = logging.getLogger("epfiot.psk")

MIN_KEY_BYTES: Final = 16
MAX_KEY_BYTES: Final = 64
MAX_IDENTITY_BYTES: Final = 128
KEY_FILE_MODE: Final = 0o600
BOOTSTRAP_KEY_BYTES: Final = 16
BOOTSTRAP_MAX_IDENTITY_BYTES: Final = 32
"""What the bootstrap server's DTLS (tinydtls, as DTLSSocket builds it) takes: AES-128 keys and identities
of up to 32 bytes; a longer key or identity would fail every handshake."""



class InvalidKey(EpfiotError, ValueError):
    """A credential that cannot be used as given (its message never holds a key)."""


_HEX_RE = re.compile(r"^(?:[0-9a-fA-F]{2})+$")


@dataclass(frozen=True)
class PskCredential:
    """A PSK identity (sent in clear in the handshake, not a secret) and its key (a secret: left out of
    ``repr``, so a traceback or log line that shows the credential shows no key)."""

    identity: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.identity, str) or not self.identity:
            raise InvalidKey("a PSK identity must be a non-empty string")
        if len(self.identity.encode("utf-8")) > MAX_IDENTITY_BYTES:
            raise InvalidKey(f"a PSK identity has at most {MAX_IDENTITY_BYTES} bytes")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in self.identity):
            raise InvalidKey("a PSK identity must not contain control characters")
        if not isinstance(self.key, bytes) or not MIN_KEY_BYTES <= len(self.key) <= MAX_KEY_BYTES:
            raise InvalidKey(f"a pre-shared key has {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes")

    @property
    def digest(self) -> str:
        """What plans may show of the credential: enough to tell that it changed, nothing of the key."""
        material = self.identity.encode("utf-8") + b"\0" + self.key
        return "sha256:" + hashlib.sha256(material).hexdigest()[:16]


def parse_psk_key(text: str) -> bytes:
    """A key written as hex (an even number of hex digits) or base64, of 16 to 64 bytes. The error
    names the rule, never the text."""
    text = text.strip()
    if _HEX_RE.match(text):
        key = bytes.fromhex(text)
    else:
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidKey("a pre-shared key must be written as hex or base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise InvalidKey(
            f"a pre-shared key has {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, this one has {len(key)}"
        )
    return key


@dataclass(frozen=True)
class ThingKeys:
    """The credentials of one thing: for its bootstrap (the handshake with the bootstrap server) and for
    its LwM2M server (written to the client in the Security object)."""

    bootstrap: PskCredential | None = None
    server: PskCredential | None = None

    def __post_init__(self) -> None:
        cred = self.bootstrap
        if cred is not None and len(cred.key) != BOOTSTRAP_KEY_BYTES:
            raise InvalidKey(
                f"a bootstrap key has {BOOTSTRAP_KEY_BYTES} bytes (the bootstrap server's DTLS takes AES-128 keys)"
            )
        if cred is not None and len(cred.identity.encode("utf-8")) > BOOTSTRAP_MAX_IDENTITY_BYTES:
            raise InvalidKey(
                f"a bootstrap PSK identity has at most {BOOTSTRAP_MAX_IDENTITY_BYTES} bytes"
            )


def key_file_path(registry_path: Path) -> Path:
    """The key file that belongs to a registry database: beside it, ``<name>.keys``."""
    return registry_path.with_name(registry_path.name + ".keys")


def write_key_file(path: Path, keys: dict[str, ThingKeys]) -> None:
    """Replace the key file with ``keys`` (endpoint name -> credentials), atomically, mode 0600 from the
    moment it exists (never briefly readable by others)."""
    data = {
        name: {
            role: {"identity": cred.identity, "key": cred.key.hex()}
            for role, cred in (("bootstrap", tk.bootstrap), ("server", tk.server))
            if cred is not None
        }
        for name, tk in sorted(keys.items())
    }
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_key_file(path: Path) -> dict[str, ThingKeys]:
    """The key file's credentials; none when there is no file. A file that others may read is refused
    (its keys are no longer secret, and using them would hide that)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return {}
    with os.fdopen(fd, encoding="utf-8") as f:
        if os.fstat(f.fileno()).st_mode & 0o077:
            raise InvalidKey(f"{path}: the key file must be readable by its owner only (mode 0600)")
        try:
            data = json.load(f)
            return {
                name: ThingKeys(
                    **{
                        role: PskCredential(c["identity"], bytes.fromhex(c["key"]))
                        for role, c in roles.items()
                    }
                )
                for name, roles in data.items()
            }
        except (ValueError, TypeError, KeyError, AttributeError):
            raise InvalidKey(f"{path}: not a key file written by epfiot") from None


def set_thing_keys(registry_path: Path, name: str, keys: ThingKeys | None) -> None:
    """Record (or, with None or no credential, remove) one thing's credentials in the key file of the
    registry at ``registry_path``. Called by apply, which registers things one after another."""
    path = key_file_path(registry_path)
    stored = read_key_file(path)
    if keys is None or (keys.bootstrap is None and keys.server is None):
        if stored.pop(name, None) is None:
            return
    elif stored.get(name) == keys:
        return
    else:
        stored[name] = keys
    write_key_file(path, stored)



class KeyFileCache:
    """The key file as a running bootstrap server sees it: read again whenever it changed (apply writes
    it while the server runs), so a thing registered a moment ago can do its handshake. A file that can
    no longer be read keeps the last keys read, with a warning once per change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, ThingKeys] = {}
        self._by_identity: dict[bytes, tuple[bytes, str]] = {}

    def keys(self) -> dict[str, ThingKeys]:
        self._refresh()
        return self._keys

    def bootstrap_key(self, identity: bytes) -> tuple[bytes, str] | None:
        """The key of a bootstrap identity and the endpoint it belongs to; None for an unknown identity,
        and for one that two things declare (neither may then use it)."""
        self._refresh()
        return self._by_identity.get(identity)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            keys = read_key_file(self.path)
        except (InvalidKey, OSError) as exc:
            log.warning("key file %s not read again, keeping the keys read before: %s", self.path, exc)
            return
        by_identity: dict[bytes, tuple[bytes, str]] = {}
        shared: set[bytes] = set()
        for name, tk in keys.items():
            if tk.bootstrap is None:
                continue
            identity = tk.bootstrap.identity.encode("utf-8")
            if identity in by_identity:
                shared.add(identity)
            by_identity[identity] = (tk.bootstrap.key, name)
        for identity in shared:
            log.warning("bootstrap identity %r belongs to more than one thing: refused", identity[:32])
            del by_identity[identity]
        self._keys, self._by_identity = keys, by_identity


def coap_listener(enabled: bool, port: int, dtls_port: int | None) -> int | None:
    """The plain CoAP port of ``epfiot serve`` and ``watch``; None with --no-coap, which leaves CoAP over
    DTLS alone, so that must be on."""
    if enabled:
        return port
    if dtls_port is None:
        raise UsageError(
            "--no-coap leaves only CoAP over DTLS, and that is off: give --dtls-bind ADDRESS (without --no-dtls)"
        )
    return None


DEFAULT_DTLS_PORT = 5684


def dtls_listener(
    bind: str, dtls_bind: str | None, port: int | None, enabled: bool, coap_port: int | None = None
) -> tuple[int | None, str | None, str]:
    """Where ``epfiot serve`` and ``watch`` listen for CoAP over DTLS: (port, address, a line saying so).
    aiocoap's DTLS server binds one address, so with the any-address as ``bind`` and no ``dtls_bind`` it
    stays off, and the line says how to turn it on. Without a ``port``, it is 5684, or any free port when
    the plain CoAP port is 0 (any free port) too: two servers started so never collide on 5684."""
    if port is None:
        port = 0 if coap_port == 0 else DEFAULT_DTLS_PORT
    if not enabled:
        return None, None, "CoAP over DTLS off (--no-dtls): things with keys cannot bootstrap"
    if dtls_bind is not None and dtls_bind.strip() in ("::", "0.0.0.0", "", "*"):
        raise UsageError(
            f"--dtls-bind {dtls_bind!r}: CoAP over DTLS listens on one address of this host, not on all of them"
            " (give one, e.g. 192.0.2.1 or ::1)"
        )
    address = dtls_bind or bind
    if address in ("::", "0.0.0.0", ""):
        return None, None, (
            "CoAP over DTLS off: it listens on one address; give --dtls-bind ADDRESS "
            "(things with keys cannot bootstrap until then)"
        )
    return port, address, f"CoAP over DTLS on [{address}]:{port}"
