"""What a caller may read of a host (`epfiot get`, `epfiot events`), as the plain data `-o json` prints: the
read half of epfiot.service.Service, through the same authorization layer (epfiot.authz). A tenant sees only
its own; another tenant's VM asked for by name "does not exist", exactly as a missing one."""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from epfiot import authz
from epfiot.errors import EpfiotError
from epfiot.hostconfig import Caller

if TYPE_CHECKING:
    from epfiot.host import Host
    from epfiot.model import Observed
    from epfiot.registry import Registry

HELD_BY_ANOTHER = "(held)"  # what a tenant sees of a USB device another one holds: taken, not by whom


class NotFound(EpfiotError):
    """The resource does not exist, or is not the caller's to see (the same answer, on purpose)."""

    exit_code = 1


class HostQueries:
    """The queries of a Service: it gives the state directory and opens the host and the registry."""

    state_dir: Path

    def _host(self) -> contextlib.AbstractContextManager[Host]:
        raise NotImplementedError

    def _registry(self, *, create: bool) -> Registry | None:
        raise NotImplementedError

    # --- queries (epfiot get, epfiot events) ------------------------------------------------------------
    # The host's rows are made from an Observed that the caller passes: the CLI a fresh one (`observe`),
    # the API watch's latest (epfiot.watch.snapshot). The same functions either way, so both answer alike.

    def observe(self) -> Observed:
        """The host as it is now, with the addresses of its running epfiot VMs (what the rows show)."""
        with self._host() as host:
            return with_addresses(host, host.observe())

    def vms(self, caller: Caller, observed: Observed, owner: str | None = None) -> list[dict[str, object]]:
        return vm_rows(caller, observed, owner)

    def vm(self, caller: Caller, observed: Observed, owner: str, name: str) -> dict[str, object]:
        return vm_row(caller, observed, owner, name)

    def usb(self, caller: Caller, observed: Observed) -> list[dict[str, object]]:
        return usb_rows(caller, observed)

    def networks(self, caller: Caller, observed: Observed, owner: str | None = None) -> list[dict[str, object]]:
        return network_rows(caller, observed, owner)

    def images(self, caller: Caller, observed: Observed) -> list[dict[str, object]]:
        return image_rows(observed)

    def things(self, caller: Caller, owner: str | None = None) -> list[dict[str, object]]:
        from epfiot import views

        registry = self._registry(create=False)
        if registry is None:
            return []
        try:
            rows = views.thing_rows(registry.things(), owner=owner)
        finally:
            registry.close()
        return authz.visible(caller, rows, _owner)

    def events(
        self,
        caller: Caller,
        since: float | None = None,
        kind: str | None = None,
        owner: str | None = None,
        kinds: Collection[str] = (),
    ) -> list[dict[str, object]]:
        """Events of the last `since` seconds (None: all), of `kind` (exact, or a prefix ending in ".") and of
        `kinds` (exact; one the log does not know is a UsageError), of `owner`; a tenant's own only
        (authz.event_owner)."""
        from epfiot.errors import UsageError
        from epfiot.eventlog import KINDS, EventLog

        path = self.state_dir / "events.db"
        log = EventLog(path) if path.exists() else None
        try:
            known = log.known_kinds() if log is not None else sorted(KINDS)
            if unknown := [k for k in kinds if k not in known]:
                raise UsageError(f"unknown event kind {unknown[0]!r}; the log records: {', '.join(known)}")
            events = [] if log is None else log.since(since, kinds=kinds)
        finally:
            if log is not None:
                log.close()
        if kind is not None:
            events = [e for e in events if e.kind == kind or (kind.endswith(".") and e.kind.startswith(kind))]
        if owner is not None:
            events = [e for e in events if authz.event_owner(e) == owner]
        return [e.as_dict() for e in authz.visible(caller, events, authz.event_owner)]


def with_addresses(host: Host, observed: Observed) -> Observed:
    """`observed` with the addresses of every running epfiot VM it does not know them of yet (an observation
    made for a reconcile has only those its plan needs)."""
    from dataclasses import replace

    missing = [v.libvirt_name for v in observed.vms if v.managed and v.active and v.libvirt_name not in observed.vm_addresses]
    if not missing:
        return observed
    return replace(observed, vm_addresses={**observed.vm_addresses, **{name: host.vm_addresses(name) for name in missing}})


def vm_rows(caller: Caller, observed: Observed, owner: str | None = None) -> list[dict[str, object]]:
    """`epfiot get vms -o json`: the caller's VMs (of `owner`, when given)."""
    from epfiot import views

    return authz.visible(caller, views.vm_rows(observed, owner=owner), _owner)


def vm_row(caller: Caller, observed: Observed, owner: str, name: str) -> dict[str, object]:
    """One VM; NotFound for one that is not there or not the caller's (the same answer)."""
    what = f"vm {owner}/{name}"
    try:
        authz.require(caller, owner, what)
    except authz.NotAllowed as refused:
        raise NotFound(str(refused)) from None
    for row in vm_rows(caller, observed, owner):
        if row["name"] == name:
            return row
    raise NotFound(f"{what} does not exist")


def usb_rows(caller: Caller, observed: Observed) -> list[dict[str, object]]:
    """The host's USB devices; for a tenant, `held_by` names only its own VMs (another's: "(held)")."""
    from epfiot import views
    from epfiot.usb import held_by

    holders = held_by(observed.vms, observed.usb)
    if not caller.is_admin:
        mine = f"{caller.tenant}/"
        holders = {dev: (label if label.startswith(mine) else HELD_BY_ANOTHER) for dev, label in holders.items()}
    return views.usb_rows(observed.usb, holders)


def network_rows(caller: Caller, observed: Observed, owner: str | None = None) -> list[dict[str, object]]:
    from epfiot import views

    return authz.visible(caller, views.network_rows(observed, owner=owner), _owner)


def image_rows(observed: Observed) -> list[dict[str, object]]:
    """The base images of the pool: the host's, seen by all."""
    from epfiot.model import is_epfiot_volume

    return [
        {"name": v.name, "pool": v.pool, "capacity_mib": v.capacity_bytes // (1024 * 1024)}
        for v in observed.volumes
        if not is_epfiot_volume(v.name)
    ]


def _owner(row: dict[str, object]) -> str | None:
    owner = row.get("owner")
    return owner if isinstance(owner, str) else None
