"""The operations behind the endpoints, run in the worker thread (epfiot.api.backend) on the live host. Each
returns exactly what the CLI's `-o json` prints, and shows a caller only what epfiot.authz lets it see."""

from __future__ import annotations

from typing import Any

from epfiot import authz, views
from epfiot.api.backend import Live
from epfiot.hostconfig import Caller

Rows = list[dict[str, object]]


def _owned(caller: Caller, rows: Rows) -> Rows:
    return authz.visible(caller, rows, lambda r: r.get("owner"))  # type: ignore[arg-type,return-value]


def vms(live: Live, caller: Caller) -> Rows:
    observed = live.host.observe()
    running = [v.libvirt_name for v in observed.vms if v.managed and v.active and v.ownership is not None and caller.may_touch(v.ownership.owner)]
    observed = live.host.observe(addresses_of=running) if running else observed
    return _owned(caller, views.vm_rows(observed))


def usb(live: Live, caller: Caller) -> Rows:
    from epfiot.usb import held_by

    observed = live.host.observe()
    rows = views.usb_rows(observed.usb, held_by(observed.vms, observed.usb))
    if caller.is_admin:
        return rows
    # A tenant sees the host's devices, but of their holders only its own VMs.
    mine = f"{caller.tenant}."
    return [r | {"held_by": r["held_by"] if str(r["held_by"] or "").startswith(mine) else None} for r in rows]


def networks(live: Live, caller: Caller) -> Rows:
    return _owned(caller, views.network_rows(live.host.observe()))


def images(live: Live, caller: Caller) -> Rows:
    from epfiot.model import is_epfiot_volume

    observed = live.host.observe()
    return [
        {"name": v.name, "pool": v.pool, "capacity_mib": v.capacity_bytes // (1024 * 1024)}
        for v in observed.volumes
        if not is_epfiot_volume(v.name)
    ]


def things(live: Live, caller: Caller) -> Rows:
    return _owned(caller, views.thing_rows(live.registry.things() if live.registry else []))


def events(live: Live, caller: Caller, since: float | None, kind: str | None) -> list[dict[str, Any]]:
    found = [e.as_dict() for e in live.events.since(since)]
    if kind:
        found = [e for e in found if e["kind"] == kind or str(e["kind"]).startswith(kind + ".")]
    if caller.is_admin:
        return found
    return [e for e in found if _event_owner(str(e["subject"])) == caller.tenant]


def _event_owner(subject: str) -> str | None:
    """The owner in an event's subject ("vm/alice/x", "thing/alice/sensor"); None for host-wide ones."""
    parts = subject.split("/")
    return parts[1] if len(parts) >= 3 else None


READS = {"vms": vms, "usb": usb, "networks": networks, "images": images, "things": things}
