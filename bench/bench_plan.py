"""No-op plan over 1,000 managed VMs on the libvirt test driver, against the bare cost of reading the same
live state (listAllDomains + XMLDesc of each) in the same run; and the time to apply 100 new VMs.

    .venv/bin/python bench/bench_plan.py [--vms 1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median_of, report

from epfiot.libvirt.host import LibvirtHost
from epfiot.model import Desired, StackSpec, VmSpec
from epfiot.plan import Options
from epfiot.reconcile import apply_plan, observe, plan_changes

HOST_XML = "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads><active>2</active><mhz>2000</mhz><model>x86_64</model></cpu><memory>268435456</memory></node>"


def desired(count: int, owner: str = "bench", stack: str = "bench") -> Desired:
    vms = tuple(
        VmSpec(owner=owner, stack=stack, name=f"vm{i:04d}", memory_mib=64, vcpu=1, max_memory_mib=64, max_vcpu=2)
        for i in range(count)
    )
    return Desired(stacks=(StackSpec(owner, stack),), vms=vms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "host.xml"
        path.write_text(HOST_XML)
        host = LibvirtHost.open(f"test://{path}")
        options = Options()
        want = desired(args.vms)

        started = time.perf_counter()
        plan = plan_changes(want, observe(host, None, want), options, None)
        result = apply_plan(plan, want, host, None, options, None, parallel=1)
        created = time.perf_counter() - started
        assert not result.failed, result.failed[:3]

        conn = host.connection
        def bare_read() -> None:
            for dom in conn.listAllDomains():
                dom.XMLDesc(0)

        # Each run plans fresh desired state, as a new process would have it: no spec digest computed yet.
        fresh = [desired(args.vms) for _ in range(args.repeat + 1)]

        fresh += [desired(args.vms) for _ in range(args.repeat)]

        def noop_plan() -> None:
            want = fresh.pop()
            plan = plan_changes(want, observe(host, None, want), options, None)
            assert not plan.has_changes, [a for a in plan.actions if a.verb != "noop"][:3]

        def noop_plan_cold() -> None:
            host.domains.forget()  # a new process parses every domain's XML; watch re-parses only what changed
            noop_plan()

        bare_read()
        noop_plan()  # warm both paths
        baseline = median_of(bare_read, args.repeat)
        measured = median_of(noop_plan, args.repeat)
        cold = median_of(noop_plan_cold, args.repeat)

        more = desired(args.new, stack="bench2", owner="bench2")
        started = time.perf_counter()
        plan = plan_changes(more, observe(host, None, more), options, None)
        result = apply_plan(plan, more, host, None, options, None, parallel=8)
        apply_new = time.perf_counter() - started
        assert not result.failed
        host.close()

    print(f"test driver, {args.vms} managed VMs, median of {args.repeat}")
    print(report("no-op plan, repeated (watch)", measured, baseline, 1.5, baseline_name="listAllDomains+XMLDesc"))
    print(report("no-op plan, first in a process", cold, baseline, 1.5, baseline_name="listAllDomains+XMLDesc"))
    print(f"apply {args.vms} new VMs (define + start): {created:.2f} s")
    print(f"apply {args.new} new VMs next to them (define + start): {apply_new * 1000:.0f} ms")


if __name__ == "__main__":
    main()
