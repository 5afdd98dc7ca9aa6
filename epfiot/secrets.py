"""Passwords from manifests, hashed the moment they are read.

A manifest gives a VM's password in one of four ways:

    password: {env: CHARLIE_PASSWORD}     # an environment variable of the process that runs epfiot
    password: {file: secrets/charlie}     # a file, relative to the manifest's directory; one trailing newline dropped
    password: {hash: "$6$..."}            # a crypt(3) hash made elsewhere (mkpasswd -m sha-512, openssl passwd -6)
    password: "s3cret"                    # a literal: refused unless the credentials set allow_literal_password: true

This module is the only place that ever holds a plain password. It returns a SHA-512 crypt hash ("$6$...") at
once; model objects, reprs, errors and logs only ever see that hash. Error messages name the variable or the file,
never a value.

Deterministic salt. The hash of a password must not change from one apply to the next, or every apply would
rebuild the VM's cloud-init seed: the planner compares digests. So the salt is not random: it is derived from an
HMAC-SHA256 of the VM's identity (owner, VM name, user), keyed with the password. This is acceptable because a salt
exists to make equal passwords hash differently on different accounts, so that one precomputed table or one cracked
hash does not serve many accounts; a salt that differs for every VM and user does that. The salt reveals nothing
about the password without the password itself (it is an HMAC keyed with it). What it does not hide: the same
password for the same owner/VM/user gives the same hash, which is exactly the stability wanted.

SHA-512 crypt is implemented here from Ulrich Drepper's specification ("Unix crypt using SHA-256 and SHA-512",
https://www.akkadia.org/drepper/SHA-crypt.txt) because Python's `crypt` module is deprecated in 3.11 and gone
in 3.13. The tests check it against the specification's published vectors.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ROUNDS_DEFAULT = 5000
ROUNDS_MIN = 1000
ROUNDS_MAX = 999_999_999
SALT_MAX = 16

# The order in which SHA-512 crypt encodes the 64 digest bytes, three at a time (the last one alone).
_SHA512_ORDER = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
)  # fmt: skip

# Hash formats a guest's libc understands and that are not broken: SHA-512 and SHA-256 crypt, yescrypt,
# gost-yescrypt, scrypt and bcrypt. MD5 ($1$) and DES crypt are refused as too weak.
_C = "[./0-9A-Za-z]"
CRYPT_HASH_PATTERNS = {
    "SHA-512 crypt": re.compile(rf"^\$6\$(rounds=[0-9]+\$)?[^$:\s]{{0,16}}\${_C}{{86}}$"),
    "SHA-256 crypt": re.compile(rf"^\$5\$(rounds=[0-9]+\$)?[^$:\s]{{0,16}}\${_C}{{43}}$"),
    "yescrypt": re.compile(rf"^\$(y|gy)\${_C}+\${_C}*\${_C}{{43}}$"),
    "scrypt": re.compile(rf"^\$7\${_C}{{14,}}\${_C}{{43}}$"),
    "bcrypt": re.compile(rf"^\$2[aby]\$[0-9]{{2}}\${_C}{{53}}$"),
}


class SecretError(ValueError):
    """A password could not be resolved. The message never contains a secret value."""


# --- SHA-512 crypt -------------------------------------------------------------------------------------------


def _b64_triplet(b2: int, b1: int, b0: int, count: int) -> str:
    word = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(count):
        out.append(CRYPT_ALPHABET[word & 0x3F])
        word >>= 6
    return "".join(out)


def _repeat(block: bytes, length: int) -> bytes:
    """`length` bytes made of `block` repeated (the "P"/"S" sequences of the specification)."""
    return (block * (length // len(block) + 1))[:length]


def sha512_crypt(password: str | bytes, salt: str, rounds: int | None = None) -> str:
    """The SHA-512 crypt hash "$6$[rounds=N$]salt$hash" of `password`.

    `salt` is cut to 16 characters as the specification says. `rounds` None means the default (5000) and
    leaves "rounds=" out of the result; a number is clamped to 1000..999999999 and written into the result.
    """
    key = password.encode() if isinstance(password, str) else password
    salt_bytes = salt.encode()[:SALT_MAX]
    count = ROUNDS_DEFAULT if rounds is None else min(max(rounds, ROUNDS_MIN), ROUNDS_MAX)

    alternate = hashlib.sha512(key + salt_bytes + key).digest()
    a = hashlib.sha512(key + salt_bytes)
    a.update(_repeat(alternate, len(key)) if key else b"")
    length = len(key)
    while length:
        a.update(alternate if length & 1 else key)
        length >>= 1
    digest = a.digest()

    p_bytes = _repeat(hashlib.sha512(key * len(key)).digest(), len(key)) if key else b""
    s_bytes = (
        _repeat(hashlib.sha512(salt_bytes * (16 + digest[0])).digest(), len(salt_bytes))
        if salt_bytes
        else b""
    )

    sha512 = hashlib.sha512
    for i in range(count):
        c = sha512(p_bytes if i & 1 else digest)
        if i % 3:
            c.update(s_bytes)
        if i % 7:
            c.update(p_bytes)
        c.update(digest if i & 1 else p_bytes)
        digest = c.digest()

    encoded = "".join(_b64_triplet(digest[x], digest[y], digest[z], 4) for x, y, z in _SHA512_ORDER)
    encoded += _b64_triplet(0, 0, digest[63], 2)
    prefix = "$6$" if rounds is None else f"$6$rounds={count}$"
    return f"{prefix}{salt_bytes.decode(errors='replace')}${encoded}"


def deterministic_salt(password: str, identity: str) -> str:
    """A 16-character crypt salt: HMAC-SHA256(key=password, message=identity), 96 bits in crypt's alphabet."""
    mac = hmac.new(password.encode(), identity.encode(), hashlib.sha256).digest()
    bits = int.from_bytes(mac[:12], "big")
    return "".join(CRYPT_ALPHABET[(bits >> (6 * i)) & 0x3F] for i in range(SALT_MAX))


