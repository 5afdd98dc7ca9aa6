"""epfiot get: VMs, USB devices, images, networks and things, as tables, JSON or YAML."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from epfiot.cli.common import service
from epfiot.errors import EpfiotError, UsageError


def run(args: argparse.Namespace) -> int:
    from epfiot import views

    resource = "vms" if args.resource == "vm" else args.resource
    columns: Sequence[str]
    owner = args.name.partition("/")[0] if args.name and "/" in args.name else args.owner
    svc, caller = service(args)
    wide = args.output == "wide"
    # The host's rows from an observation made for this command (svc.observe): the CLI reads the live host.
    if resource == "things":
        rows = svc.things(caller, owner)
        columns = views.THING_WIDE_COLUMNS if wide else views.THING_COLUMNS
    elif resource == "vms":
        rows = svc.vms(caller, svc.observe(), owner)
        columns = views.VM_WIDE_COLUMNS if wide else views.VM_COLUMNS
    elif resource == "usb":
        rows = svc.usb(caller, svc.observe())
        columns = views.USB_COLUMNS
    elif resource == "networks":
        rows = svc.networks(caller, svc.observe(), owner)
        columns = views.NETWORK_COLUMNS
    else:
        rows = svc.images(caller, svc.observe())
        columns = views.IMAGE_COLUMNS
    return present(args, resource, rows, columns)


def present(args: argparse.Namespace, resource: str, rows: list[dict[str, object]], columns: Sequence[str] | None = None) -> int:
    """Print `rows` (the caller's, of `owner` when one was given) as asked; the exit code. The CLI through
    the service's socket (epfiot.api.client) prints with this too."""
    from epfiot import render, views

    name = args.name.partition("/")[2] if args.name and "/" in args.name else args.name
    if columns is None:
        owner = args.name.partition("/")[0] if args.name and "/" in args.name else args.owner
        if owner is not None and resource not in ("usb", "images"):
            rows = [r for r in rows if r.get("owner") == owner]
        wide = args.output == "wide"
        columns = {
            "vms": views.VM_WIDE_COLUMNS if wide else views.VM_COLUMNS,
            "things": views.THING_WIDE_COLUMNS if wide else views.THING_COLUMNS,
            "usb": views.USB_COLUMNS,
            "networks": views.NETWORK_COLUMNS,
            "images": views.IMAGE_COLUMNS,
        }[resource]
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
