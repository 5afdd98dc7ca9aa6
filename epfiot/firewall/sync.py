"""The firewall action's step: the table rewritten from the host's managed networks as they are now.

The networks are read under the writers' lock (epfiot.firewall.nft.writer_lock), right before the table is
compared and written: two runs against one daemon (two state directories) may each define networks, and
whichever writes last has read them all. The step writes nothing when the table already says exactly that.
"""

from __future__ import annotations

from epfiot.errors import HostError
from epfiot.firewall import nft
from epfiot.firewall.ruleset import Isolation, managed_bridges, render
from epfiot.host import Host


def sync_firewall(host: Host, adding: tuple[tuple[str, str], ...] = ()) -> bool:
    """Write the table for the host's managed networks and the bridges `adding` (bridge, owner) of networks
    about to be defined. True when it was written. HostError (permanent) when it cannot be kept here."""
    with nft.writer_lock():
        networks = host.observe().networks
        try:
            wanted = Isolation.of({**managed_bridges(networks), **dict(adding)})
        except ValueError as error:
            raise HostError(f"firewall: {error}", permanent=True) from error
        if not nft.available():
            if len(wanted.tenants) > 1:
                raise HostError(
                    f"{len(wanted.tenants)} tenants have networks, but nft is not installed: "
                    "install nftables to keep them apart",
                    permanent=True,
                )
            return False
        running = [n.bridge for n in networks if n.ownership is not None and n.active and n.bridge]
        if absent := nft.absent_bridges(running):
            raise HostError(
                f"the bridges {', '.join(absent)} are not in this network namespace: run epfiot in the "
                "libvirt daemon's namespace (scripts/in-netns.sh)",
                permanent=True,
            )
        if nft.read().isolation == wanted:
            return False
        nft.write(render(wanted))
        return True
