"""A new VM on debian-12.qcow2, from `epfiot apply` to SSH answering, against the floor: the same guest
(the same domain XML, seed ISO, base image and network) defined and started by a plain libvirt-python
script, in the same run. And what each new VM costs on disk: epfiot's overlay and seed against what the
original did per VM, a full copy of the base image plus an ISO made by an external tool.

    make image && scripts/in-netns.sh .venv/bin/python bench/bench_guest.py [--rounds 2]

Runs in the libvirt daemon's network namespace (scripts/in-netns.sh): it logs in to the guests there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt
import yaml

URI = "qemu:///system"
POOL = "epfiot-images"
IMAGE = "debian-12.qcow2"
OWNER = "benchguest"
ADDRESS = "10.150.0.20"
EPFIOT = [sys.executable, "-m", "epfiot"]


def manifest(directory: Path, key: Path) -> Path:
    stack = {
        "version": 1, "stack": OWNER, "owner": OWNER,
        "networks": [{"name": "net", "mode": "route", "cidr": "10.150.0.0/24"}],
        "vms": [{
            "name": "vm", "image": IMAGE, "memory": "512MiB", "vcpu": 1, "state": "running",
            "shutdown_timeout": "5s", "network": "net", "address": ADDRESS,
            "credentials": {"user": "bench", "ssh_authorized_keys": [Path(f"{key}.pub").read_text().strip()]},
        }],
    }
    path = directory / "stack.yaml"
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    return path


def ssh_answers(key: Path) -> bool:
    return subprocess.run(
        ["ssh", "-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "ConnectTimeout=2", "-i", str(key), f"bench@{ADDRESS}", "true"],
        stdin=subprocess.DEVNULL, capture_output=True,
    ).returncode == 0


def until_ssh(key: Path, started: float, deadline: float = 600) -> float:
    while not ssh_answers(key):
        if time.perf_counter() - started > deadline:
            raise SystemExit("the guest did not answer SSH in 10 minutes")
        time.sleep(0.5)
    return time.perf_counter() - started


def epfiot(state: Path, *argv: str) -> None:
    subprocess.run([*EPFIOT, "--state-dir", str(state), *argv], check=True, capture_output=True)


def with_epfiot(stack: Path, state: Path, key: Path) -> tuple[float, dict[str, object]]:
    conn = libvirt.open(URI)  # a connection per phase: a daemon restarted meanwhile costs nothing
    started = time.perf_counter()
    epfiot(state, "apply", "-f", str(stack))
    created = time.perf_counter() - started
    pool = conn.storagePoolLookupByName(POOL)
    overlay = pool.storageVolLookupByName(f"{OWNER}.vm.epfiot-disk.qcow2")
    seed = pool.storageVolLookupByName(f"{OWNER}.vm.epfiot-seed.iso")
    recorded = {
        "domain": conn.lookupByName(f"{OWNER}.vm").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
        "network": conn.networkLookupByName(f"{OWNER}.net").XMLDesc(0),
        "overlay": overlay.XMLDesc(0),
        "seed": Path(seed.path()).read_bytes(),
        "bytes": overlay.info()[2] + seed.info()[2],  # allocated before the guest wrote anything
        "create_s": created,
    }
    conn.close()
    took = until_ssh(key, started)
    epfiot(state, "delete", "-f", str(stack), "--force", "-y")
    return took, recorded


def with_libvirt(recorded: dict[str, object], key: Path) -> float:
    """The floor: the calls a script makes to start the same guest, nothing else."""
    started = time.perf_counter()
    conn = libvirt.open(URI)
    pool = conn.storagePoolLookupByName(POOL)
    net = conn.networkCreateXML(str(recorded["network"]))
    overlay = pool.createXML(str(recorded["overlay"]), 0)
    seed_bytes = bytes(recorded["seed"])  # type: ignore[call-overload]
    seed = pool.createXML(
        f"<volume><name>{OWNER}.vm.epfiot-seed.iso</name><capacity>{len(seed_bytes)}</capacity>"
        "<target><format type='raw'/></target></volume>", 0,
    )
    stream = conn.newStream(0)
    seed.upload(stream, 0, len(seed_bytes), 0)
    stream.send(seed_bytes)
    stream.finish()
    dom = conn.createXML(str(recorded["domain"]), 0)
    took = until_ssh(key, started)
    dom.destroy()
    net.destroy()
    overlay.delete(0)
    seed.delete(0)
    conn.close()
    return took


def original_per_vm(base: Path, work: Path) -> tuple[float, int, str]:
    """A full copy of the base image plus a seed ISO from an external tool (genisoimage, if installed)."""
    started = time.perf_counter()
    shutil.copyfile(base, work / "copy.qcow2")
    files = work / "seed"
    files.mkdir(exist_ok=True)
    (files / "user-data").write_bytes(b"#cloud-config\n")
    (files / "meta-data").write_bytes(b"instance-id: bench\n")
    tool = shutil.which("genisoimage") or shutil.which("mkisofs")
    if tool:
        subprocess.run([tool, "-quiet", "-output", str(work / "seed.iso"), "-volid", "cidata", "-joliet", "-rock",
                        str(files / "user-data"), str(files / "meta-data")], check=True)
    took = time.perf_counter() - started
    written = sum(p.stat().st_blocks * 512 for p in work.glob("*.*") if p.is_file())
    return took, written, "full copy + genisoimage" if tool else "full copy (no genisoimage installed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    conn = libvirt.open(URI)
    base = Path(conn.storagePoolLookupByName(POOL).storageVolLookupByName(IMAGE).path())
    conn.close()
    with tempfile.TemporaryDirectory(prefix="epfiot-bench-guest-") as tmp:
        work = Path(tmp)
        key = work / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        stack = manifest(work, key)
        ours: list[float] = []
        floor: list[float] = []
        recorded: dict[str, object] = {}
        for i in range(args.rounds):
            # Alternate who goes first: the second boot of a round finds the base image in the page cache.
            order = ("epfiot", "libvirt") if i % 2 == 0 else ("libvirt", "epfiot")
            for who in order:
                if who == "epfiot":
                    took, recorded = with_epfiot(stack, work / "state", key)
                    ours.append(took)
                else:
                    if not recorded:
                        _, recorded = with_epfiot(stack, work / "state", key)
                    floor.append(with_libvirt(recorded, key))
                print(f"round {i + 1}: {who}: SSH after {(ours if who == 'epfiot' else floor)[-1]:.1f} s", flush=True)
        copy_s, copy_bytes, how = original_per_vm(base, work)
    a, b = statistics.median(ours), statistics.median(floor)
    print(f"apply -> SSH answers: epfiot {a:.1f} s vs plain libvirt-python {b:.1f} s -> {a / b:.3f}x "
          f"({'meets' if a / b <= 1.05 else 'MISSES'} target <= 1.05x; {args.rounds} round(s), medians)")
    mine = int(recorded["bytes"])  # type: ignore[call-overload]
    print(f"per new VM on disk: epfiot overlay + seed {mine / 1024:.0f} KiB in {float(recorded['create_s']):.2f} s "  # type: ignore[arg-type]
          f"(the whole apply) vs {how} {copy_bytes / 2**20:.0f} MiB in {copy_s:.2f} s "
          f"-> {copy_bytes / max(mine, 1):.0f}x fewer bytes written")


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("run as root (the guests' network is in the daemon's namespace)")
    main()
