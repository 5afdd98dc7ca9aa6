"""epfiot adopt on the real libvirt daemon: a QEMU domain made by hand (with the devices libvirt adds to any
domain) is adopted, and a plan with the printed entry changes nothing. Works as one tenant (the `tenant`
fixture), whose domains are removed afterwards."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
import yaml

from epfiot.cli import main

pytestmark = pytest.mark.daemon


def test_a_domain_made_by_hand_is_adopted_and_plans_no_changes(system_uri: str, tenant: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--connect", system_uri, "--state-dir", str(tmp_path / "state"), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    conn = libvirt.open(system_uri)
    try:
        xml = (f"<domain type='qemu'><name>{tenant}.byhand</name><memory unit='MiB'>128</memory>"
               "<currentMemory unit='MiB'>96</currentMemory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
               "<devices><serial type='pty'/><console type='pty'/><memballoon model='virtio'/></devices></domain>")  # fmt: skip
        conn.defineXML(xml).create()
        code, out, err = run("adopt", "vm", f"{tenant}.byhand", "--owner", tenant, "--stack", "s", "-y")
        assert code == 0, err
        manifest = tmp_path / "s.yaml"
        manifest.write_text(yaml.safe_dump({"version": 1, "stack": "s", "owner": tenant, "vms": yaml.safe_load(out)}))
        code, plan, _ = run("plan", "-f", str(manifest), "--detailed-exitcode")
        assert code == 0, plan
    finally:
        conn.close()
