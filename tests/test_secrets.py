"""Passwords: SHA-512 crypt against the specification's vectors, random salts and many rounds, and resolving
{env:}, {file:}, {hash:} and literals without ever showing a value; secret files only where they may be."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from epfiot.secrets import (
    CRYPT_ALPHABET,
    ROUNDS,
    SecretError,
    crypt_hash_kind,
    hash_password,
    read_secret,
    resolve_password,
    sha512_crypt,
)

PASSWORD = "Zebra-Quokka-417"

# From Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512" (https://www.akkadia.org/drepper/SHA-crypt.txt):
# (salt as given, rounds as given or None for the default, key, expected). glibc's crypt(3) gives the same
# results, except for the last vector: libxcrypt refuses rounds below 1000 where the specification clamps them.
SPEC_VECTORS = [
    ("saltstring", None, "Hello world!",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
    ("saltstringsaltstring", 10000, "Hello world!",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
    ("toolongsaltstring", 5000, "This is just a test",
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"),
    ("anotherlongsaltstring", 1400, "a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"),
    ("short", 77777, "we have a short salt string but not a short password",
     "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0"),
    ("asaltof16chars..", 123456, "a short string",
     "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1"),
    ("roundstoolow", 10, "the minimum number is still observed",
     "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX."),
]  # fmt: skip


@pytest.mark.parametrize(("salt", "rounds", "key", "expected"), SPEC_VECTORS, ids=[v[0] for v in SPEC_VECTORS])
def test_sha512_crypt_matches_the_specification(salt: str, rounds: int | None, key: str, expected: str) -> None:
    assert sha512_crypt(key, salt, rounds) == expected


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
@pytest.mark.parametrize(
    ("key", "salt"),
    [("a", "x"), ("p", "ab"), ("päßwörd ünïcode", "16charactersalt."), ("x" * 64, "s"), ("y" * 200, "QWERTYqwerty./09")],
)
def test_sha512_crypt_matches_openssl(key: str, salt: str) -> None:
    result = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=key + "\n", capture_output=True, text=True, check=True
    )
    assert sha512_crypt(key, salt) == result.stdout.strip()


def test_bytes_keys_and_long_salts() -> None:
    assert sha512_crypt(b"Hello world!", "saltstring") == sha512_crypt("Hello world!", "saltstring")
    assert sha512_crypt("k", "a" * 40).split("$")[2] == "a" * 16


def is_hash_of(password: str, hashed: str) -> bool:
    """Whether `hashed` is epfiot's SHA-512 crypt of `password`: its rounds, a 16-character salt."""
    prefix, rounds, salt = hashed.split("$")[1:4]
    return (prefix, rounds, len(salt)) == ("6", f"rounds={ROUNDS}", 16) and sha512_crypt(password, salt, ROUNDS) == hashed


def test_hash_password_draws_a_random_salt_and_costs_many_rounds() -> None:
    hashes = [hash_password(PASSWORD) for _ in range(3)]
    assert len(set(hashes)) == 3
    assert ROUNDS >= 100_000
    for hashed in hashes:
        assert hashed.startswith(f"$6$rounds={ROUNDS}$") and is_hash_of(PASSWORD, hashed)
        assert set(hashed.split("$")[3]) <= set(CRYPT_ALPHABET)
        assert crypt_hash_kind(hashed) == "SHA-512 crypt" and PASSWORD not in hashed


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_epfiots_rounds_match_openssl() -> None:
    hashed = hash_password(PASSWORD)
    result = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", hashed.rsplit("$", 1)[0].removeprefix("$6$"), "-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, check=True,
    )
    assert result.stdout.strip() == hashed


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (SPEC_VECTORS[0][3], "SHA-512 crypt"),
        (SPEC_VECTORS[1][3], "SHA-512 crypt"),
        ("$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZF2hrfVi5", "SHA-256 crypt"),
        ("$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7", "yescrypt"),
        ("$2b$12$GhvMmNVjRW29ulnudl.LbuAnUtN/LRfe1JsBm1Xu6LE3059z5Tr8m", "bcrypt"),
        ("$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0", None),  # MD5: too weak
        ("abJnggxhB/yWI", None),  # DES
        ("$6$saltstring$short", None),
        (SPEC_VECTORS[0][3] + "\n", None),
        (PASSWORD, None),
    ],
)
def test_crypt_hash_kinds(text: str, kind: str | None) -> None:
    assert crypt_hash_kind(text) == kind


# --- resolving a manifest's password ------------------------------------------------------------------


