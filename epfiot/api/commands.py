"""plan, apply and delete for an API caller: the CLI's own code (epfiot.cli.plan, .apply), run in the
worker thread on the service's host connection, its output captured. So the API answers exactly what
`-o json` prints, and the CLI of a user without libvirt access prints, through the socket, exactly what
it would print itself, with the same exit code.

Manifests come as texts (the caller's files, read by the caller): a tenant's may name only itself as
owner (epfiot.authz). Their {env: NAME} passwords are looked up in the environment the caller sent, never
in the service's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from epfiot.api.backend import Live
from epfiot.api.secret_files import foreign_files
from epfiot.desired.sources import SourceText
from epfiot.errors import EpfiotError, ManifestError
from epfiot.hostconfig import Caller, HostConfig

if TYPE_CHECKING:
    from epfiot.model import Desired
    from epfiot.service import Service


@dataclass(frozen=True)
class Manifests:
    """What a caller sent: the texts of its manifest files, and the environment of its passwords."""

    sources: tuple[SourceText, ...]
    env: Mapping[str, str]
    peer_uid: int | None = None  # the local user who sent them (the Unix socket); None over HTTP


@dataclass(frozen=True)
class Options:
    output: str = "json"  # "json" | "text"
    prune: bool = True
    dry_run: bool = False
    force: bool = False
    keep_disks: bool = False
    auto_approve: bool = False
    detailed_exitcode: bool = False
    parallel: int = 8
    verbose: bool = False
    approved: frozenset[str] | None = None  # addresses the caller agreed to destroy (epfiot.approval)
    targets: tuple[str, ...] = ()  # --target KIND/OWNER/NAME: plan only these and what they need


@dataclass(frozen=True)
class Ran:
    exit_code: int
    stdout: str
    stderr: str
    manifest_error: bool = False
    not_found: bool = False


def load(svc: Service, caller: Caller, manifests: Manifests) -> Desired:
    """The caller's manifests loaded as the CLI's are (Service.load: the caller's own owners only, passwords
    hashed with the host's recorded salts); {file: PATH} secrets the caller may not read refused first."""
    from epfiot import manifests as loads

    if unreadable := foreign_files(manifests.sources, caller, manifests.peer_uid):
        raise ManifestError(unreadable)  # before anything of them is read by the service
    # The caller's files were checked above; the service's environment is never the caller's.
    return svc.load(caller, loads.Manifests(sources=manifests.sources, env=dict(manifests.env)))


def args_for(live: Live, options: Options) -> argparse.Namespace:
    config = live.config
    return argparse.Namespace(
        connect=config.uri, state_dir=str(live.state_dir), policy=config.policy, image_pool=config.image_pool,
        image_dir=config.image_dir, virt_type=config.virt_type, output=options.output, prune=options.prune,
        dry_run=options.dry_run, force=options.force, keep_disks=options.keep_disks, auto_approve=options.auto_approve,
        detailed_exitcode=options.detailed_exitcode, parallel=max(1, options.parallel), verbose=options.verbose,
        files=[], approved=options.approved, targets=list(options.targets) or None,
        out=None, plan_file=None,  # saved plans are made and applied by a CLI with the host's access
    )


def run(live: Live, config: HostConfig, caller: Caller, command: str, manifests: Manifests | None, options: Options, vm: tuple[str, str] | None = None) -> Ran:
    """`command` ("plan", "apply", "delete") for `caller`, as the CLI runs it; in the worker thread."""
    from epfiot import render
    from epfiot.api.backend import service_for
    from epfiot.service import NotFound

    args = args_for(live, options)
    scoped = (service_for(live, config), caller)
    out, err = io.StringIO(), io.StringIO()
    manifest_error = not_found = False
    # Nobody is at a terminal here: a plan that destroys needs auto_approve, as for a script.
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _no_stdin():
        try:
            code = _dispatch(args, scoped, command, manifests, vm)
        except EpfiotError as error:
            manifest_error, not_found = isinstance(error, ManifestError), isinstance(error, NotFound)
            if options.output == "json":
                print(render.to_json(render.error_as_dict(error)))
            print(f"error: {error}", file=sys.stderr)
            code = 1 if options.detailed_exitcode else error.exit_code
    return Ran(code, out.getvalue(), err.getvalue(), manifest_error, not_found)


def _dispatch(args: argparse.Namespace, scoped: tuple[Service, Caller], command: str, manifests: Manifests | None, vm: tuple[str, str] | None) -> int:
    from epfiot.cli import apply, plan

    svc, caller = scoped
    if vm is not None:
        return apply.reconcile(args, svc.vm_deletion(caller, *vm), deletion=True, scoped=scoped)
    assert manifests is not None
    desired = load(svc, caller, manifests)
    if command == "plan":
        return plan.show(args, desired, scoped)
    return apply.reconcile(args, desired, deletion=command == "delete", scoped=scoped)


@contextlib.contextmanager
def _no_stdin() -> Iterator[None]:
    saved = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        yield None
    finally:
        sys.stdin = saved


def sources_from(files: Sequence[Mapping[str, object]]) -> tuple[SourceText, ...]:
    """Sources from the JSON of a request: [{name, text, root?, manifest?}]."""
    sources = []
    for f in files:
        root = Path(str(f["root"])) if f.get("root") else None
        name = str(f.get("name") or "<api>")
        directory = Path(name).parent if root is not None else Path("/nonexistent")
        sources.append(SourceText(name, str(f["text"]), directory, root=root, manifest=str(f.get("manifest") or "")))
    return tuple(sources)
