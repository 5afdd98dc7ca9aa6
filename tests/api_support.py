"""A real `epfiot watch --http 127.0.0.1:0 --api-socket ...` on the libvirt test driver, for the API tests:
the host configuration names tenants alice and bob (tokens, Unix users) and an administrator token."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hosts.testdriver import HOST_FILE
from test_watch_daemon import WatchProcess

TOKENS = {"admin": "epf_admin-token-for-tests", "alice": "epf_alice-token-for-tests", "bob": "epf_bob-token-for-tests"}


def digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def host_config(state_dir: Path, users: dict[str, Sequence[str]] | None = None) -> str:
    users = users or {}
    lines = [
        "version: 1",
        f"state_dir: {state_dir}",
        f'admin: {{tokens: ["{digest(TOKENS["admin"])}"]}}',
        "tenants:",
    ]
    for tenant in ("alice", "bob"):
        lines.append(f"  {tenant}:")
        lines.append(f'    tokens: ["{digest(TOKENS[tenant])}"]')
        if users.get(tenant):
            lines.append(f"    users: [{', '.join(users[tenant])}]")
    return "\n".join(lines) + "\n"


@dataclass
class ApiWatch:
    process: WatchProcess
    port: int
    socket: Path
    stacks: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        proc = self.process.proc
        proc.terminate()
        code = proc.wait(timeout=30)
        self.process.reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        return code


def start_watch(
    directory: Path, *, socket: Path | None = None, users: dict[str, Sequence[str]] | None = None, extra: Sequence[str] = (), tenants: bool = True
) -> ApiWatch:
    """watch on a test-driver host of its own (test:///<directory>/host.xml), serving the API; returns once
    /readyz says the first reconcile is done. `tenants` False: no host configuration at all."""
    stacks, state = directory / "stacks", directory / "state"
    stacks.mkdir(exist_ok=True)
    (directory / "host.xml").write_text(HOST_FILE)
    config = directory / "host.yaml"
    config.write_text(host_config(state, users))
    chosen = ("--host-config", str(config)) if tenants else ("--state-dir", str(state))
    socket = socket or directory / "api.sock"
    process = WatchProcess(
        "--connect", f"test://{directory / 'host.xml'}", *chosen,
        "watch", "-f", str(stacks), "--no-serve", "--log-format", "json",
        "--http", "127.0.0.1:0", "--api-socket", str(socket), *extra,
    )  # fmt: skip
    port = process.event("api.listening", address="127.0.0.1")["port"]
    watch = ApiWatch(process, port, socket, stacks)
    deadline = time.monotonic() + 30
    while True:  # asked on the socket: the HTTP rate limit is the tests' to spend
        if ready(socket):
            return watch
        if time.monotonic() > deadline:
            watch.stop()
            raise AssertionError("watch did not get ready")
        time.sleep(0.05)


def ready(socket: Path) -> bool:
    from epfiot.api.client import _UnixConnection

    conn = _UnixConnection(str(socket), timeout=5)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def stack_yaml(owner: str, *vm_names: str, stack: str | None = None) -> str:
    vms = "".join(f"  - {{name: {n}, memory: 64MiB, vcpu: 1, state: running, shutdown_timeout: 2s}}\n" for n in vm_names)
    return f"version: 1\nstack: {stack or owner + '-web'}\nowner: {owner}\nvms:\n{vms}"


def secret_yaml(owner: str, password: str) -> str:
    """A VM with a login whose password is `password` (e.g. "{file: /etc/shadow}")."""
    return (
        f"version: 1\nstack: {owner}-login\nowner: {owner}\nvms:\n"
        "  - name: login\n    memory: 64MiB\n    vcpu: 1\n    state: shutoff\n"
        f"    credentials:\n      user: someone\n      password: {password}\n"
    )