def resolve(value: object, tmp_path: Path, **kwargs: object) -> str:
    return resolve_password(value, base_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_env(tmp_path: Path) -> None:
    assert is_hash_of(PASSWORD, resolve({"env": "PW"}, tmp_path, env={"PW": PASSWORD}))


def test_a_missing_or_empty_variable_is_named_without_a_value(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"^environment variable PW is not set$"):
        resolve({"env": "PW"}, tmp_path, env={})
    with pytest.raises(SecretError, match=r"^environment variable PW is empty$"):
        resolve({"env": "PW"}, tmp_path, env={"PW": ""})


@pytest.mark.parametrize("content", [PASSWORD, PASSWORD + "\n", PASSWORD + "\r\n"])
def test_file_relative_to_the_manifest_without_its_trailing_newline(content: str, tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text(content, newline="")
    assert is_hash_of(PASSWORD, resolve({"file": "secrets/pw"}, tmp_path, env={}))
    assert is_hash_of(PASSWORD, resolve({"file": "secrets/../secrets/pw"}, tmp_path, env={}))


REFUSED = "secret file not allowed or unreadable"


def test_file_problems_name_the_file_only(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=rf"^password file missing: {REFUSED} "):
        resolve({"file": "missing"}, tmp_path, env={})
    (tmp_path / "two-lines").write_text(PASSWORD + "\nsecond line\n")
    with pytest.raises(SecretError) as caught:
        resolve({"file": "two-lines"}, tmp_path, env={})
    assert "line break" in str(caught.value) and PASSWORD not in str(caught.value)
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + PASSWORD.encode())
    (tmp_path / "huge").write_text("x" * (64 * 1024 + 1))
    os.mkfifo(tmp_path / "fifo")
    for name in ("binary", "huge", "fifo", ".", "secrets"):
        with pytest.raises(SecretError, match=REFUSED):
            resolve({"file": name}, tmp_path, env={})


def refusal(ref: str, base_dir: Path, secrets_dirs: tuple[Path, ...] = ()) -> str:
    with pytest.raises(SecretError) as caught:
        read_secret({"file": ref}, base_dir=base_dir, env={}, what="key", secrets_dirs=secrets_dirs)
    return str(caught.value).replace(ref, "REF")


def test_secret_files_outside_the_manifests_directory_are_refused_alike(tmp_path: Path) -> None:
    manifests, outside = tmp_path / "manifests", tmp_path / "outside"
    manifests.mkdir()
    outside.mkdir()
    (outside / "key").write_text(PASSWORD)
    (manifests / "link").symlink_to(outside / "key")
    (manifests / "dirlink").symlink_to(outside)
    (manifests / "dangling").symlink_to(outside / "nothing")
    refused = [
        str(outside / "key"),  # absolute: refused even though it exists
        str(outside / "nothing"),
        "/etc/passwd",
        "../outside/key",  # .. escaping the manifest's directory
        "../outside/nothing",
        "link",  # a link inside that points outside
        "dirlink/key",
        "dangling",
        "missing",
    ]
    messages = {refusal(ref, manifests) for ref in refused}
    assert len(messages) == 1, messages  # the same words whether the path exists or not
    (message,) = messages
    assert message.startswith(f"key file REF: {REFUSED} ") and str(outside) not in message


def test_secret_files_inside_a_secrets_directory(tmp_path: Path) -> None:
    manifests, vault = tmp_path / "manifests", tmp_path / "vault"
    manifests.mkdir()
    vault.mkdir()
    (vault / "key").write_text(PASSWORD + "\n")
    (manifests / "link").symlink_to(vault / "key")
    for ref in (str(vault / "key"), "key", "link"):
        text, origin = read_secret({"file": ref}, base_dir=manifests, env={}, what="key", secrets_dirs=(vault,))
        assert (text, origin) == (PASSWORD, f"key file {ref}")
    assert REFUSED in refusal(str(vault / "key"), manifests)  # not without the secrets directory
    (manifests / "own").write_text(PASSWORD)
    assert REFUSED in refusal(str(manifests / "own"), manifests, (vault,))  # absolute, outside the secrets directory
    assert REFUSED in refusal("../other", manifests, (vault,))


def test_hash_is_taken_as_is_when_it_is_a_crypt_hash(tmp_path: Path) -> None:
    given = SPEC_VECTORS[0][3]
    assert resolve({"hash": given}, tmp_path, env={}) == given
    with pytest.raises(SecretError) as caught:
        resolve({"hash": PASSWORD}, tmp_path, env={})
    assert "mkpasswd" in str(caught.value) and PASSWORD not in str(caught.value)


def test_literals_are_refused_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(SecretError) as caught:
        resolve(PASSWORD, tmp_path, env={})
    message = str(caught.value)
    assert "{env: VARIABLE}" in message and "{file: PATH}" in message and "allow_literal_password: true" in message
    assert PASSWORD not in message
    assert is_hash_of(PASSWORD, resolve(PASSWORD, tmp_path, env={}, allow_literal=True))


@pytest.mark.parametrize("value", [{}, {"env": "A", "file": "b"}, {"env": ""}, {"secret": "x"}, 42])
def test_malformed_sources(value: object, tmp_path: Path) -> None:
    with pytest.raises(SecretError):
        resolve(value, tmp_path, env={"A": PASSWORD})


def test_the_default_environment_is_the_process_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPFIOT_TEST_PW", PASSWORD)
    assert is_hash_of(PASSWORD, resolve({"env": "EPFIOT_TEST_PW"}, tmp_path))
