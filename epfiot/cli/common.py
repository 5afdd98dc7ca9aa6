"""What several commands share: the service of this host and who runs the command, the URI, the options."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from epfiot.errors import UsageError

if TYPE_CHECKING:
    from epfiot.hostconfig import Caller, HostConfig
    from epfiot.model import Desired
    from epfiot.plan import Options
    from epfiot.registry import Registry
    from epfiot.service import Manifests, Service


def state_dir(args: argparse.Namespace) -> Path:
    """The state directory by the rules of `service` (the host configuration's, when there is one)."""
    return service(args)[0].state_dir


def service(args: argparse.Namespace) -> tuple[Service, Caller]:
    """The service of this host and who runs this command (epfiot.service, epfiot.hostconfig).

    Without a host configuration: one administrator, and the options as given. With one, its state_dir,
    image_pool and usb_policy are the host's: a tenant naming another state directory or USB policy
    (--state-dir, $EPFIOT_STATE_DIR, --policy) is refused, so it can neither escape the host lock and the
    registry nor allow itself devices; the administrator may (a recovery, a test), with a warning that such
    runs are not serialised with the host's.
    """
    from dataclasses import replace

    from epfiot.service import Service

    config = _host_config(args.host_config)
    given_state = Path(args.state_dir) if args.state_dir else (Path(env) if (env := os.environ.get("EPFIOT_STATE_DIR")) else None)
    found = Service.from_host_config(
        config,
        uri=uri(args),
        state_dir=given_state,
        image_pool=args.image_pool,
        image_dir=args.image_dir,
        virt_type=args.virt_type,
        policy_path=args.policy,
    )
    caller = found.local_caller()
    if not config.has_tenants:
        return found, caller
    overrides: dict[str, object] = {}
    from epfiot.policy import DEFAULT_POLICY_PATH

    for option, given, hosts, name, consequence in (
        ("--state-dir", given_state, found.state_dir, "state_dir", "runs with it are not serialised with the host's"),
        ("--policy", args.policy, found.policy_path, "policy_path", "the host's USB policy does not apply"),
    ):
        if given is None or (hosts is not None and Path(given).resolve() == Path(hosts).resolve()):
            continue
        shown = hosts if hosts is not None else f"{DEFAULT_POLICY_PATH}, if present"
        if not caller.is_admin:
            raise UsageError(f"{option} {given}: this host's is {shown} (host configuration {config.path}); a tenant cannot choose another")
        print(f"warning: {option} {given} is not this host's ({shown}, host configuration {config.path}): {consequence}", file=sys.stderr)
        overrides[name] = Path(given)
    return replace(found, **overrides) if overrides else found, caller  # type: ignore[arg-type]


def _host_config(path: Path | None) -> HostConfig:
    """The host configuration named (or the default). Where the host has one at the default path, only its
    administrators may name another: a tenant must not choose the rules it runs under."""
    from epfiot.authz import local_caller
    from epfiot.hostconfig import DEFAULT_HOST_CONFIG, host_config_path, load_host_config

    chosen, explicit = host_config_path(path)
    other = explicit and DEFAULT_HOST_CONFIG.exists() and chosen.resolve() != DEFAULT_HOST_CONFIG.resolve()
    if other and not local_caller(load_host_config(DEFAULT_HOST_CONFIG)).is_admin:
        raise UsageError(f"host configuration {chosen}: this host's is {DEFAULT_HOST_CONFIG}; only its administrators may name another")
    return load_host_config(chosen if explicit else None)


def uri(args: argparse.Namespace) -> str:
    return str(args.connect or os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system")


def open_registry(directory: Path, *, create: bool) -> Registry | None:
    path = directory / "registry.db"
    if not create and not path.exists():
        return None
    from epfiot.registry import Registry

    return Registry(path)


def manifests_from(args: argparse.Namespace, *, read_secrets: bool = True) -> Manifests:
    """The manifests of -f; {file:} secrets may also point into --secrets-dir / $EPFIOT_SECRETS_DIR.
    `read_secrets` False: identities only (delete), no secret is read."""
    from dataclasses import replace

    from epfiot.secrets import secrets_dirs
    from epfiot.service import Manifests

    found = Manifests.from_paths(args.files, stdin=sys.stdin)
    return replace(found, secrets_dirs=secrets_dirs(getattr(args, "secrets_dir", None)), read=read_secrets)


def load(args: argparse.Namespace, *, read_secrets: bool = True) -> Desired:
    """The manifests of -f, loaded for whoever runs the command (Service.load): passwords hash with the salts
    recorded in the state directory, and new ones are recorded once the manifests load."""
    found, caller = service(args)
    return found.load(caller, manifests_from(args, read_secrets=read_secrets))


def options_from(args: argparse.Namespace) -> Options:
    from epfiot.plan import Options

    return Options(
        force=getattr(args, "force", False),
        keep_disks=getattr(args, "keep_disks", False),
        prune=getattr(args, "prune", True),
        targets=frozenset(getattr(args, "targets", None) or ()),
    )
