"""The cloud-init NoCloud seed of a VM: its files, their digest, and the ISO that carries them.

Pure: no libvirt here (the ISO is uploaded by epfiot.libvirt.storage.write_seed). Credentials arrive already
hashed (model.Credentials holds a SHA-512 crypt hash, never a password), so no plain secret can end up in
the seed, the digest, the domain XML or the plan.

The files (NoCloud, https://cloudinit.readthedocs.io/en/latest/reference/datasources/nocloud.html):
- `meta-data`: `instance-id` and `local-hostname` (credentials.hostname, else the VM's name).
  The instance-id is "iid-<owner>.<name>-<12 hex digits of the user-data's sha256>": stable while the
  credentials stay the same, and new when they change, so that cloud-init treats the next boot as a new
  instance and applies the new user, password and keys to the existing disk. (A new instance also gets new
  SSH host keys: the price of re-running the per-instance modules.)
- `user-data`: a `#cloud-config` with one user: `name`, `lock_passwd: false`, `passwd` (applied when
  cloud-init creates the user) and `hashed_passwd` (the same hash, applied to an existing user too, by
  cloud-init 22.3 and later) when a password hash is given, `ssh_authorized_keys`, `shell: /bin/bash`,
  and `sudo: ALL=(ALL) NOPASSWD:ALL` (like the default user of the distributions' cloud images: the user may
  have no password at all). `ssh_pwauth: true` when a password hash is given (else sshd is left as the image
  has it). The distribution's default user is not created (no `default` entry).
- No `network-config`: the VM takes its address by DHCP (a fixed address is a DHCP host reservation on its
  network), which is what cloud-init does on the first NIC without one.

Extra user-data (credentials.user_data) is combined with epfiot's:
- a `#cloud-config` document is merged at the top level after epfiot's: lists are appended (a `users` entry
  with the same `name` as epfiot's user is merged into it, its keys winning, e.g. `sudo: false`), mappings
  are merged key by key, anything else replaces epfiot's value;
- anything else cloud-init understands (`#!` script, `#cloud-boothook`, `#include`, `#part-handler`,
  `#cloud-config-archive`, `## template: jinja`, or a MIME multipart document) makes user-data a MIME
  multipart: epfiot's cloud-config first, then the extra part(s). Other text is a manifest error
  (epfiot.desired.userdata reads these forms, when manifests are loaded and here).

The ISO is ISO 9660 with Joliet and Rock Ridge, volume id CIDATA (how NoCloud finds it), and deterministic:
the same files give the same bytes (every date in it is fixed).
"""

from __future__ import annotations

import hashlib
import io
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from time import struct_time
from typing import Any

import yaml

from epfiot.desired.userdata import read_extra_user_data
from epfiot.errors import ManifestError, ManifestProblem
from epfiot.model import VmSpec

VOLUME_ID = "CIDATA"
FIXED_TIME = 946684800.0  # 2000-01-01T00:00:00Z: every date in the ISO
SUDO_RULE = "ALL=(ALL) NOPASSWD:ALL"

# ISO 9660 level 1 names are 8.3 upper case; cloud-init reads the Rock Ridge / Joliet names.
_ISO_NAMES = {
    "meta-data": "METADATA",
    "user-data": "USERDATA",
    "network-config": "NETCONF",
    "vendor-data": "VENDDATA",
}

# --- the files -------------------------------------------------------------------------------------------


def seed_files(spec: VmSpec) -> dict[str, bytes]:
    """The NoCloud files of the VM's seed: {"meta-data": ..., "user-data": ...}."""
    user_data = _user_data(spec).encode()
    content = hashlib.sha256(user_data).hexdigest()[:12]
    hostname = (spec.credentials.hostname if spec.credentials else None) or spec.name
    meta = {"instance-id": f"iid-{spec.libvirt_name}-{content}", "local-hostname": hostname}
    return {"meta-data": _yaml(meta).encode(), "user-data": user_data}


def seed_digest(spec: VmSpec) -> str:
    """A short digest of the seed's files ("sha256:" + 16 hex digits): recorded in the domain's metadata to
    notice a credential change without keeping or showing any secret."""
    digest = hashlib.sha256()
    for name, data in sorted(seed_files(spec).items()):
        digest.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return "sha256:" + digest.hexdigest()[:16]


def _yaml(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1 << 16, allow_unicode=True)


def _epfiot_config(spec: VmSpec) -> dict[str, Any]:
    credentials = spec.credentials
    if credentials is None:
        return {}
    user: dict[str, Any] = {"name": credentials.user, "lock_passwd": False}
    if credentials.password_hash:
        user["passwd"] = credentials.password_hash
        user["hashed_passwd"] = credentials.password_hash
    if credentials.ssh_authorized_keys:
        user["ssh_authorized_keys"] = list(credentials.ssh_authorized_keys)
    user["shell"] = "/bin/bash"
    user["sudo"] = SUDO_RULE
    config: dict[str, Any] = {"users": [user]}
    if credentials.password_hash:
        config["ssh_pwauth"] = True
    return config


