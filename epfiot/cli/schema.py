"""epfiot schema: the manifest JSON Schema, for editors and validators."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from epfiot.desired.schema import SCHEMA_PATH

    sys.stdout.write(SCHEMA_PATH.read_text())
    return 0
