"""epfiot version: epfiot's version and those of what it runs on, as `kubectl version` tells its client's."""

from __future__ import annotations

import argparse
import platform


def versions() -> dict[str, str | None]:
    """Read from the installed distributions' metadata: importing libvirt or aiocoap would cost their start-up."""
    from importlib import metadata

    from epfiot import __version__

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"epfiot": __version__, "python": platform.python_version(), "libvirt-python": installed("libvirt-python"), "aiocoap": installed("aiocoap")}


def run(args: argparse.Namespace) -> int:
    found = versions()
    if args.output == "json":
        from epfiot import render

        print(render.to_json(found))
    else:
        print(f"epfiot {found.pop('epfiot')}")
        for name, version in found.items():
            print(f"  {name} {version or 'not installed'}")
    return 0
