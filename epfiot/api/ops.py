"""The reads behind the GET endpoints: epfiot.service's caller-scoped queries, each returning exactly what the
CLI's `-o json` prints, on the live host (epfiot.api.backend)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from epfiot.hostconfig import Caller
from epfiot.service import Service

Rows = list[dict[str, Any]]

READS: dict[str, Callable[[Service, Caller], Rows]] = {
    "vms": lambda s, c: s.vms(c),
    "usb": lambda s, c: s.usb(c),
    "networks": lambda s, c: s.networks(c),
    "images": lambda s, c: s.images(c),
    "things": lambda s, c: s.things(c),
}
