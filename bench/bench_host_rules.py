"""The cost of the host-wide checks: a no-op plan of one tenant's stack (100 VMs, 20 networks, 100 things) on a
host shared with 9 other tenants (900 more VMs, 180 networks, 900 things), with the host's rules (overlaps,
ranges, quotas, endpoints) against the same plan without them, in the same run. Pure: no libvirt.

    .venv/bin/python bench/bench_host_rules.py [--tenants 10] [--repeat 41]
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report, timed

from epfiot.addressing import dhcp_range
from epfiot.hostconfig import Quotas
from epfiot.model import (
    Desired,
    NetworkMode,
    NetworkSpec,
    Observed,
    ObservedNetwork,
    ObservedThing,
    ObservedVm,
    Ownership,
    PowerState,
    StackSpec,
    ThingSpec,
    VmSpec,
)
from epfiot.plan import HostRules, make_plan

VMS, NETWORKS, THINGS = 100, 20, 100


def tenant(index: int) -> Desired:
    owner = f"t{index}"
    nets = tuple(
        NetworkSpec(owner, "s", f"n{i}", NetworkMode.ROUTE, f"10.{128 + index}.{i}.0/24") for i in range(NETWORKS)
    )
    vms = tuple(
        VmSpec(owner, "s", f"vm{i:03d}", 64, 1, 64, 2, network=f"n{i % NETWORKS}") for i in range(VMS)
    )
    things = tuple(ThingSpec(owner, "s", f"{owner}-thing{i}", server="coap://192.0.2.1:5683") for i in range(THINGS))
    return Desired((StackSpec(owner, "s"),), vms, nets, things)


def observed_of(desired: Desired) -> Observed:
    vms = tuple(
        ObservedVm(v.libvirt_name, f"uuid-{v.libvirt_name}", Ownership(v.owner, v.stack, v.name, v.spec_hash(), "",
                   v.shutdown_timeout), PowerState.RUNNING, v.vcpu, v.max_vcpu, v.memory_mib, v.max_memory_mib,
                   network=f"{v.owner}.{v.network}", mac=v.mac, live_vcpu=v.vcpu, live_memory_mib=v.memory_mib,
                   live_max_memory_mib=v.max_memory_mib, live_max_vcpu=v.max_vcpu)
        for v in desired.vms
    )
    nets = tuple(
        ObservedNetwork(n.libvirt_name, Ownership(n.owner, n.stack, n.name, n.spec_hash()), True, n.mode, n.cidr,
                        *dhcp_range(n), bridge=n.bridge)
        for n in desired.networks
    )
    things = tuple(
        ObservedThing(t.name, t.owner, t.stack, None, t.server, t.lifetime, t.binding, t.deletes, t.writes)
        for t in desired.things
    )
    return Observed(vms=vms, networks=nets, things=things, image_pool="images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=41)
    args = parser.parse_args()

    everyone = [tenant(i) for i in range(args.tenants)]
    parts = [observed_of(d) for d in everyone]
    host = Observed(
        vms=tuple(v for p in parts for v in p.vms),
        networks=tuple(n for p in parts for n in p.networks),
        things=tuple(t for p in parts for t in p.things),
        image_pool="images",
    )
    mine = everyone[0]
    rules = HostRules(
        asker="t0",
        tenants=frozenset(f"t{i}" for i in range(args.tenants)),
        network_ranges=(ipaddress.ip_network("10.0.0.0/8"),),
        quotas={"t0": Quotas(vms=VMS, vcpus=VMS, memory_mib=64 * VMS, disk_gib=100, networks=NETWORKS, things=THINGS, usb=0)},
    )
    for plan in (make_plan(mine, host), make_plan(mine, host, rules=rules)):
        assert not plan.problems and not plan.has_changes, (plan.problems, plan.changes[:3])

    # Interleaved, so that a busy machine slows both alike; medians of each.
    pairs = [(timed(lambda: make_plan(mine, host)), timed(lambda: make_plan(mine, host, rules=rules))) for _ in range(args.repeat)]
    without = statistics.median(p[0] for p in pairs)
    with_rules = statistics.median(p[1] for p in pairs)
    print(
        f"host: {len(host.vms)} VMs, {len(host.networks)} networks, {len(host.things)} things of {args.tenants} tenants; "
        f"plan of one tenant's stack ({VMS} VMs, {NETWORKS} networks, {THINGS} things)"
    )
    print(report("no-op plan with host rules", with_rules, without, 1.5, baseline_name="without rules"))


if __name__ == "__main__":
    main()
