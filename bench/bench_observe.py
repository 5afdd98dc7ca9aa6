"""LibvirtHost.observe over N domains on the libvirt test driver, against the bare read of the same domains
(listAllDomains + XMLDesc of each) in the same run.

"cold" is a first observe in a process (every domain's XML parsed); "warm" is a repeat (as in watch, or the
plan after an apply): domains whose XML and state did not change reuse what the last observe parsed.

    .venv/bin/python bench/bench_observe.py [--vms 1000] [--running half] [--repeat 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import report, timed

from epfiot.libvirt.host import LibvirtHost
from epfiot.model import VmSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--running", choices=["all", "half", "none"], default="half")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "host.xml"
        path.write_text("<node/>")
        host = LibvirtHost.open(f"test://{path}")
        for i in range(args.vms):
            spec = VmSpec(
                owner="bench", stack="bench", name=f"vm{i:04d}", memory_mib=64, vcpu=1, max_memory_mib=128, max_vcpu=2
            )
            host.define_vm(spec, (), uuid=None, seed_digest="")
            if args.running == "all" or (args.running == "half" and i % 2):
                host.start_vm(spec.libvirt_name)
        conn = host.connection

        def bare_read() -> None:
            for dom in conn.listAllDomains():
                dom.XMLDesc(0)

        def cold() -> None:
            host.domains.forget()  # what a new process starts with
            host.observe()

        bare_read()
        host.observe()
        times: dict[str, list[float]] = {"bare": [], "warm": [], "cold": []}
        for _ in range(args.repeat):  # interleaved: a busy machine slows all three alike
            for name, fn in (("bare", bare_read), ("warm", host.observe), ("cold", cold)):
                times[name].append(timed(fn))
        host.observe()
        host.close()
    baseline, warm, first = (statistics.median(times[k]) for k in ("bare", "warm", "cold"))
    best = {k: min(v) for k, v in times.items()}

    print(f"test driver, {args.vms} domains ({args.running} running), median of {args.repeat}")
    print(report("observe, warm", warm, baseline, 1.5, baseline_name="listAllDomains+XMLDesc"))
    print(report("observe, cold", first, baseline, 1.5, baseline_name="listAllDomains+XMLDesc"))
    print(
        f"best runs: bare {best['bare'] * 1000:.1f} ms, warm {best['warm'] * 1000:.1f} ms "
        f"({best['warm'] / best['bare']:.2f}x), cold {best['cold'] * 1000:.1f} ms ({best['cold'] / best['bare']:.2f}x)"
    )


if __name__ == "__main__":
    main()
