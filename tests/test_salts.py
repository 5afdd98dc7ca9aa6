"""The random salts of passwords, kept in the state directory: the same password hashes the same from one
load to the next, another password or user gets a fresh salt, and the file holds no password."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from epfiot.salts import SaltStore
from epfiot.secrets import ROUNDS, sha512_crypt

PASSWORD = "Zebra-Quokka-417"
ACCOUNT = "alice/s/a"


def salt_of(hashed: str) -> str:
    return hashed.split("$")[3]


def test_the_same_password_keeps_its_salt_across_stores(tmp_path: Path) -> None:
    store = SaltStore.in_state_dir(tmp_path)
    first = store.hash(ACCOUNT, "alice", PASSWORD)
    assert first == sha512_crypt(PASSWORD, salt_of(first), ROUNDS)
    assert store.hash(ACCOUNT, "alice", PASSWORD) == first
    store.save()
    assert SaltStore.in_state_dir(tmp_path).hash(ACCOUNT, "alice", PASSWORD) == first
    # a store of another state directory (or none) draws its own salt
    assert SaltStore.in_state_dir(tmp_path / "other").hash(ACCOUNT, "alice", PASSWORD) != first
    assert SaltStore().hash(ACCOUNT, "alice", PASSWORD) != first


def test_the_file_is_private_and_holds_no_password(tmp_path: Path) -> None:
    store = SaltStore.in_state_dir(tmp_path)
    hashed = store.hash(ACCOUNT, "alice", PASSWORD)
    assert not (tmp_path / "salts.json").exists()  # nothing written before save
    store.save()
    path = tmp_path / "salts.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PASSWORD not in path.read_text()
    assert json.loads(path.read_text()) == {ACCOUNT: {"user": "alice", "hash": hashed}}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".salts.json.lock", "salts.json"]  # no temporary file left


def test_another_password_keeps_the_vms_salt_and_another_user_renews_it(tmp_path: Path) -> None:
    store = SaltStore.in_state_dir(tmp_path)
    first = store.hash(ACCOUNT, "alice", PASSWORD)
    other = store.hash(ACCOUNT, "alice", "another password")
    assert salt_of(other) == salt_of(first) and other != first
    assert store.hash(ACCOUNT, "alice", PASSWORD) == first  # back to the earlier password: the earlier hash
    assert salt_of(store.hash(ACCOUNT, "bob", PASSWORD)) != salt_of(first)
    assert salt_of(store.hash("alice/s/b", "alice", PASSWORD)) != salt_of(first)


def test_forget_drops_records_and_keeps_those_of_other_stores(tmp_path: Path) -> None:
    one, two = SaltStore.in_state_dir(tmp_path), SaltStore.in_state_dir(tmp_path)
    a = one.hash(ACCOUNT, "alice", PASSWORD)
    one.save()
    b = two.hash("alice/s/b", "alice", PASSWORD)
    two.save()  # written over what the file holds now: a's record stays
    one.forget([ACCOUNT])
    assert json.loads((tmp_path / "salts.json").read_text()) == {"alice/s/b": {"user": "alice", "hash": b}}
    assert SaltStore.in_state_dir(tmp_path).hash(ACCOUNT, "alice", PASSWORD) != a


def test_a_long_lived_store_follows_the_file_on_reload(tmp_path: Path) -> None:
    watch, other = SaltStore.in_state_dir(tmp_path), SaltStore.in_state_dir(tmp_path)
    first = watch.hash(ACCOUNT, "alice", PASSWORD)
    watch.save()
    assert watch.hash(ACCOUNT, "alice", PASSWORD) == first  # checked once, the same hash since
    other.reload()
    renewed = other.hash(ACCOUNT, "alice", "another password")
    other.save()
    watch.reload()
    assert watch.hash(ACCOUNT, "alice", "another password") == renewed  # the other epfiot's record
    assert watch.hash(ACCOUNT, "alice", PASSWORD) == first  # the VM's salt, with the earlier password
    other.forget([ACCOUNT])
    watch.reload()
    assert watch.hash(ACCOUNT, "alice", "another password") != renewed  # dropped: a fresh salt
