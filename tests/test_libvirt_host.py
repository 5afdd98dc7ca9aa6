"""LibvirtHost against the real daemon (qemu:///system, started by scripts/libvirtd.sh).

A tiny VM without any OS: it runs (KVM or TCG), takes live vCPU and balloon changes within its maximum,
ignores ACPI (so a shutdown falls back to destroy), and is undefined at the end. The `tenant` fixture
removes whatever `<tenant>.*` objects a failed test leaves behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import libvirt
import pytest

from epfiot.errors import HostError
from epfiot.libvirt import domain
from epfiot.libvirt.host import LibvirtHost
from epfiot.libvirt.metadata import NAMESPACE
from epfiot.model import (
    AttachedUsb,
    Credentials,
    HostUsbDevice,
    ObservedVm,
    Ownership,
    PowerState,
    UsbId,
    VmSpec,
    overlay_volume_name,
    seed_volume_name,
)

pytestmark = pytest.mark.daemon

CP210X = HostUsbDevice(nodedev="usb_1_4", id=UsbId("10c4", "ea60"), bus=1, device=4)


@pytest.fixture
def host(system_uri: str) -> Iterator[LibvirtHost]:
    opened = LibvirtHost.open(system_uri)
    yield opened
    opened.close()


def tiny(tenant: str, name: str = "tiny") -> VmSpec:
    return VmSpec(owner=tenant, stack="test", name=name, memory_mib=64, vcpu=1, max_memory_mib=128, max_vcpu=2)


def observed(host: LibvirtHost, name: str) -> ObservedVm:
    return next(v for v in host.observe_vms() if v.libvirt_name == name)


def test_tiny_vm_lifecycle(host: LibvirtHost, tenant: str) -> None:
    assert host.virt_type in ("kvm", "qemu")
    spec = tiny(tenant)
    name = spec.libvirt_name
    host.define_vm(spec, (), uuid=None, seed_digest="")
    defined = observed(host, name)
    assert defined.ownership == Ownership(tenant, "test", "tiny", spec.spec_hash(), "", spec.shutdown_timeout)
    assert (defined.state, defined.vcpu, defined.max_vcpu, defined.memory_mib, defined.max_memory_mib) == (
        PowerState.SHUTOFF,
        1,
        2,
        64,
        128,
    )
    xml = host.connection.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert NAMESPACE in xml and f"<domain type='{host.virt_type}'" in xml

    host.start_vm(name)
    running = observed(host, name)
    assert running.state is PowerState.RUNNING
    assert (running.live_vcpu, running.live_max_vcpu, running.live_max_memory_mib) == (1, 2, 128)

    host.set_vcpus(name, 2, live=True)
    host.set_memory(name, 96, live=True)  # the balloon takes it; a guest without a driver never deflates
    assert observed(host, name).live_vcpu == 2
    host.define_vm(replace(spec, max_vcpu=3), (), uuid=running.uuid, seed_digest="")
    pending = observed(host, name)
    assert (pending.max_vcpu, pending.live_max_vcpu) == (3, 2)  # a new maximum waits for a restart
    with pytest.raises(HostError, match=rf"set memory to 512 MiB live on {name}: "):
        host.set_memory(name, 512, live=True)

    # no OS answers ACPI: the graceful shutdown times out and the VM is destroyed
    assert host.shutdown_vm(name, timeout=0.5) is False
    assert observed(host, name).state is PowerState.SHUTOFF

    host.undefine_vm(name)
    assert all(v.libvirt_name != name for v in host.observe_vms())


def test_paused_start_and_definition_changes(host: LibvirtHost, tenant: str) -> None:
    spec = tiny(tenant, "paused")
    name = spec.libvirt_name
    host.define_vm(spec, (), uuid=None, seed_digest="")
    uuid = observed(host, name).uuid
    host.define_vm(spec, ((CP210X, False),), uuid=uuid, seed_digest="sha256:seed")  # accepted while shut off
    changed = observed(host, name)
    assert changed.uuid == uuid and changed.devices == (AttachedUsb(CP210X.id, 1, 4, False),)
    assert changed.ownership is not None and changed.ownership.seed_digest == "sha256:seed"
    host.detach_usb(name, changed.devices[0], live=False)
    host.set_vcpus(name, 2, live=False)
    host.set_memory(name, 100, live=False)
    defined = observed(host, name)
    assert (defined.devices, defined.vcpu, defined.memory_mib) == ((), 2, 100)

    host.start_vm(name, paused=True)
    assert observed(host, name).state is PowerState.PAUSED
    host.resume_vm(name)
    assert observed(host, name).state is PowerState.RUNNING
    host.destroy_vm(name)
    host.destroy_vm(name)  # already off
    host.undefine_vm(name)


def test_errors_are_host_errors(host: LibvirtHost, tenant: str) -> None:
    with pytest.raises(HostError, match=rf"^start {tenant}\.missing: "):
        host.start_vm(f"{tenant}.missing")
    assert host.vm_addresses(f"{tenant}.missing") == ()


def test_reads_back_the_daemons_xml(host: LibvirtHost, tenant: str) -> None:
    # defined only: starting needs the network, the volumes and a USB bus this machine lacks
    spec = replace(tiny(tenant, "full"), image="debian-12", network="edge", credentials=Credentials(user="u"))
    host.define_vm(spec, ((CP210X, False),), uuid=None, seed_digest="sha256:seed")
    xml = host.connection.lookupByName(spec.libvirt_name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    read = domain.parse_domain(xml, libvirt.VIR_DOMAIN_SHUTOFF)
    assert read.ownership == Ownership(tenant, "test", "full", spec.spec_hash(), "sha256:seed", spec.shutdown_timeout)
    assert (read.vcpu, read.max_vcpu, read.memory_mib, read.max_memory_mib) == (1, 2, 64, 128)
    assert (read.network, read.mac, read.disk_volume, read.seed_volume) == (
        f"{tenant}.edge",
        spec.mac,
        overlay_volume_name(tenant, "full"),
        seed_volume_name(tenant, "full"),
    )
    assert read.devices == (AttachedUsb(CP210X.id, 1, 4, False),)
    host.undefine_vm(spec.libvirt_name)
