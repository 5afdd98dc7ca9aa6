"""Authorization: what a Caller (epfiot.hostconfig) may see and change. One layer for every way in: the CLI
run by root, `epfiot watch` applying a tenant's manifest directories, the Unix-socket API and the HTTP API.

The rules:
- The administrator sees and changes everything.
- A tenant's manifests may name only that tenant as `owner:`; a document naming another owner is a
  manifest problem at its file and line, and nothing of the load is applied (a broken manifest is rejected
  whole). Since a plan prunes only inside the (owner, stack) scopes its manifests declare, a tenant's plan
  then never touches another tenant's resources.
- A tenant sees only its own resources in lists, events and plans; asking for another tenant's resource by
  name gets the same answer as for one that does not exist, so nothing is learned of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from epfiot.errors import EpfiotError, ManifestProblem
from epfiot.hostconfig import Caller, HostConfig
from epfiot.model import Desired

if TYPE_CHECKING:
    from epfiot.eventlog import Event

T = TypeVar("T")


class NotAllowed(EpfiotError):
    """The caller may not do this (an unknown user, a tenant asking for what is not its own)."""

    exit_code = 1


def foreign_owners(desired: Desired, caller: Caller) -> list[ManifestProblem]:
    """A problem for every stack of `desired` that `caller` may not touch."""
    return [
        ManifestProblem(
            stack.source.file,
            stack.owner_line or stack.source.line,
            "owner",
            f"{stack.owner!r} is not yours: you act as tenant {caller.tenant!r}, so owner: must be {caller.tenant!r}",
        )
        for stack in desired.stacks
        if not caller.may_touch(stack.owner)
    ]


def visible(caller: Caller, items: Iterable[T], owner: Callable[[T], str | None]) -> list[T]:
    """The items `caller` may see: all for the administrator; for a tenant, those `owner` says are its own
    (an item with no owner, such as an unmanaged domain, is the administrator's only)."""
    if caller.is_admin:
        return list(items)
    return [item for item in items if owner(item) == caller.tenant]


def require(caller: Caller, owner: str, what: str) -> None:
    """Raises NotAllowed unless `caller` may touch `owner`'s resources; the message is the one for a missing
    resource (`what`: "vm bob/x"), so a tenant cannot tell another's from one that does not exist."""
    if not caller.may_touch(owner):
        raise NotAllowed(f"{what} does not exist")


def event_owner(event: Event) -> str | None:
    """Whose an event is: the owner in its subject ("vm/alice/web", "thing/alice/t1"), else its `owner` field
    (the server's events about a registered thing), else its `tenant` field (watch's events about one
    tenant's manifests); None: the host's (the administrator's only). The event log's writers keep to these
    forms (epfiot.eventlog, epfiot.watch.reconciler)."""
    parts = event.subject.split("/")
    if len(parts) == 3 and parts[0] in ("vm", "network", "thing", "stack"):
        return parts[1]
    owner = event.fields.get("owner")
    if isinstance(owner, str) and owner:
        return owner
    tenant = event.fields.get("tenant")
    return tenant if isinstance(tenant, str) else None


def local_caller(config: HostConfig, uid: int | None = None) -> Caller:
    """The caller a local Unix user (default: this process's real user) acts as; NotAllowed for a user who
    is neither a tenant's nor an administrator."""
    import os
    import pwd

    uid = os.getuid() if uid is None else uid
    caller = config.caller_for_uid(uid)
    if caller is None:
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = f"uid {uid}"
        raise NotAllowed(f"user {user} is neither a tenant nor an administrator in {config.path}")
    return caller
