"""The host configuration: the tenants that share the host, who acts as each, and host-wide settings.

It belongs to the host's administrator (default /etc/epfiot/host.yaml; `--host-config PATH` or
$EPFIOT_HOST_CONFIG choose another; schemas/host.schema.json says what it may hold). For example:

    version: 1
    state_dir: /var/lib/epfiot             # the one registry, event log and host lock of this host
    network_ranges: [10.128.0.0/16]        # tenants' networks lie inside these
    usb_policy: /etc/epfiot/policy.yaml
    admin: {groups: [epfiot-admin]}
    tenants:
      alice:
        users: [alice]
        manifests: [/srv/epfiot/alice]
        tokens: ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
        quotas: {vms: 4, vcpus: 8, memory: 8GiB, disk: 100GiB, networks: 2, things: 20, usb: 1}

Who is asking is a Caller: the administrator (root, the admin users and groups, an admin token) or one
tenant (its users and groups, one of its tokens). A Unix user who is none of these is nobody: refused.

With no host configuration at all (no file at the default path), the host has one administrator and no
tenants: every caller is the administrator, as in a single-user setup, and `owner:` is a label.

Tokens are random (`new_token`: 32 bytes from the secrets module), so a plain SHA-256 of a token is a safe
thing to store: there is no dictionary to try against it. They are compared in constant time.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import hmac
import ipaddress
import pwd
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epfiot.addressing import within_ranges
from epfiot.errors import ManifestProblem, UsageError
from epfiot.hostfiles import chosen_path, read_host_file

DEFAULT_HOST_CONFIG = Path("/etc/epfiot/host.yaml")
HOST_CONFIG_ENV = "EPFIOT_HOST_CONFIG"
TOKEN_PREFIX = "epf_"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HostConfigError(UsageError):
    """The host configuration is missing (when named explicitly), unreadable or invalid."""


@dataclass(frozen=True)
class Quotas:
    """The most a tenant may have at once; None: no limit."""

    vms: int | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    disk_gib: int | None = None
    networks: int | None = None
    things: int | None = None
    usb: int | None = None


@dataclass(frozen=True)
class Tenant:
    name: str
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    manifests: tuple[Path, ...] = ()
    token_hashes: frozenset[str] = frozenset()
    quotas: Quotas = Quotas()


@dataclass(frozen=True)
class Caller:
    """Who is asking: the administrator (tenant None) or one tenant. `name` is for logs and events."""

    name: str
    tenant: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.tenant is None

    def may_touch(self, owner: str) -> bool:
        """Whether resources of `owner` are this caller's to see and change."""
        return self.tenant is None or owner == self.tenant


ADMIN = Caller("administrator")


@dataclass(frozen=True)
class HostConfig:
    """The host's tenants and settings. `path` None: no configuration, one administrator, no tenants."""

    tenants: Mapping[str, Tenant] = field(default_factory=dict)
    admin_users: frozenset[str] = frozenset({"root"})
    admin_groups: frozenset[str] = frozenset()
    admin_token_hashes: frozenset[str] = frozenset()
    state_dir: Path | None = None
    image_pool: str | None = None
    image_dir: Path | None = None
    usb_policy: Path | None = None
    network_ranges: tuple[Network, ...] = ()
    path: str | None = None

    @property
    def has_tenants(self) -> bool:
        return self.path is not None

    def caller_for_uid(self, uid: int) -> Caller | None:
        """The caller a local Unix user is (as the peer of the API socket), or None: not allowed at all."""
        if not self.has_tenants or uid == 0:
            return ADMIN
        try:
            user = pwd.getpwuid(uid)
        except KeyError:
            return None
        groups = {g.gr_name for g in grp.getgrall() if user.pw_name in g.gr_mem}
        with contextlib.suppress(KeyError):  # a primary group without an entry: no group name to match
            groups.add(grp.getgrgid(user.pw_gid).gr_name)
        if user.pw_name in self.admin_users or groups & self.admin_groups:
            return Caller(user.pw_name)
        for tenant in self.tenants.values():
            if user.pw_name in tenant.users or groups & tenant.groups:
                return Caller(user.pw_name, tenant.name)
        return None

    def caller_for_token(self, token: str) -> Caller | None:
        """The caller a bearer token belongs to, or None. Every known hash is compared, in constant time."""
        digest = token_hash(token)
        found: Caller | None = None
        for known in self.admin_token_hashes:
            if hmac.compare_digest(known, digest):
                found = ADMIN
        for tenant in self.tenants.values():
            for known in tenant.token_hashes:
                if hmac.compare_digest(known, digest):
                    found = Caller(f"token of {tenant.name}", tenant.name)
        return found

    def tenant_of_directory(self, directory: Path) -> Tenant | None:
        """The tenant whose manifest directories hold `directory` (resolved), or None."""
        resolved = directory.resolve()
        for tenant in self.tenants.values():
            if any(resolved == d or d in resolved.parents for d in tenant.manifests):
                return tenant
        return None

    def allows_range(self, network: Network) -> bool:
        """Whether a tenant's network may use `network`: inside one of network_ranges (none given: any)."""
        return within_ranges(network, self.network_ranges)


