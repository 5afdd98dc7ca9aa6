"""The test set-up itself: the real daemon runs a guest (test-driver hosts with USB devices: tests/hosts/usbhost.py)."""

from __future__ import annotations

import os
import time

import libvirt
import pytest


@pytest.mark.daemon
def test_a_tiny_guest_runs_on_the_real_daemon(system_uri: str, tenant: str) -> None:
    virt_type = "kvm" if os.path.exists("/dev/kvm") else "qemu"
    name = f"{tenant}.smoke"
    xml = f"""<domain type='{virt_type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
</domain>"""
    conn = libvirt.open(system_uri)
    try:
        dom = conn.defineXML(xml)
        dom.create()
        state, _reason = dom.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING
        started = time.monotonic()
        dom.destroy()
        print(f"\ndestroy took {time.monotonic() - started:.2f}s")
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        assert name not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()
