"""Choosing the domain type on the real daemon: a KVM that cannot boot a guest kernel is not chosen.

Here /dev/kvm is the PVM backend (kvm_pvm), which fails a stock Debian kernel in early boot and leaves the
domain paused: new VMs must run under TCG instead, with a warning that says why.
"""

from __future__ import annotations

import logging
from pathlib import Path

import libvirt
import pytest

from epfiot.libvirt import connection
from epfiot.libvirt.host import LibvirtHost

pytestmark = pytest.mark.daemon


def offers_kvm(uri: str) -> bool:
    conn = libvirt.open(uri)
    try:
        conn.getDomainCapabilities(None, None, None, "kvm", 0)
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def test_an_unfit_kvm_means_tcg_with_a_warning(
    system_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert offers_kvm(system_uri), "these tests need a daemon that offers KVM"
    monkeypatch.delenv(connection.VIRT_TYPE_ENV, raising=False)
    loaded = tmp_path / "kvm_unfit"
    loaded.mkdir()
    monkeypatch.setattr(connection, "KVM_UNFIT_MODULES", {str(loaded): "a module that cannot run guests"})
    with caplog.at_level(logging.WARNING, logger="epfiot.libvirt"):
        host = LibvirtHost.open(system_uri)
        try:
            assert not caplog.records  # opening defines nothing: no detection, no warning
            assert host.virt_type == "qemu"
        finally:
            host.close()
    [record] = caplog.records
    assert "a module that cannot run guests" in record.getMessage() and "TCG" in record.getMessage()


def test_a_fit_kvm_is_chosen(system_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(connection.VIRT_TYPE_ENV, raising=False)
    monkeypatch.setattr(connection, "KVM_UNFIT_MODULES", {str(tmp_path / "not-loaded"): "never"})
    conn = libvirt.open(system_uri)
    try:
        assert connection.virt_type(conn) == "kvm"
        assert connection.virt_type(conn, "qemu") == "qemu"  # asked for: no detection
    finally:
        conn.close()


def test_this_machines_pvm_kvm_is_recognised(system_uri: str) -> None:
    conn = libvirt.open(system_uri)
    try:
        reason = connection.kvm_unfit_reason(conn)
    finally:
        conn.close()
    assert (reason is not None) == Path("/sys/module/kvm_pvm").exists()
