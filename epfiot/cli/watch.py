"""epfiot watch: keep the host matching the manifests for as long as it runs (epfiot.watch)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from epfiot import console
    from epfiot.watch.daemon import run_watch

    return run_watch(args, api_routes=console.setup)  # the web console, on the API's HTTP listener
