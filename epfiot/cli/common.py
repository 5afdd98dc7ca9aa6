"""What several commands share: the state directory, the URI, the host and registry of one session."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from epfiot.errors import EpfiotError

if TYPE_CHECKING:
    from epfiot.host import Host
    from epfiot.model import Desired
    from epfiot.plan import Options
    from epfiot.policy import UsbPolicy
    from epfiot.reconcile import CreatePool
    from epfiot.registry import Registry


@dataclass
class Session:
    host: Host
    registry: Registry | None
    policy: UsbPolicy | None
    state_dir: Path


def state_dir(args: argparse.Namespace) -> Path:
    from epfiot.state import default_state_dir

    return Path(args.state_dir) if args.state_dir else default_state_dir()


def uri(args: argparse.Namespace) -> str:
    return str(args.connect or os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system")


@contextlib.contextmanager
def session(args: argparse.Namespace, desired: Desired) -> Iterator[Session]:
    """The host, and the registry and USB policy when the manifests need them (start-up time counts)."""
    from epfiot.libvirt.host import LibvirtHost
    from epfiot.state import ensure_state_dir

    directory = ensure_state_dir(state_dir(args))
    policy = None
    if any(vm.devices for vm in desired.vms):
        from epfiot.policy import load_policy

        policy = load_policy(args.policy)
    registry = open_registry(directory, create=bool(desired.things))
    host = LibvirtHost.open(uri(args), image_pool=args.image_pool, virt_type=args.virt_type)
    try:
        yield Session(host, registry, policy, directory)
    finally:
        host.close()
        if registry is not None:
            registry.close()


@contextlib.contextmanager
def host_only(args: argparse.Namespace) -> Iterator[Host]:
    from epfiot.libvirt.host import LibvirtHost

    host = LibvirtHost.open(uri(args), image_pool=args.image_pool, virt_type=args.virt_type)
    try:
        yield host
    finally:
        host.close()


def open_registry(directory: Path, *, create: bool) -> Registry | None:
    path = directory / "registry.db"
    if not create and not path.exists():
        return None
    from epfiot.registry import Registry

    return Registry(path)


def load(args: argparse.Namespace, *, read_secrets: bool = True) -> Desired:
    """The manifests of -f. Passwords hash with the salts recorded in the state directory, and new ones are
    recorded once the manifests load. `read_secrets` False: identities only (delete), no secret is read."""
    from epfiot.desired import SecretAccess, load_manifests
    from epfiot.salts import SaltStore
    from epfiot.secrets import secrets_dirs

    salts = SaltStore.in_state_dir(state_dir(args)) if read_secrets else None
    access = SecretAccess(os.environ, secrets_dirs(getattr(args, "secrets_dir", None)), salts, read=read_secrets)
    desired = load_manifests(args.files, stdin=sys.stdin, access=access)
    if salts is not None:
        try:
            salts.save()
        except OSError as error:
            raise EpfiotError(f"cannot record password salts in {salts.path}: {error.strerror or error}") from None
    return desired


def options_from(args: argparse.Namespace) -> Options:
    from epfiot.plan import Options

    return Options(
        force=getattr(args, "force", False),
        keep_disks=getattr(args, "keep_disks", False),
        prune=getattr(args, "prune", True),
        targets=frozenset(getattr(args, "targets", None) or ()),
    )


def pool_from(args: argparse.Namespace) -> CreatePool:
    from epfiot.reconcile import CreatePool

    return CreatePool(args.image_pool, args.image_dir)
