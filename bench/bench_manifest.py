"""Loading a manifest of 1,000 VMs (YAML with lines, schema, meaning checks, frozen desired state) against the
bare parse of the same file by yaml.safe_load in the same run, and against libyaml's parser (CSafeLoader).

    .venv/bin/python bench/bench_manifest.py [--vms 1000] [--repeat 9]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml
from common import median_of

from epfiot.desired import load_manifests


def manifest_text(count: int) -> str:
    lines = ["version: 1", "stack: many", "owner: bench", "networks:", "  - {name: net, cidr: 10.200.0.0/16}", "vms:"]
    for i in range(count):
        lines += [
            f"  - name: vm{i:04d}",
            "    memory: 64MiB",
            "    max_memory: 128MiB",
            "    vcpu: 1",
            "    max_vcpu: 2",
            "    shutdown_timeout: 30s",
            "    network: net",
            f"    address: 10.200.{i // 200}.{i % 200 + 2}",
            "    devices:",
            f'      - usb: {{vendor: "18d1", product: "9302", serial: S{i}}}',
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "many.yaml"
        path.write_text(manifest_text(args.vms))
        size = path.stat().st_size
        assert len(load_manifests([str(path)], env={}).vms) == args.vms  # warm: schema compiled, modules imported

        loaded = median_of(lambda: load_manifests([str(path)], env={}), args.repeat)
        safe_load = median_of(lambda: yaml.safe_load(path.read_text()), args.repeat)
        c_loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        c_load = median_of(lambda: yaml.load(path.read_text(), Loader=c_loader), args.repeat)

    print(f"manifest of {args.vms} VMs ({size:,} bytes), median of {args.repeat}:")
    print(f"  load_manifests:          {loaded * 1000:7.1f} ms")
    print(f"  yaml.safe_load:          {safe_load * 1000:7.1f} ms -> load_manifests / safe_load = {loaded / safe_load:.2f}x")
    print(f"  yaml.load(CSafeLoader):  {c_load * 1000:7.1f} ms -> load_manifests / CSafeLoader = {loaded / c_load:.2f}x")


if __name__ == "__main__":
    main()
