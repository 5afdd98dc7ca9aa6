"""The API on its Unix socket, as real users who are not root: the kernel's peer credentials say who asks,
the host configuration which tenant that is, and the CLI of such a user goes through the socket (it has no
libvirt access of its own) with the output and exit codes of the command run directly.

The users are made for this session (useradd --system) and removed after it; the tests run as root."""

from __future__ import annotations

import os
import pty
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import ApiWatch, secret_yaml, stack_yaml, start_watch

REPO = Path(__file__).resolve().parent.parent
USERS = {"alice": "epfapi-alice", "bob": "epfapi-bob", "stranger": "epfapi-stranger"}


@pytest.fixture(scope="session")
def users() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        pytest.fail("the Unix-socket API tests make users: they run as root", pytrace=False)
    made = []
    try:
        for name in USERS.values():
            exists = subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode == 0
            if not exists:  # one left by a run that was killed is reused, and removed after
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
            made.append(name)
        yield USERS
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, capture_output=True)


def interpreter() -> str:
    """A Python the test users may run: this one, unless it lives below a directory they cannot enter."""
    path = Path(os.path.realpath(sys.executable))
    if all(p.stat().st_mode & stat.S_IXOTH for p in path.parents):
        return sys.executable
    return shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A directory every user may read: the socket and the manifests the users apply."""
    directory = Path(tempfile.mkdtemp(prefix="epfiot-api-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def watch(tmp_path_factory: pytest.TempPathFactory, users: dict[str, str], shared: Path) -> Iterator[ApiWatch]:
    running = start_watch(tmp_path_factory.mktemp("socket"), socket=shared / "api.sock", users={"alice": [users["alice"]], "bob": [users["bob"]]})
    yield running
    assert running.stop() == 0


def as_user(user: str, watch: ApiWatch, *argv: str, terminal: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`epfiot ARGV` run as `user`, which cannot reach libvirt: only the socket. `terminal`: what is typed
    on a terminal that is its standard input (a pseudo-terminal), else it has none."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": "/nonexistent", "EPFIOT_API_SOCKET": str(watch.socket), "LANG": "C.UTF-8", **(env or {})}
    argv_ = ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--clear-groups", interpreter(), "-m", "epfiot", *argv]
    if terminal is None:
        return subprocess.run(argv_, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, cwd="/", timeout=120, check=False)
    controller, device = pty.openpty()
    try:
        os.write(controller, terminal.encode())
        return subprocess.run(argv_, stdin=device, capture_output=True, text=True, env=env, cwd="/", timeout=120, check=False)
    finally:
        os.close(device)
        os.close(controller)


def manifest(shared: Path, name: str, text: str) -> str:
    path = shared / name
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def test_the_peer_credentials_decide_the_tenant(watch: ApiWatch, users: dict[str, str], shared: Path) -> None:
    alice, bob = users["alice"], users["bob"]
    web = manifest(shared, "alice.yaml", stack_yaml("alice", "web"))
    result = as_user(alice, watch, "plan", "--detailed-exitcode", "-f", web)
    assert result.returncode == 2, result.stderr
    assert "+ vm alice/web: create" in result.stdout

    result = as_user(alice, watch, "apply", "-f", web)
    assert result.returncode == 0, result.stderr
    assert "vm alice/web: create done" in result.stdout and "Apply complete: 1 created" in result.stdout
    again = as_user(alice, watch, "apply", "-f", web)
    assert again.returncode == 0 and "No changes. The host matches the manifests." in again.stdout
    assert as_user(alice, watch, "plan", "--detailed-exitcode", "-f", web).returncode == 0

    listed = as_user(alice, watch, "get", "vms", "-o", "json", "--fields", "owner,name,state")
    assert listed.returncode == 0, listed.stderr
    assert '"name": "web"' in listed.stdout and '"state": "running"' in listed.stdout
    # The same VM is not bob's: his list is empty and, by name, it does not exist.
    assert as_user(bob, watch, "get", "vms").stdout.strip() == "No resources found."
    missing = as_user(bob, watch, "delete", "-y", "vm", "alice/web")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    # A manifest of alice's, applied by bob, is refused at the line of its owner (exit 2, as the CLI's).
    refused = as_user(bob, watch, "apply", "-f", web)
    assert refused.returncode == 2 and f"{web}:3: owner:" in refused.stderr, refused.stderr

    events = as_user(alice, watch, "events")
    assert events.returncode == 0 and "vm/alice/web" in events.stdout

    deleted = as_user(alice, watch, "delete", "-y", "-f", web)
    assert deleted.returncode == 0 and "Apply complete: 0 created, 0 changed, 1 destroyed" in deleted.stdout, deleted.stderr
    assert as_user(alice, watch, "get", "vms").stdout.strip() == "No resources found."


def test_an_unknown_user_is_refused(watch: ApiWatch, users: dict[str, str]) -> None:
    # Refused by the service, the CLI acts itself, as without the service, and fails there (no libvirt
    # access; with the tests' interpreter, not even libvirt-python): nothing of the service's host shows.
    result = as_user(users["stranger"], watch, "get", "vms")
    assert result.returncode == 1 and not result.stdout
    piped = as_user(users["stranger"], watch, "plan", "-f", "-")
    assert piped.returncode == 1 and "refuses user epfapi-stranger" in piped.stderr
    # The raw answer: 403, with nothing in it about anyone's resources.
    probe = (
        "import sys; from epfiot.api.client import _UnixConnection as C\n"
        f"c = C({str(watch.socket)!r}, 5); c.request('GET', '/api/v1/vms'); r = c.getresponse(); print(r.status, r.read().decode())"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    answer = subprocess.run(
        ["setpriv", f"--reuid={users['stranger']}", "--regid=nogroup", "--clear-groups", interpreter(), "-c", probe],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    status, _, body = answer.stdout.partition(" ")
    assert status == "403" and "alice" not in body and "web" not in body



def test_file_secrets_are_read_only_when_the_user_may_read_them(watch: ApiWatch, users: dict[str, str], shared: Path) -> None:
    alice = users["alice"]
    refused = as_user(alice, watch, "plan", "-f", manifest(shared, "shadow.yaml", secret_yaml("alice", "{file: /etc/shadow}")))
    assert refused.returncode == 2 and "cannot read secret file /etc/shadow as your user" in refused.stderr, refused.stderr
    private = shared / "private-secret"
    private.write_text("root's only\n")
    private.chmod(0o600)
    refused = as_user(alice, watch, "plan", "-f", manifest(shared, "private.yaml", secret_yaml("alice", "{file: private-secret}")))
    assert refused.returncode == 2 and f"cannot read secret file {private} as your user" in refused.stderr
    private.chmod(0o644)
    allowed = as_user(alice, watch, "plan", "-f", str(shared / "private.yaml"))
    assert "cannot read secret file" not in allowed.stderr and "vm alice/login: create" in allowed.stdout, allowed.stderr


def test_without_a_host_configuration_only_root_may_ask(tmp_path: Path, users: dict[str, str]) -> None:
    """No host configuration: every caller would be the administrator; on a socket every local user reaches,
    only root (and the service's own user) is."""
    directory = Path(tempfile.mkdtemp(prefix="epfiot-api-single-"))
    directory.chmod(0o755)
    watch = start_watch(tmp_path, socket=directory / "api.sock", tenants=False)
    try:
        result = as_user(users["alice"], watch, "plan", "-f", "-")
        assert result.returncode == 1 and "refuses user epfapi-alice" in result.stderr
        env = {**os.environ, "EPFIOT_API_SOCKET": str(watch.socket)}
        probe = f"from epfiot.api.client import _UnixConnection as C\nc = C({str(watch.socket)!r}, 5); c.request('GET', '/api/v1/vms'); print(c.getresponse().status)"
        assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=True).stdout.strip() == "200"
    finally:
        assert watch.stop() == 0
        shutil.rmtree(directory, ignore_errors=True)


