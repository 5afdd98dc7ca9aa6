"""The cloud-init NoCloud seed: its files, digest and ISO. Pure: no libvirt."""

from __future__ import annotations

import dataclasses
import email
import io
import sys
import time

import pycdlib
import pytest
import yaml

from epfiot import cloudinit
from epfiot.errors import ManifestError
from epfiot.model import Credentials, Source, VmSpec

PASSWORD = "correct horse battery staple"
# openssl passwd -6 -salt epfiottestsalt 'correct horse battery staple'
PASSWORD_HASH = (
    "$6$epfiottestsalt$CybhEfLuq0Ds.X/x5lcclg9WqHvxM4pFvotEjhDK5CVbOmzED86TPKupMTWgeOMQPOeZYog7pvAWkqlbduaei1"
)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEpfiotTestKeyOnlyForTests edge@example"


def vm(credentials: Credentials | None = None, **changes: object) -> VmSpec:
    spec = VmSpec(
        owner="charlie",
        stack="edge",
        name="example1",
        memory_mib=512,
        vcpu=1,
        max_memory_mib=512,
        max_vcpu=1,
        image="debian-12",
        credentials=credentials,
        source=Source("stack.yaml", 7),
    )
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def creds(**changes: object) -> Credentials:
    base = Credentials(user="edge", password_hash=PASSWORD_HASH, ssh_authorized_keys=(KEY,))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def cloud_config(spec: VmSpec) -> dict[str, object]:
    text = cloudinit.seed_files(spec)["user-data"].decode()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


# --- files -----------------------------------------------------------------------------------------------


def test_meta_data_has_a_stable_instance_id_and_the_hostname() -> None:
    files = cloudinit.seed_files(vm(creds()))
    assert sorted(files) == ["meta-data", "user-data"]  # no network-config: DHCP
    meta = yaml.safe_load(files["meta-data"])
    assert meta["local-hostname"] == "example1"
    assert meta["instance-id"].startswith("iid-charlie.example1-")
    assert cloudinit.seed_files(vm(creds())) == files  # deterministic
    named = yaml.safe_load(cloudinit.seed_files(vm(creds(hostname="gateway")))["meta-data"])
    assert named["local-hostname"] == "gateway"


def test_a_credential_change_gives_a_new_instance_id_and_digest() -> None:
    def instance_id(spec: VmSpec) -> str:
        return str(yaml.safe_load(cloudinit.seed_files(spec)["meta-data"])["instance-id"])

    before = vm(creds())
    after = vm(creds(ssh_authorized_keys=(KEY, KEY.replace("edge@", "ops@"))))
    assert instance_id(before) != instance_id(after)
    assert cloudinit.seed_digest(before) != cloudinit.seed_digest(after)
    # what does not reach the guest changes nothing
    assert cloudinit.seed_digest(before) == cloudinit.seed_digest(vm(creds(), memory_mib=2048, vcpu=2))
    assert cloudinit.seed_digest(before).startswith("sha256:")
    assert len(cloudinit.seed_digest(before)) == len("sha256:") + 16


def test_user_data_creates_the_user_with_the_hash_and_keys() -> None:
    config = cloud_config(vm(creds()))
    assert config["users"] == [
        {
            "name": "edge",
            "lock_passwd": False,
            "passwd": PASSWORD_HASH,
            "hashed_passwd": PASSWORD_HASH,
            "ssh_authorized_keys": [KEY],
            "shell": "/bin/bash",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
        }
    ]
    assert config["ssh_pwauth"] is True


def test_keys_only_sets_no_password_and_leaves_ssh_password_login_alone() -> None:
    config = cloud_config(vm(creds(password_hash=None)))
    users = config["users"]
    assert isinstance(users, list)
    assert "passwd" not in users[0] and "hashed_passwd" not in users[0]
    assert users[0]["ssh_authorized_keys"] == [KEY]
    assert "ssh_pwauth" not in config


def test_extra_cloud_config_is_merged_at_the_top_level() -> None:
    extra = """#cloud-config
packages: [mosquitto]
users:
  - name: edge
    sudo: false
  - name: ops
    ssh_authorized_keys: [ssh-ed25519 AAAAops]
ssh_pwauth: false
"""
    config = cloud_config(vm(creds(user_data=extra)))
    assert config["packages"] == ["mosquitto"]
    users = config["users"]
    assert isinstance(users, list)
    assert [u["name"] for u in users] == ["edge", "ops"]
    assert users[0]["sudo"] is False  # the extra's keys win for epfiot's user
    assert users[0]["passwd"] == PASSWORD_HASH  # the rest of it stays
    assert config["ssh_pwauth"] is False


