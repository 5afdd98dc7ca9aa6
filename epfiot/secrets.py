"""Passwords from manifests, hashed the moment they are read.

A manifest gives a VM's password in one of four ways:

    password: {env: CHARLIE_PASSWORD}     # an environment variable of the process that runs epfiot
    password: {file: secrets/charlie}     # a file, relative to the manifest's directory; one trailing newline dropped
    password: {hash: "$6$..."}            # a crypt(3) hash made elsewhere (mkpasswd -m sha-512, openssl passwd -6)
    password: "s3cret"                    # a literal: refused unless the credentials set allow_literal_password: true

This module (with epfiot.salts, which hashes with a recorded salt) is the only place that ever holds a plain
password. It returns a SHA-512 crypt hash ("$6$...") at once; model objects, reprs, errors and logs only ever
see that hash. Error messages name the variable or the file,
never a value.

Random salt, many rounds. epfiot's own hashes are "$6$rounds=100000$SALT$...": a salt of 16 characters
drawn with the `secrets` module, so that nothing known about a VM (its owner, name or user) lets anyone
precompute guesses, and 100,000 rounds (twenty times crypt's default of 5000), so that each guess at a hash
taken from a seed costs that much. The salt is kept in the state directory (epfiot.salts) so that the next
apply hashes the same password to the same text and leaves the seed alone.

{file: PATH} secrets are read only inside the manifest's directory or a secrets directory (--secrets-dir,
$EPFIOT_SECRETS_DIR): see read_secret. Its refusals are one message, whatever the reason, so that a manifest
cannot find out which paths exist outside those directories.

SHA-512 crypt is implemented here from Ulrich Drepper's specification ("Unix crypt using SHA-256 and SHA-512",
https://www.akkadia.org/drepper/SHA-crypt.txt) because Python's `crypt` module is deprecated in 3.11 and gone
in 3.13. The tests check it against the specification's published vectors.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from secrets import choice

CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ROUNDS_DEFAULT = 5000
ROUNDS_MIN = 1000
ROUNDS_MAX = 999_999_999
SALT_MAX = 16
# epfiot's rounds: twenty times crypt's default, what SHA-512 crypt is meant to cost today. This pure-Python
# implementation takes about 90 ms per hash at 100,000 rounds on a 2-core host, 1.5 times openssl's C code
# (bench/bench_crypt.py): paid once per VM password and load, a cost a guesser pays per guess.
ROUNDS = 100_000
SECRET_FILE_MAX = 64 * 1024  # a password or a key is a line, not a file to read whole whatever its size

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


def secrets_dirs(given: str | Path | None) -> tuple[Path, ...]:
    """The secrets directory {file: PATH} may point into: --secrets-dir, else $EPFIOT_SECRETS_DIR, else none."""
    chosen = given or os.environ.get("EPFIOT_SECRETS_DIR")
    return (Path(chosen),) if chosen else ()


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


def random_salt() -> str:
    """A 16-character crypt salt from the operating system's random source: 96 bits."""
    return "".join(choice(CRYPT_ALPHABET) for _ in range(SALT_MAX))


