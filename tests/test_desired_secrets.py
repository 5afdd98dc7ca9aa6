"""Secrets never leave the secrets module: no password in the desired state, in a problem, or in what an error
carries; with the salts of a state directory, the same password for the same VM and user gives the same hash;
deleting reads no secret at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_manifest import ENV, VM, write

from epfiot.desired import SecretAccess, load_manifest_text
from epfiot.errors import ManifestError
from epfiot.model import Desired
from epfiot.salts import SaltStore

# --- secrets never leave the secrets module ---------------------------------------------------------------

PASSWORD = "Zebra-Quokka-417"


def _with_credentials(password_yaml: str, extra: str = "") -> str:
    return (
        VM.format(stack="s", owner="alice", name="a")
        + f"    credentials:\n      user: alice\n      password: {password_yaml}\n{extra}"
    )


@pytest.mark.parametrize(
    "password_yaml",
    [
        "{env: EPFIOT_TEST_PASSWORD}",
        "{file: pw}",
        f"{PASSWORD}",
    ],
)
def test_a_password_appears_nowhere_in_the_desired_state(password_yaml: str, tmp_path: Path) -> None:
    write(tmp_path / "pw", PASSWORD + "\n")
    text = _with_credentials(password_yaml, "      allow_literal_password: true\n")
    state = tmp_path / "state"

    def load() -> Desired:
        salts = SaltStore.in_state_dir(state)
        desired = load_manifest_text(text, "a.yaml", base_dir=tmp_path, access=SecretAccess(ENV, salts=salts))
        salts.save()
        return desired

    desired = load()
    creds = desired.vms[0].credentials
    assert creds is not None and creds.password_hash is not None
    assert PASSWORD not in repr(desired) and PASSWORD not in str(desired)
    assert PASSWORD not in json.dumps(desired.vms[0].spec_hash())
    assert PASSWORD not in (state / "salts.json").read_text()
    # the recorded salt: the same password for the same VM and user gives the same hash, so a second apply is
    # a no-op; without the state directory's salts, the salt is new
    again = load()
    assert again == desired and again.vms[0].spec_hash() == desired.vms[0].spec_hash()
    assert load_manifest_text(text, "a.yaml", env=ENV, base_dir=tmp_path) != desired


def test_salts_are_recorded_per_vm_and_user(tmp_path: Path) -> None:
    text = _with_credentials("{env: EPFIOT_TEST_PASSWORD}")
    salts = SaltStore.in_state_dir(tmp_path)
    access = SecretAccess(ENV, salts=salts)
    a = load_manifest_text(text, access=access).vms[0].credentials
    b = load_manifest_text(text.replace("name: a", "name: b"), access=access).vms[0].credentials
    assert a is not None and b is not None and a.password_hash != b.password_hash
    salts.save()
    assert sorted(json.loads((tmp_path / "salts.json").read_text())) == ["alice/s/a", "alice/s/b"]


def test_identities_only_read_no_secret(tmp_path: Path) -> None:
    text = _with_credentials("{env: EPFIOT_MISSING}") + (
        "things:\n  - name: urn:dev:1\n    server: coaps://192.0.2.1:5684\n"
        "    server_security: {mode: psk, identity: dev1, key: {file: /etc/shadow}}\n"
    )
    with pytest.raises(ManifestError):
        load_manifest_text(text, "a.yaml", env=ENV)
    desired = load_manifest_text(text, "a.yaml", access=SecretAccess({}, read=False))
    assert [v.name for v in desired.vms] == ["a"] and [t.name for t in desired.things] == ["urn:dev:1"]
    creds = desired.vms[0].credentials
    assert creds is not None and creds.password_hash is None and desired.things[0].server_security is None


def test_the_hash_differs_between_vms_and_users() -> None:
    text = _with_credentials("{env: EPFIOT_TEST_PASSWORD}")
    a = load_manifest_text(text, env=ENV).vms[0].credentials
    b = load_manifest_text(text.replace("name: a", "name: b"), env=ENV).vms[0].credentials
    c = load_manifest_text(text.replace("user: alice", "user: bob"), env=ENV).vms[0].credentials
    hashes = {x.password_hash for x in (a, b, c) if x is not None}
    assert len(hashes) == 3


@pytest.mark.parametrize(
    "text",
    [
        _with_credentials(PASSWORD),  # literal, refused
        _with_credentials(f"[{PASSWORD}]"),  # wrong type
        _with_credentials(f"{{env: EPFIOT_TEST_PASSWORD, file: {PASSWORD}}}"),
        _with_credentials(f"{{hash: {PASSWORD}}}"),  # a plain password pasted as a hash
        _with_credentials(f'{{hash: "$6${PASSWORD}"}}'),
        _with_credentials(f"{{env: {PASSWORD}}}"),
        _with_credentials(f"{PASSWORD}", "      user_data: '" + PASSWORD + ": [oops'\n"),
        _with_credentials(f"{PASSWORD}", "      allow_literal_password: true\n      user_data: '- " + PASSWORD + "'\n"),
        _with_credentials(f"{PASSWORD}", '      allow_literal_password: true\n      user_data: "#cloud-config\\n' + PASSWORD + ': [oops"\n'),
        _with_credentials(f"{PASSWORD}", '      allow_literal_password: true\n      user_data: "#cloud-config\\nx: *' + PASSWORD + '"\n'),
        _with_credentials(f"{PASSWORD}", '      allow_literal_password: true\n      user_data: "#cloud-config\\nx: !!int ' + PASSWORD + '"\n'),
        _with_credentials(f"{PASSWORD}\n     bad: indentation"),  # a YAML syntax error on the password's line
        VM.format(stack="s", owner="alice", name="a") + f"    credentials: {PASSWORD}\n",  # not a mapping
        VM.format(stack="s", owner="alice", name="a") + f"    credentials: {{user: {PASSWORD}}}\n",
        _with_credentials(f"{PASSWORD}", "      allow_literal_password: true\n      colour: blue\n").replace("vcpu: 1", "vcpu: 0"),
    ],
)
def test_a_password_never_appears_in_problems(text: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest_text(text, "a.yaml", env=ENV)
    error = caught.value
    assert error.problems
    assert PASSWORD not in str(error) and PASSWORD not in repr(error.problems)
    assert PASSWORD not in str(error.__cause__) and PASSWORD not in str(error.__context__)


def test_a_missing_variable_is_named_but_no_value_is_shown() -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest_text(_with_credentials("{env: EPFIOT_MISSING}"), "a.yaml", env=ENV)
    (problem,) = caught.value.problems
    assert (problem.line, problem.path) == (10, "vms[0].credentials.password")
    assert problem.message == "environment variable EPFIOT_MISSING is not set"

