"""The reads behind the GET endpoints: epfiot.service's caller-scoped queries, each returning exactly what the
CLI's `-o json` prints. The host's are rendered from an observation (watch's latest: epfiot.snapshot); things
are read from the registry as it is (their observation is None)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from epfiot.hostconfig import Caller
from epfiot.model import Observed
from epfiot.service import Service

Rows = list[dict[str, Any]]

OF_THE_HOST = frozenset({"vms", "usb", "networks", "images"})  # rendered from an observation of the host


def _host(read: Callable[[Service, Caller, Observed], Rows]) -> Callable[[Service, Caller, Observed | None], Rows]:
    def rows(svc: Service, who: Caller, observed: Observed | None) -> Rows:
        assert observed is not None, "a read of the host renders an observation"
        return read(svc, who, observed)

    return rows


READS: dict[str, Callable[[Service, Caller, Observed | None], Rows]] = {
    "vms": _host(lambda s, c, o: s.vms(c, o)),
    "usb": _host(lambda s, c, o: s.usb(c, o)),
    "networks": _host(lambda s, c, o: s.networks(c, o)),
    "images": _host(lambda s, c, o: s.images(c, o)),
    "things": lambda s, c, _: s.things(c),
}