def hash_password(password: str) -> str:
    """A SHA-512 crypt hash of `password` with a fresh random salt and epfiot's rounds."""
    return sha512_crypt(password, random_salt(), ROUNDS)


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
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    allow_literal: bool = False,
    hasher: Callable[[str], str] = hash_password,
    secrets_dirs: Sequence[Path] = (),
    within: Sequence[Path] | None = None,
) -> str:
    """A manifest's `password:` value (already checked against the schema) -> a crypt hash.

    `hasher` hashes a plain password (epfiot.salts.SaltStore.hash keeps the salt from one apply to the next;
    the default draws a new one). Raises SecretError with a message that names the variable or file at
    fault, never a value.
    """
    environ = os.environ if env is None else env
    if isinstance(value, str):
        if not allow_literal:
            raise SecretError(LITERAL_REFUSED)
        return _hashed(value, hasher, "the literal password")
    if not isinstance(value, Mapping) or len(value) != 1:
        raise SecretError(
            "give exactly one of {env: VARIABLE}, {file: PATH}, {hash: HASH} or a literal string"
        )
    ((kind, ref),) = value.items()
    if kind in ("env", "file"):
        text, where = read_secret(
            value, base_dir=base_dir, env=environ, what="password", secrets_dirs=secrets_dirs, within=within
        )
        return _hashed(text, hasher, where)
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
    value: Mapping[str, object],
    *,
    base_dir: Path,
    env: Mapping[str, str],
    what: str,
    secrets_dirs: Sequence[Path] = (),
    within: Sequence[Path] | None = None,
) -> tuple[str, str]:
    """The text of a secret given as {env: VARIABLE} or {file: PATH} (one trailing newline dropped), and the
    words that name where it came from (for messages: never the value). ``what`` names the secret in
    messages ("password", "key"). Passwords and the keys of things both come through here.

    A file is read only when, all symbolic links resolved, it lies inside ``base_dir`` (the manifest's
    directory; PATH relative to it) or inside one of ``secrets_dirs`` (PATH absolute or relative), and is a
    regular file of at most 64 KiB of UTF-8 text. Whatever fails, the message is the same: it tells nothing
    about which paths exist or what they are.

    ``within``: for manifests read on behalf of a tenant by a process that can read more than the tenant
    (watch, the API), the directories the file must also lie in (links resolved); None: no such bound.
    """
    ((kind, ref),) = value.items()
    if not isinstance(ref, str) or not ref:
        raise SecretError(f"{kind}: must be a non-empty string")
    if kind == "env":
        if ref not in env:
            raise SecretError(f"environment variable {ref} is not set")
        return env[ref], f"environment variable {ref}"
    if kind != "file":
        raise SecretError(f"unknown {what} source {kind!r}")
    if within is not None and "\0" not in ref:
        path = Path(ref)
        if not path.is_absolute():
            path = base_dir / path
        if not any(_is_under(path.resolve(), d.resolve()) for d in within):
            raise SecretError(f"{what} file {path} is outside the directories it may be read from")
    text = _read_allowed_file(ref, base_dir, secrets_dirs, within)
    if text is None:
        raise SecretError(
            f"{what} file {ref}: secret file not allowed or unreadable (give a file inside the manifest's "
            "directory or the secrets directory, --secrets-dir / $EPFIOT_SECRETS_DIR)"
        )
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    return text, f"{what} file {ref}"


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _read_allowed_file(
    ref: str, base_dir: Path, secrets_dirs: Sequence[Path], within: Sequence[Path] | None = None
) -> str | None:
    """The text of the file `ref` names when it is allowed and readable, else None (whatever the reason)."""
    if "\0" in ref:
        return None
    given = Path(ref)
    # Where the file may lie once its links are resolved: a secrets directory, or (for a relative PATH, the
    # manifest's own) the manifest's directory. A relative PATH is looked for in each, the manifest's first.
    roots = ([] if given.is_absolute() else [base_dir]) + list(secrets_dirs)
    real_roots = []
    for root in roots:
        try:
            real_roots.append(os.path.realpath(root, strict=True))
        except OSError:
            continue
    for root in roots:
        real = os.path.realpath(root / given)
        if not any(real != r and os.path.commonpath([r, real]) == r for r in real_roots):
            continue
        if within is not None and not any(_is_under(Path(real), d.resolve()) for d in within):
            continue
        text = _read_regular_file(real)
        if text is not None:
            return text
    return None


def _read_regular_file(path: str) -> str | None:
    try:
        # O_NOFOLLOW: the resolved path must not have become a link since; O_NONBLOCK: a FIFO does not hang
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > SECRET_FILE_MAX:
            return None
        data = os.read(fd, SECRET_FILE_MAX + 1)
        return data.decode("utf-8") if len(data) <= SECRET_FILE_MAX else None
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def _hashed(password: str, hasher: Callable[[str], str], what: str) -> str:
    if not password:
        raise SecretError(f"{what} is empty")
    if "\n" in password or "\r" in password or "\0" in password:
        raise SecretError(f"{what} contains a line break or NUL character")
    return hasher(password)
