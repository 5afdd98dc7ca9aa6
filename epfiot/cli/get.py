"""epfiot get: VMs, USB devices, images, networks and things, as tables, JSON or YAML."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from epfiot.cli.common import host_only, open_registry, state_dir
from epfiot.errors import EpfiotError, UsageError


def _owner_and_name(args: argparse.Namespace) -> tuple[str | None, str | None]:
    if args.name and "/" in args.name:
        owner, _, name = args.name.partition("/")
        return owner, name
    return args.owner, args.name or None


def columns_of(resource: str, output: str) -> Sequence[str]:
    from epfiot import views

    wide = output == "wide"
    return {
        "vms": views.VM_WIDE_COLUMNS if wide else views.VM_COLUMNS,
        "things": views.THING_WIDE_COLUMNS if wide else views.THING_COLUMNS,
        "usb": views.USB_COLUMNS,
        "networks": views.NETWORK_COLUMNS,
        "images": views.IMAGE_COLUMNS,
    }[resource]


def run(args: argparse.Namespace) -> int:
    from epfiot import views

    resource = "vms" if args.resource == "vm" else args.resource
    owner, _ = _owner_and_name(args)
    if resource == "things":
        registry = open_registry(state_dir(args), create=False)
        rows = views.thing_rows(registry.things() if registry else [], owner=owner)
        if registry:
            registry.close()
    else:
        with host_only(args) as host:
            if resource == "vms":
                observed = host.observe()
                running = [v.libvirt_name for v in observed.vms if v.managed and v.active]
                observed = host.observe(addresses_of=running) if running else observed
                rows = views.vm_rows(observed, owner=owner)
            elif resource == "usb":
                from epfiot.usb import held_by

                observed = host.observe()
                rows = views.usb_rows(observed.usb, held_by(observed.vms, observed.usb))
            elif resource == "networks":
                rows = views.network_rows(host.observe(), owner=owner)
            else:
                from epfiot.model import is_epfiot_volume

                observed = host.observe()
                rows = [
                    {"name": v.name, "pool": v.pool, "capacity_mib": v.capacity_bytes // (1024 * 1024)}
                    for v in observed.volumes
                    if not is_epfiot_volume(v.name)
                ]
    return present(args, resource, rows)


def present(args: argparse.Namespace, resource: str, rows: list[dict[str, object]]) -> int:
    """Print `rows` (all of the resource: the owner and name given are applied here) as asked; the exit code."""
    from epfiot import render

    owner, name = _owner_and_name(args)
    if owner is not None and resource != "usb" and resource != "images":
        rows = [r for r in rows if r.get("owner") == owner]
    columns = columns_of(resource, args.output)
    if name is not None:
        rows = [r for r in rows if r.get("name") == name]
        if not rows:
            raise EpfiotError(f"{resource[:-1] if resource != 'usb' else resource} {args.name!r} not found")
    if args.fields:
        columns = tuple(f.strip() for f in args.fields.split(",") if f.strip())
        known = set().union(*(r.keys() for r in rows)) if rows else set(columns)
        if unknown := [c for c in columns if c not in known]:
            raise UsageError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        rows = render.select_fields(rows, columns)
    if args.output == "json":
        print(render.to_json(rows))
    elif args.output == "yaml":
        print(render.to_yaml(rows), end="")
    else:
        print(render.table(rows, columns))
    return 0
