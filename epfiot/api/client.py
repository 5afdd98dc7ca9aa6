"""The CLI's side of the API socket: a user who is not root has no libvirt access of their own, so
`epfiot plan|apply|delete|get|events` ask the service (`epfiot watch`) through its Unix socket, where the
kernel tells it who they are. The output and the exit code are those of the command run directly.

Used when the effective user is not root, the socket exists ($EPFIOT_API_SOCKET, else /run/epfiot/api.sock)
and neither --connect nor --state-dir names a host or state of the user's own.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from epfiot.errors import EpfiotError

SOCKET_ENV = "EPFIOT_API_SOCKET"
DEFAULT_SOCKET = Path("/run/epfiot/api.sock")
SOURCES_TYPE = "application/vnd.epfiot.sources+json"  # several manifest files, with their names and roots
CLI_TYPE = "application/vnd.epfiot.cli+json"  # the answer the CLI prints: exit_code, stdout, stderr


class ServiceError(EpfiotError):
    """The service could not be asked, or refused."""


class Refused(ServiceError):
    """The service does not act for this user (403): the command then acts itself, as without the service
    (a user of the libvirt group keeps what it could do; anyone else gets libvirt's own refusal)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def socket_path() -> Path:
    return Path(os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)


def should_use(args: argparse.Namespace) -> bool:
    if os.geteuid() == 0:
        return False
    if getattr(args, "connect", None) or getattr(args, "state_dir", None):
        return False
    return socket_path().is_socket()


def request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    where = socket_path()
    conn = _UnixConnection(str(where), timeout=3600.0)  # an apply may take long: graceful shutdowns
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        status, answer_headers = response.status, {k.lower(): v for k, v in response.getheaders()}
    except OSError as e:
        raise ServiceError(f"cannot reach the epfiot service at {where}: {e.strerror or e}") from None
    finally:
        conn.close()
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        parsed = None
    if status in (401, 403):
        raise Refused(f"the epfiot service at {where} refuses user {_user()}: not a user of any tenant")
    return status, answer_headers, parsed


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _problem(data: Any) -> str:
    try:
        return "; ".join(p["message"] for p in data["problems"])
    except (TypeError, KeyError):
        return "unexpected answer"


def fetch(path: str, query: dict[str, str] | list[tuple[str, str]] | None = None) -> Any:
    """GET a list; a 4xx answer becomes the error the command would raise."""
    status, _, data = request("GET", path + (f"?{urlencode(query)}" if query else ""))
    if status != 200:
        raise ServiceError(_problem(data))
    return data


def run(args: argparse.Namespace) -> int:
    if args.command == "get":
        from epfiot.cli import get

        resource = "vms" if args.resource == "vm" else args.resource
        return get.present(args, resource, fetch(f"/api/v1/{resource}"))
    if args.command == "events":
        from epfiot.cli import events

        query = [("since", args.since)] if args.since else []
        query += [("owner", args.owner)] if getattr(args, "owner", None) else []
        query += [("kinds", kind) for kind in events.wanted_kinds(getattr(args, "kind", None))]
        found = fetch("/api/v1/events", query or None)
        return events.present(args, found, filtered=bool(query))
    return _change(args)


def _change(args: argparse.Namespace) -> int:
    from epfiot.errors import UsageError

    command = "plan" if args.command == "diff" else args.command
    query = {"output": getattr(args, "output", "text")}
    for name in ("prune", "dry_run", "force", "keep_disks", "auto_approve", "detailed_exitcode", "verbose"):
        if hasattr(args, name):
            query[name] = "true" if getattr(args, name) else "false"
    if hasattr(args, "parallel"):
        query["parallel"] = str(args.parallel)
    if targets := getattr(args, "targets", None):
        query["target"] = ",".join(targets)
    if getattr(args, "out", None) is not None or getattr(args, "plan_file", None) is not None:
        raise UsageError("saved plans (plan -out FILE, apply FILE) are not made through the epfiot service: run them as a user with access to libvirt")
    if command in ("plan", "apply") and not args.files:
        raise UsageError(f"{command} needs manifests (-f PATH)")
    headers = {"Accept": CLI_TYPE}
    body: bytes | None = None
    if command == "delete" and args.files and args.what:
        raise UsageError("give either -f PATH or: vm OWNER/NAME, not both")
    if command == "delete" and not args.files:
        if len(args.what) != 2 or args.what[0] != "vm" or "/" not in args.what[1]:
            raise UsageError("usage: epfiot delete -f PATH...  |  epfiot delete vm OWNER/NAME")
        owner, _, name = args.what[1].partition("/")
        path, method = f"/api/v1/vms/{quote(owner)}/{quote(name)}", "DELETE"
    else:
        path, method = f"/api/v1/{command}", "POST"
        files = _sources(args.files)
        body = json.dumps({"files": files, "env": _named_variables(files)}).encode()
        headers["Content-Type"] = SOURCES_TYPE
    shown = ""
    if command in ("apply", "delete") and not args.auto_approve and not args.dry_run and _is_terminal():
        # As the CLI run directly asks before a plan that destroys anything: the plan first, the question
        # here, then the run, which destroys only what was agreed to (the service re-plans: should the plan
        # destroy more by then, it refuses).
        approved, shown = _ask(method, path, query, body, headers)
        if approved is None:
            return 1
        if approved:
            query["approved"] = ",".join(sorted(approved))
    data = _answer(method, path, query, body, headers)
    stdout = str(data["stdout"])
    sys.stdout.write(stdout[len(shown):] if shown and stdout.startswith(shown) else stdout)
    sys.stderr.write(data["stderr"])
    return int(data["exit_code"])


def _answer(method: str, path: str, query: dict[str, str], body: bytes | None, headers: dict[str, str]) -> dict[str, Any]:
    _, _, data = request(method, f"{path}?{urlencode(query)}", body, headers)
    if not isinstance(data, dict) or "exit_code" not in data:
        raise ServiceError(_problem(data))
    return data


def _ask(method: str, path: str, query: dict[str, str], body: bytes | None, headers: dict[str, str]) -> tuple[frozenset[str] | None, str]:
    """The destroys of the plan, once confirmed (empty: none to confirm; None: not confirmed), and the
    plan's text as shown."""
    dry = query | {"dry_run": "true", "output": "json"}
    planned = _answer(method, path, dry, body, headers)
    try:
        actions = json.loads(planned["stdout"])["plan"]["actions"]
    except (ValueError, KeyError, TypeError):
        return frozenset(), ""  # a failing plan: the run itself says why
    lost = [f"{a['kind']}/{a['owner']}/{a['name']}" for a in actions if a["action"] == "destroy"]
    if not lost:
        return frozenset(), ""
    shown = ""
    out = sys.stderr  # with -o json the plan is not shown, and the question goes where the CLI puts it
    if query["output"] != "json":
        shown, out = str(_answer(method, path, query | {"dry_run": "true"}, body, headers)["stdout"]), sys.stdout
        sys.stdout.write(shown)
    listed = ", ".join(a.replace("/", " ", 1) for a in lost)
    print(f"\nThis plan destroys {len(lost)} resource{'s' if len(lost) != 1 else ''} ({listed}).", file=out)
    print("Do you want to apply it? Only 'yes' is accepted: ", end="", file=out, flush=True)
    answer = sys.stdin.readline()
    if answer.strip() != "yes":
        if not answer.endswith("\n"):
            print(file=out)
        print("error: not confirmed; nothing of the plan was applied", file=sys.stderr)
        return None, shown
    return frozenset(lost), shown


def _is_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _named_variables(files: list[dict[str, Any]]) -> dict[str, str]:
    """The variables of this environment that the manifests' {env: NAME} secrets name: nothing else of it
    leaves this process."""
    from epfiot.api.secret_refs import secret_refs

    names = {name for f in files for _, name in secret_refs(f["text"], "env")}
    return {name: os.environ[name] for name in sorted(names) if name in os.environ}


def _sources(paths: list[str]) -> list[dict[str, Any]]:
    """The manifest files, read here, as the user who runs the command (what they may read is theirs to send)."""
    from epfiot.desired.sources import read_sources
    from epfiot.errors import ManifestError, ManifestProblem

    problems: list[ManifestProblem] = []
    texts = list(read_sources(paths, sys.stdin, Path.cwd(), problems))
    if problems:
        raise ManifestError(problems)
    return [{"name": t.name, "text": t.text, "root": str(t.root) if t.root else None, "manifest": t.manifest} for t in texts]