def _user_data(spec: VmSpec) -> str:
    config = _epfiot_config(spec)
    try:
        extra = read_extra_user_data(spec.credentials.user_data if spec.credentials else None)
    except ValueError as e:  # not for loaded manifests: their checks read user_data with the same function
        raise _problem(spec, str(e)) from None
    if not extra.parts:
        return "#cloud-config\n" + _yaml(merge_cloud_config(config, extra.config))
    return _multipart([("text/cloud-config", "#cloud-config\n" + _yaml(config)), *extra.parts])


def merge_cloud_config(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """epfiot's cloud-config with `extra` merged in at the top level (see the module's doc)."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if key == "users" and isinstance(current, list) and isinstance(value, list):
            merged[key] = _merge_users(current, value)
        elif isinstance(current, list) and isinstance(value, list):
            merged[key] = [*current, *value]
        elif isinstance(current, dict) and isinstance(value, dict):
            merged[key] = {**current, **value}
        else:
            merged[key] = value
    return merged


def _merge_users(ours: list[Any], theirs: list[Any]) -> list[Any]:
    users = [dict(u) if isinstance(u, dict) else u for u in ours]
    for entry in theirs:
        same = next(
            (
                u
                for u in users
                if isinstance(u, dict) and isinstance(entry, dict) and u.get("name") == entry.get("name")
            ),
            None,
        )
        if same is not None:
            same.update(entry)
        else:
            users.append(entry)
    return users


def _multipart(parts: list[tuple[str, str]]) -> str:
    """A MIME multipart user-data, byte for byte the same for the same parts (a boundary from their digest)."""
    digest = hashlib.sha256("\0".join(f"{t}\0{body}" for t, body in parts).encode()).hexdigest()[:24]
    boundary = f"==epfiot-{digest}=="
    lines = [f'Content-Type: multipart/mixed; boundary="{boundary}"', "MIME-Version: 1.0", ""]
    for index, (part_type, body) in enumerate(parts):
        lines += [
            f"--{boundary}",
            f'Content-Type: {part_type}; charset="utf-8"',
            "MIME-Version: 1.0",
            "Content-Transfer-Encoding: 8bit",
            f'Content-Disposition: attachment; filename="part-{index:03d}"',
            "",
            body.rstrip("\n"),
        ]
    lines += [f"--{boundary}--", ""]
    return "\n".join(lines)


def _problem(spec: VmSpec, message: str) -> ManifestError:
    return ManifestError(
        [
            ManifestProblem(
                spec.source.file, spec.source.line, f"vms.{spec.name}.credentials.user_data", message
            )
        ]
    )


# --- the ISO ---------------------------------------------------------------------------------------------

_clock_lock = threading.Lock()


class _FixedClock:
    """Stands in for the `time` module inside pycdlib while an ISO is built: its every date is FIXED_TIME,
    in UTC, whatever the machine's clock and time zone."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return FIXED_TIME

    @staticmethod
    def localtime(seconds: float | None = None) -> struct_time:
        return time.gmtime(FIXED_TIME if seconds is None else seconds)


@contextmanager
def _fixed_dates() -> Iterator[None]:
    """pycdlib dates everything with time.time() and has no option for fixed dates: swap the `time` module
    of pycdlib's own modules (only those: no other code sees it) for a fixed clock while building."""
    with _clock_lock:
        patched = [
            m
            for name, m in list(sys.modules.items())
            if name.startswith("pycdlib") and getattr(m, "time", None) is time
        ]
        clock = _FixedClock()
        for module in patched:
            module.time = clock  # type: ignore[attr-defined]
        try:
            yield
        finally:
            for module in patched:
                module.time = time  # type: ignore[attr-defined]


def build_seed_iso(files: Mapping[str, bytes]) -> bytes:
    """The NoCloud seed ISO holding `files` (name -> content) in its root directory. Deterministic."""
    import pycdlib  # imported only when a seed is built

    with _fixed_dates():
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=1, vol_ident=VOLUME_ID, joliet=3, rock_ridge="1.09")
        try:
            for index, (name, data) in enumerate(sorted(files.items())):
                short = _ISO_NAMES.get(name) or f"FILE{index:04d}"
                iso.add_fp(
                    io.BytesIO(data),
                    len(data),
                    iso_path=f"/{short}.;1",
                    rr_name=name,
                    joliet_path=f"/{name}",
                    file_mode=0o100644,
                )
            out = io.BytesIO()
            iso.write_fp(out)
        finally:
            iso.close()
    return out.getvalue()


def read_seed_iso(data: bytes) -> dict[str, bytes]:
    """The files of a seed ISO by their Rock Ridge names (for tests and `epfiot` diagnostics)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        files: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dir():
                continue
            name = child.rock_ridge.name().decode()
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            files[name] = out.getvalue()
        return files
    finally:
        iso.close()