def test_a_destroy_is_asked_about_on_the_users_terminal(watch: ApiWatch, users: dict[str, str], shared: Path) -> None:
    alice = users["alice"]
    two = manifest(shared, "ask.yaml", stack_yaml("alice", "keep", "lose", stack="alice-ask"))
    assert as_user(alice, watch, "apply", "-f", two).returncode == 0
    one = manifest(shared, "ask.yaml", stack_yaml("alice", "keep", stack="alice-ask"))

    declined = as_user(alice, watch, "apply", "-f", one, terminal="no\n")
    assert declined.returncode == 1 and "not confirmed" in declined.stderr
    assert "- vm alice/lose: destroy" in declined.stdout and "This plan destroys 1 resource (vm alice/lose)." in declined.stdout
    assert "lose" in as_user(alice, watch, "get", "vms").stdout

    without = as_user(alice, watch, "apply", "-f", one)  # no terminal, no -y: refused, as the CLI's
    assert without.returncode == 1 and "-y (--auto-approve)" in without.stderr

    confirmed = as_user(alice, watch, "apply", "-f", one, terminal="yes\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert confirmed.stdout.count("- vm alice/lose: destroy") == 1  # the plan is shown once
    assert "vm alice/lose: destroy done" in confirmed.stdout
    assert "lose" not in as_user(alice, watch, "get", "vms").stdout


def test_env_secrets_come_from_the_users_environment(watch: ApiWatch, users: dict[str, str], shared: Path) -> None:
    path = manifest(shared, "env.yaml", secret_yaml("alice", "{env: EPFIOT_TEST_PASSWORD}"))
    missing = as_user(users["alice"], watch, "plan", "-f", path)
    assert missing.returncode == 2 and "environment variable EPFIOT_TEST_PASSWORD is not set" in missing.stderr
    given = as_user(users["alice"], watch, "plan", "-f", path, env={"EPFIOT_TEST_PASSWORD": "s3cret-words"})
    assert given.returncode == 0 and "vm alice/login: create" in given.stdout, given.stderr
    assert "s3cret-words" not in given.stdout + given.stderr


def test_saved_plans_are_not_made_through_the_socket(watch: ApiWatch, users: dict[str, str], shared: Path) -> None:
    # apply FILE with no -f would otherwise send no manifests, and a plan of nothing prunes the user's stacks.
    web = manifest(shared, "saved.yaml", stack_yaml("alice", "saved"))
    for argv in (("plan", "-f", web, "-out", str(shared / "saved.plan")), ("apply", str(shared / "saved.plan"))):
        result = as_user(users["alice"], watch, *argv)
        assert result.returncode == 2 and "saved plans (plan -out FILE, apply FILE) are not made through the epfiot service" in result.stderr, result.stderr
    targeted = as_user(users["alice"], watch, "plan", "-f", manifest(shared, "two.yaml", stack_yaml("alice", "aimed", "spared")), "--target", "vm/alice/aimed")
    assert targeted.returncode == 0 and "vm alice/aimed: create" in targeted.stdout and "spared" not in targeted.stdout, targeted.stderr


def test_events_filters_reach_the_service(watch: ApiWatch, users: dict[str, str], shared: Path) -> None:
    web = manifest(shared, "events.yaml", stack_yaml("alice", "logged", stack="alice-logged"))
    assert as_user(users["alice"], watch, "apply", "-f", web).returncode == 0
    done = as_user(users["alice"], watch, "events", "--kind", "action.done", "-o", "json")
    assert done.returncode == 0 and '"vm/alice/logged"' in done.stdout and '"action.start"' not in done.stdout, done.stderr
    unknown = as_user(users["alice"], watch, "events", "--kind", "no.such.kind")
    assert unknown.returncode == 1 and "unknown event kind 'no.such.kind'" in unknown.stderr, unknown.stderr