def new_token() -> str:
    """A new random API token (shown once; only its hash is kept)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def host_config_path(path: Path | None) -> tuple[Path, bool]:
    """The file to read and whether it was named explicitly (then it must exist)."""
    return chosen_path(path, HOST_CONFIG_ENV, DEFAULT_HOST_CONFIG)


def load_host_config(path: Path | None = None) -> HostConfig:
    """Read the host configuration: `path`, else $EPFIOT_HOST_CONFIG, else /etc/epfiot/host.yaml if present."""
    chosen, explicit = host_config_path(path)
    text = read_host_file(chosen, explicit, "host configuration", HostConfigError)
    return HostConfig() if text is None else parse_host_config(text, str(chosen))


def parse_host_config(text: str, filename: str = "<host config>") -> HostConfig:
    """Parse host configuration YAML; every problem found is reported at once, each with file:line."""
    # The loader's parts, only once there is a file to read: a host without one never pays for them.
    from epfiot.desired.messages import check_document
    from epfiot.desired.nodes import ExpansionBudget, parse_documents
    from epfiot.desired.schema import HOST_SCHEMA_PATH
    from epfiot.desired.sources import SourceText
    from epfiot.wording import counted

    problems: list[ManifestProblem] = []
    source = SourceText(filename, text, Path(filename).parent)
    documents = parse_documents(source, ExpansionBudget(), problems)
    if len(documents) > 1:
        problems.append(ManifestProblem(filename, documents[1].start, "", "the host configuration is one document"))
    config = HostConfig(path=filename)
    if documents and not problems:
        doc = documents[0]
        if not check_document(doc, problems, HOST_SCHEMA_PATH).errors:
            config = _build(doc.data, filename, lambda path: doc.line(path), problems)
    if problems:
        lines = [f"{counted(len(problems), 'problem')} in the host configuration; nothing was changed:"]
        raise HostConfigError("\n".join(lines + [f"  {p}" for p in sorted(problems, key=lambda p: p.line)]))
    return config


def _build(data: dict[str, Any], filename: str, line: Any, problems: list[ManifestProblem]) -> HostConfig:
    from epfiot.units import parse_disk_gib, parse_memory_mib

    def fail(path: tuple[str | int, ...], message: str) -> None:
        problems.append(ManifestProblem(filename, line(path), ".".join(str(p) for p in path), message))

    ranges: list[Network] = []
    for i, text in enumerate(data.get("network_ranges", [])):
        try:
            ranges.append(ipaddress.ip_network(text))
        except ValueError as e:
            fail(("network_ranges", i), f"{text!r} is not a network: {e}")
    tenants: dict[str, Tenant] = {}
    for name, entry in data.get("tenants", {}).items():
        quotas = entry.get("quotas", {})
        sizes: dict[str, int | None] = {"memory": None, "disk": None}
        for key, parse in (("memory", parse_memory_mib), ("disk", parse_disk_gib)):
            if key in quotas:
                try:
                    sizes[key] = parse(quotas[key])
                except ValueError as e:
                    fail(("tenants", name, "quotas", key), str(e))
        tenants[name] = Tenant(
            name,
            frozenset(entry.get("users", [])),
            frozenset(entry.get("groups", [])),
            tuple(Path(p).resolve() for p in entry.get("manifests", [])),
            frozenset(entry.get("tokens", [])),
            Quotas(
                quotas.get("vms"), quotas.get("vcpus"), sizes["memory"], sizes["disk"],
                quotas.get("networks"), quotas.get("things"), quotas.get("usb"),
            ),
        )
    _check_overlaps(tenants, fail)
    admin = data.get("admin", {})
    return HostConfig(
        tenants,
        frozenset(admin.get("users", [])) | {"root"},
        frozenset(admin.get("groups", [])),
        frozenset(admin.get("tokens", [])),
        Path(data["state_dir"]) if "state_dir" in data else None,
        data.get("image_pool"),
        Path(data["image_dir"]) if "image_dir" in data else None,
        Path(data["usb_policy"]) if "usb_policy" in data else None,
        tuple(ranges),
        filename,
    )


def _check_overlaps(tenants: Mapping[str, Tenant], fail: Any) -> None:
    """A user, a token or a manifest directory belongs to one tenant at most."""
    seen_users: dict[str, str] = {}
    seen_tokens: dict[str, str] = {}
    seen_dirs: dict[Path, str] = {}
    for tenant in tenants.values():
        for user in sorted(tenant.users):
            if (other := seen_users.setdefault(user, tenant.name)) != tenant.name:
                fail(("tenants", tenant.name, "users"), f"user {user!r} is also a user of tenant {other!r}")
        for token in sorted(tenant.token_hashes):
            if (other := seen_tokens.setdefault(token, tenant.name)) != tenant.name:
                fail(("tenants", tenant.name, "tokens"), f"a token hash is also one of tenant {other!r}")
        for directory in tenant.manifests:
            for known, other in seen_dirs.items():
                if directory == known or known in directory.parents or directory in known.parents:
                    fail(("tenants", tenant.name, "manifests"), f"{directory} overlaps {known} of tenant {other!r}")
            seen_dirs[directory] = tenant.name