def hash_password(password: str, identity: str) -> str:
    """The stable SHA-512 crypt hash of `password` for the account `identity` (e.g. "charlie.example1:charlie")."""
    return sha512_crypt(password, deterministic_salt(password, identity))


def crypt_hash_kind(text: str) -> str | None:
    """Which crypt(3) format `text` is ("SHA-512 crypt", ...), None when it is not one epfiot accepts."""
    return next((kind for kind, pattern in CRYPT_HASH_PATTERNS.items() if pattern.fullmatch(text)), None)


# --- resolving a manifest's password ---------------------------------------------------------------------------

LITERAL_REFUSED = (
    "a literal password in a manifest is refused, as manifests live in git: use {env: VARIABLE}, "
    "{file: PATH} or {hash: '$6$...'} (e.g. from: mkpasswd -m sha-512), "
    "or set allow_literal_password: true in these credentials"
)


def resolve_password(
    value: object,
    *,
    identity: str,
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    allow_literal: bool = False,
    within: Sequence[Path] | None = None,
) -> str:
    """A manifest's `password:` value (already checked against the schema) -> a crypt hash.

    Raises SecretError with a message that names the variable or file at fault, never a value.
    """
    environ = os.environ if env is None else env
    if isinstance(value, str):
        if not allow_literal:
            raise SecretError(LITERAL_REFUSED)
        return _hashed(value, identity, "the literal password")
    if not isinstance(value, Mapping) or len(value) != 1:
        raise SecretError(
            "give exactly one of {env: VARIABLE}, {file: PATH}, {hash: HASH} or a literal string"
        )
    ((kind, ref),) = value.items()
    if kind in ("env", "file"):
        text, where = read_secret(value, base_dir=base_dir, env=environ, what="password", within=within)
        return _hashed(text, identity, where)
    if not isinstance(ref, str) or not ref:
        raise SecretError(f"{kind}: must be a non-empty string")
    if kind == "hash":
        if crypt_hash_kind(ref) is None:
            raise SecretError(
                "hash: does not look like a crypt(3) hash epfiot accepts ($6$ SHA-512, $5$ SHA-256, $y$ yescrypt, "
                "$7$ scrypt or $2b$ bcrypt; make one with: mkpasswd -m sha-512)"
            )
        return ref
    raise SecretError(f"unknown password source {kind!r} (use env, file or hash)")


def read_secret(
    value: Mapping[str, object], *, base_dir: Path, env: Mapping[str, str], what: str, within: Sequence[Path] | None = None
) -> tuple[str, str]:
    """The text of a secret given as {env: VARIABLE} or {file: PATH} (relative to ``base_dir``; one
    trailing newline dropped), and the words that name where it came from (for messages: never the
    value). ``what`` names the secret in messages ("password", "key"). ``within``: the directories a file
    may lie in (links resolved), for manifests read on behalf of a tenant by a process that can read more
    than the tenant (watch, the API); None: anywhere."""
    ((kind, ref),) = value.items()
    if not isinstance(ref, str) or not ref:
        raise SecretError(f"{kind}: must be a non-empty string")
    if kind == "env":
        if ref not in env:
            raise SecretError(f"environment variable {ref} is not set")
        return env[ref], f"environment variable {ref}"
    if kind != "file":
        raise SecretError(f"unknown {what} source {kind!r}")
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if within is not None and not any(_is_under(path.resolve(), d.resolve()) for d in within):
        raise SecretError(f"{what} file {path} is outside the directories it may be read from")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(f"{what} file {path} does not exist") from None
    except UnicodeDecodeError:
        raise SecretError(f"{what} file {path} is not UTF-8 text") from None
    except OSError as e:
        raise SecretError(f"cannot read {what} file {path}: {e.strerror or type(e).__name__}") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    return text, f"{what} file {path}"


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _hashed(password: str, identity: str, what: str) -> str:
    if not password:
        raise SecretError(f"{what} is empty")
    if "\n" in password or "\r" in password or "\0" in password:
        raise SecretError(f"{what} contains a line break or NUL character")
    return hash_password(password, identity)
