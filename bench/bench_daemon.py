"""On the real daemon (qemu:///system): applying 20 tiny VMs with epfiot against a plain serial
libvirt-python loop making the same calls (define + start; destroy + undefine), in the same run; and a
no-op `epfiot apply` of those VMs as a whole process against a bare `python -c 'import libvirt'`.

    .venv/bin/python bench/bench_daemon.py [--vms 20] [--parallel 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report

from epfiot import cli
from epfiot.libvirt.host import LibvirtHost

URI = "qemu:///system"
EPFIOT = [sys.executable, "-m", "epfiot"]


def manifest(owner: str, count: int) -> str:
    lines = ["version: 1", f"stack: {owner}", f"owner: {owner}", "vms:"]
    for i in range(count):
        lines += [f"  - name: vm{i:02d}", "    memory: 64MiB", "    vcpu: 1", "    state: running"]
    return "\n".join(lines) + "\n"


def serial_loop(host: LibvirtHost, xmls: list[str]) -> tuple[float, float]:
    conn = host.connection
    started = time.perf_counter()
    domains = []
    for xml in xmls:
        dom = conn.defineXML(xml)
        dom.create()
        domains.append(dom)
    create = time.perf_counter() - started
    started = time.perf_counter()
    for dom in domains:
        dom.destroy()
        dom.undefine()
    return create, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="runs of the whole-process comparison")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        common = ["--connect", URI, "--state-dir", str(state)]

        # The serial loop renders the very XML epfiot defines, then makes the same calls one by one.
        from epfiot.desired import load_manifests
        from epfiot.libvirt.domain import render_domain_xml

        base = Path(tmp) / "serial.yaml"
        base.write_text(manifest("benchserial", args.vms))
        host = LibvirtHost.open(URI)
        xmls = [
            render_domain_xml(vm, (), uuid=None, seed_digest="", virt_type=host.virt_type, image_pool=None)
            for vm in load_manifests([str(base)]).vms
        ]
        serial_create, serial_destroy = serial_loop(host, xmls)
        host.close()

        stack = Path(tmp) / "stack.yaml"
        stack.write_text(manifest("benchepfiot", args.vms))
        started = time.perf_counter()
        assert cli.main([*common, "apply", "-f", str(stack), "--parallel", str(args.parallel)]) == 0
        epfiot_create = time.perf_counter() - started

        # Both processes read compiled bytecode, as an installed epfiot does: with PYTHONDONTWRITEBYTECODE set
        # (as in some shells), every run would compile each of epfiot's modules again (500+ ms).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

        def run(cmd: list[str]) -> float:
            started = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
            return time.perf_counter() - started

        noop_cmd, bare_cmd = [*EPFIOT, *common, "apply", "-f", str(stack)], [sys.executable, "-c", "import libvirt"]
        run(noop_cmd), run(bare_cmd)  # not counted: writes the bytecode caches
        noop = statistics.median(run(noop_cmd) for _ in range(args.repeat))
        bare = statistics.median(run(bare_cmd) for _ in range(args.repeat))

        started = time.perf_counter()
        assert cli.main([*common, "delete", "-f", str(stack), "--force", "-y", "--parallel", str(args.parallel)]) == 0
        epfiot_destroy = time.perf_counter() - started

    print(f"real daemon {URI}, {args.vms} tiny VMs, epfiot --parallel {args.parallel}")
    print(report("create (define + start)", epfiot_create, serial_create, 0.5, baseline_name="serial loop"))
    print(report("teardown (destroy + undefine)", epfiot_destroy, serial_destroy, 0.5, baseline_name="serial loop"))
    print(report("no-op apply, whole process", noop, bare, 3.0, baseline_name="python -c 'import libvirt'"))


if __name__ == "__main__":
    main()