def test_merge_rules() -> None:
    base = {
        "runcmd": ["a"],
        "write_files": [{"path": "/x"}],
        "chpasswd": {"expire": False},
        "timezone": "UTC",
    }
    extra = {"runcmd": ["b"], "chpasswd": {"list": "x"}, "timezone": "Europe/Zurich", "new": 1}
    assert cloudinit.merge_cloud_config(base, extra) == {
        "runcmd": ["a", "b"],
        "write_files": [{"path": "/x"}],
        "chpasswd": {"expire": False, "list": "x"},
        "timezone": "Europe/Zurich",
        "new": 1,
    }


def test_an_extra_script_makes_user_data_multipart() -> None:
    script = "#!/bin/sh\necho hello > /etc/motd\n"
    spec = vm(creds(user_data=script))
    text = cloudinit.seed_files(spec)["user-data"].decode()
    assert text == cloudinit.seed_files(spec)["user-data"].decode()  # deterministic, boundary included
    message = email.message_from_string(text)
    assert message.get_content_type() == "multipart/mixed"
    parts = [p for p in message.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/x-shellscript"]
    first = parts[0].get_payload(decode=True)
    second = parts[1].get_payload(decode=True)
    assert isinstance(first, bytes) and isinstance(second, bytes)
    assert yaml.safe_load(first)["users"][0]["passwd"] == PASSWORD_HASH
    assert second.decode() == script.rstrip("\n")


def test_extra_mime_parts_are_carried_over() -> None:
    extra = (
        'Content-Type: multipart/mixed; boundary="XX"\nMIME-Version: 1.0\n\n'
        '--XX\nContent-Type: text/x-shellscript; charset="utf-8"\n\n#!/bin/sh\ntrue\n'
        '--XX\nContent-Type: text/cloud-boothook; charset="utf-8"\n\n#cloud-boothook\necho early\n--XX--\n'
    )
    message = email.message_from_string(
        cloudinit.seed_files(vm(creds(user_data=extra)))["user-data"].decode()
    )
    types = [p.get_content_type() for p in message.walk() if not p.is_multipart()]
    assert types == ["text/cloud-config", "text/x-shellscript", "text/cloud-boothook"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("#cloud-config\nusers: [unclosed\n", "not valid YAML"),
        ("#cloud-config\n- a list\n", "must be a mapping"),
        ("just some text\n", "must start with #cloud-config"),
    ],
)
def test_bad_extra_user_data_is_a_manifest_error(extra: str, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        cloudinit.seed_digest(vm(creds(user_data=extra)))
    assert message in str(caught.value)
    assert "stack.yaml:7" in str(caught.value)
    assert caught.value.exit_code == 2


# --- the ISO ---------------------------------------------------------------------------------------------


def test_the_iso_holds_the_files_under_rock_ridge_joliet_and_iso9660_names() -> None:
    files = cloudinit.seed_files(vm(creds()))
    data = cloudinit.build_seed_iso(files)
    assert cloudinit.read_seed_iso(data) == files
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        assert iso.has_rock_ridge() and iso.has_joliet()
        for name, content in files.items():
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            assert out.getvalue() == content
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, iso_path="/USERDATA.;1")
        assert out.getvalue() == files["user-data"]
        assert iso.pvd.volume_identifier.decode().strip() == "CIDATA"
    finally:
        iso.close()
    # what blkid reads as the label: the primary volume descriptor at sector 16
    assert data[16 * 2048 + 40 : 16 * 2048 + 72].decode().strip() == "CIDATA"


def test_the_iso_has_the_user_and_hash_but_never_the_password() -> None:
    spec = vm(creds(hostname="gateway"))
    data = cloudinit.build_seed_iso(cloudinit.seed_files(spec))
    assert b"edge" in data
    assert PASSWORD_HASH.encode() in data
    for encoding in ("utf-8", "utf-16-be", "utf-16-le"):
        assert PASSWORD.encode(encoding) not in data
    assert PASSWORD not in cloudinit.seed_digest(spec)


def test_the_iso_is_deterministic_whatever_the_clock_and_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    files = cloudinit.seed_files(vm(creds()))
    first = cloudinit.build_seed_iso(files)
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        second = cloudinit.build_seed_iso(files)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert first == second


def test_building_leaves_pycdlibs_clock_alone() -> None:
    cloudinit.build_seed_iso({"meta-data": b"instance-id: x\n"})
    modules = [m for name, m in sys.modules.items() if name.startswith("pycdlib") and hasattr(m, "time")]
    assert modules
    assert all(m.time is time for m in modules)


def test_a_vm_without_credentials_still_gets_a_valid_seed() -> None:
    files = cloudinit.seed_files(vm(None))
    assert files["user-data"].startswith(b"#cloud-config\n")
    assert yaml.safe_load(files["meta-data"])["local-hostname"] == "example1"
