"""The random salts of VM passwords, kept in the state directory so that a second apply changes nothing.

A password's SHA-512 crypt hash goes into the VM's cloud-init seed, whose digest the planner compares: a new
salt at every apply would rebuild every seed. So the first hash of a password gets a random salt (16
characters of crypt's alphabet from the `secrets` module, 96 bits) and is recorded in salts.json, keyed by
the VM's owner/stack/name; a later load hashes the password again with the recorded salt and rounds, and
when that gives the recorded hash (same password, same user) it is used as it is. Another password keeps
the VM's salt: its hash differs, so the seed is rebuilt, and going back to the earlier password gives the
earlier hash again (a plan saved with `plan -out` before someone tried another password still applies).
Another user gets a fresh salt. A VM that is destroyed and no longer declared loses its record.

What the file holds is the hash itself, which the seed carries anyway; never a password. It is written with
mode 0600, in the state directory (0700), atomically (a temporary file renamed over it), never in libvirt's
XML. Records are written only when a load succeeds: a manifest with a problem changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from secrets import token_bytes

from epfiot.secrets import ROUNDS, random_salt, sha512_crypt

FILE_NAME = "salts.json"


class SaltStore:
    """The recorded hashes of one state directory (`path` None: held in memory only, for one process)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._records: dict[str, dict[str, str]] = {}
        self._changed: dict[str, dict[str, str] | None] = {}  # account -> new record, None: forgotten
        # account -> (user, MAC of the password, hash) of the hashes this process computed or checked, so that
        # a long-lived store (watch) checks a recorded hash once rather than at every reload. The MAC's key
        # lives only in this process, as the passwords it reads do.
        self._checked: dict[str, tuple[str, bytes, str]] = {}
        self._key = token_bytes(32)
        self.reload()

    def reload(self) -> None:
        """Read the file again (another epfiot may have recorded or dropped salts); unsaved changes are lost."""
        self._changed.clear()
        self._records = {
            account: record for account, record in (self._read_file() if self.path is not None else {}).items()
            if isinstance(record, dict) and isinstance(record.get("user"), str) and isinstance(record.get("hash"), str)
        }  # fmt: skip

    @classmethod
    def in_state_dir(cls, directory: Path) -> SaltStore:
        return cls(directory / FILE_NAME)

    def hash(self, account: str, user: str, password: str) -> str:
        """The SHA-512 crypt hash of `password` for `user` of the VM `account` ("owner/stack/name"): the
        recorded one when it is still this password's, else a new one with a random salt."""
        record = self._records.get(account)
        mac = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        salt = random_salt()
        if record is not None and record["user"] == user:
            if self._checked.get(account) == (user, mac, record["hash"]):
                return record["hash"]
            parts = record["hash"].split("$")
            if len(parts) == 5 and parts[1] == "6" and parts[2] == f"rounds={ROUNDS}":
                salt = parts[3]
        hashed = sha512_crypt(password, salt, ROUNDS)
        if record is None or record != {"user": user, "hash": hashed}:
            self._records[account] = {"user": user, "hash": hashed}
            self._changed[account] = self._records[account]
        self._checked[account] = (user, mac, hashed)
        return hashed

    def forget(self, accounts: Iterable[str]) -> None:
        """Drop the records of these accounts (their VMs are gone), and write the file."""
        for account in accounts:
            if account in self._records:
                del self._records[account]
                self._changed[account] = None
        self.save()

    def save(self) -> None:
        """Write what changed since the store was read, over what the file holds now (another epfiot may have
        recorded other VMs meanwhile)."""
        if self.path is None or not self._changed:
            self._changed.clear()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Read, merge and replace under a lock: two epfiot saving at once would otherwise lose a record
        lock = os.open(self.path.parent / f".{FILE_NAME}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._read_file()
            for account, record in self._changed.items():
                if record is None:
                    current.pop(account, None)
                else:
                    current[account] = record
            self._replace_file(current)
        finally:
            os.close(lock)
        self._changed.clear()

    def _read_file(self) -> dict[str, object]:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _replace_file(self, records: dict[str, object]) -> None:
        assert self.path is not None
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{FILE_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:  # mkstemp makes it 0600
                json.dump(records, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
