"""LibvirtHost on the libvirt test driver (in-process, no daemon): connections and errors, the VM lifecycle,
observing (and what it keeps between observes), concurrent calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt
import pytest
from hosts.testdriver import CP210X, CREDENTIALS, POOL, only, open_test_driver, render, vm

from epfiot.errors import ConnectionFailed, HostError
from epfiot.libvirt import connection, domain, facts
from epfiot.libvirt.host import LibvirtHost
from epfiot.model import (
    AttachedUsb,
    ObservedVm,
    Ownership,
    PowerState,
    overlay_volume_name,
    seed_volume_name,
)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LibvirtHost]:
    with open_test_driver(tmp_path) as opened:
        yield opened


# --- connection ------------------------------------------------------------------------------------------


def test_connection_failure_is_one_clear_line(tmp_path: Path) -> None:
    uri = f"test://{tmp_path}/missing.xml"
    with pytest.raises(ConnectionFailed) as caught:
        LibvirtHost.open(uri)
    assert str(caught.value).startswith(f"cannot connect to libvirt at {uri}: ")
    assert "\n" not in str(caught.value) and caught.value.temporary


def test_default_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    assert connection.default_uri() == "qemu:///system"
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "test:///default")
    assert connection.default_uri() == "test:///default"


def test_virt_type(host: LibvirtHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(connection.VIRT_TYPE_ENV, raising=False)
    assert host.virt_type == "test"
    assert connection.virt_type(host.connection) == "test"
    assert connection.virt_type(host.connection, "qemu") == "qemu"
    monkeypatch.setenv(connection.VIRT_TYPE_ENV, "kvm")
    assert connection.virt_type(host.connection) == "kvm"
    with pytest.raises(HostError, match="unknown virtualisation type"):
        connection.virt_type(host.connection, "xen")


def _libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (code, libvirt.VIR_FROM_QEMU, message, 2, None, None, None, 0, 0)
    return error


@pytest.mark.parametrize(
    ("code", "message", "temporary"),
    [
        (libvirt.VIR_ERR_SYSTEM_ERROR, "Cannot write data: Broken pipe", True),
        (libvirt.VIR_ERR_RPC, "internal error: client socket is closed", True),
        (libvirt.VIR_ERR_OPERATION_TIMEOUT, "Timed out during operation: cannot acquire state change lock", True),
        (libvirt.VIR_ERR_INTERNAL_ERROR, "cannot acquire state change lock (held by monitor=remoteDispatch)", True),
        (libvirt.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: domain is not running", False),
        (libvirt.VIR_ERR_NO_DOMAIN, "Domain not found", False),
    ],
)
def test_host_errors_carry_libvirts_message(code: int, message: str, temporary: bool) -> None:
    with pytest.raises(HostError) as caught, connection.host_errors("start o.vm"):
        raise _libvirt_error(code, message)
    assert str(caught.value) == f"start o.vm: {message}"
    assert caught.value.temporary is temporary


# --- LibvirtHost on the test driver ----------------------------------------------------------------------


def test_define_start_observe(host: LibvirtHost) -> None:
    spec = vm(image="debian-12", network="net", credentials=CREDENTIALS)
    host.define_vm(spec, ((CP210X, False),), uuid=None, seed_digest="sha256:seed")
    observed = host.observe()
    assert observed.image_pool == POOL
    assert [d.nodedev for d in observed.usb] == ["usb_1_4"]
    [off] = observed.vms
    assert off.state is PowerState.SHUTOFF and off.live_vcpu is None and off.live_devices is None
    assert off.ownership == Ownership("o", "s", "vm", spec.spec_hash(), "sha256:seed", spec.shutdown_timeout)
    assert (off.disk_volume, off.seed_volume, off.network, off.mac) == (
        overlay_volume_name("o", "vm"),
        seed_volume_name("o", "vm"),
        "o.net",
        spec.mac,
    )
    assert off.devices == (AttachedUsb(CP210X.id, 1, 4, False),)

    host.start_vm("o.vm")
    host.start_vm("o.vm")  # already running: nothing to do
    on = only(host, "o.vm")
    assert on.state is PowerState.RUNNING
    assert (on.live_vcpu, on.live_memory_mib, on.live_max_memory_mib) == (1, 64, 128)
    assert on.live_devices == (AttachedUsb(CP210X.id, 1, 4, False),)


def test_redefine_keeps_identity(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    first = only(host, "o.vm")
    host.define_vm(vm(vcpu=2), (), uuid=first.uuid, seed_digest="")
    second = only(host, "o.vm")
    assert second.uuid == first.uuid and second.vcpu == 2
    assert len(host.observe().vms) == 1


def test_a_new_maximum_waits_for_a_restart(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    host.start_vm("o.vm")
    before = only(host, "o.vm")
    assert (before.max_vcpu, before.live_max_vcpu, before.live_max_memory_mib) == (2, 2, 128)
    host.define_vm(vm(max_vcpu=3, max_memory_mib=256), (), uuid=before.uuid, seed_digest="")
    after = only(host, "o.vm")
    assert (after.max_vcpu, after.max_memory_mib) == (3, 256)  # the definition
    assert (after.live_max_vcpu, after.live_max_memory_mib) == (2, 128)  # the running instance
    host.destroy_vm("o.vm")
    assert only(host, "o.vm").live_max_vcpu is None
    host.start_vm("o.vm")  # a new instance: the new maxima
    restarted = only(host, "o.vm")
    assert (restarted.live_max_vcpu, restarted.live_max_memory_mib) == (3, 256)


def test_vcpus_and_memory_live_and_in_the_definition(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    host.set_vcpus("o.vm", 2, live=False)
    host.set_memory("o.vm", 96, live=False)
    defined = only(host, "o.vm")
    assert (defined.vcpu, defined.memory_mib) == (2, 96)
    host.start_vm("o.vm")
    host.set_vcpus("o.vm", 1, live=True)
    host.set_memory("o.vm", 80, live=True)
    running = only(host, "o.vm")
    assert (running.live_vcpu, running.live_memory_mib) == (1, 80)
    with pytest.raises(HostError, match=r"set memory to 256 MiB live on o\.vm: .*max"):
        host.set_memory("o.vm", 256, live=True)


def test_suspend_resume_and_start_paused(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    host.start_vm("o.vm")
    host.suspend_vm("o.vm")
    host.suspend_vm("o.vm")  # already paused
    assert only(host, "o.vm").state is PowerState.PAUSED
    host.resume_vm("o.vm")
    host.resume_vm("o.vm")  # already running
    assert only(host, "o.vm").state is PowerState.RUNNING
    host.destroy_vm("o.vm")
    host.start_vm("o.vm", paused=True)  # the test driver has no START_PAUSED: start, then pause
    assert only(host, "o.vm").state is PowerState.PAUSED


def test_graceful_shutdown(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    host.start_vm("o.vm")
    assert host.shutdown_vm("o.vm", timeout=5) is True
    assert only(host, "o.vm").state is PowerState.SHUTOFF
    assert host.shutdown_vm("o.vm", timeout=5) is True  # already off
    host.start_vm("o.vm", paused=True)
    assert host.shutdown_vm("o.vm", timeout=5) is True  # resumed, so that the guest can act on it
    assert only(host, "o.vm").state is PowerState.SHUTOFF
    host.destroy_vm("o.vm")  # already off: no error


def test_shutdown_that_does_not_happen_falls_back_to_destroy(host: LibvirtHost) -> None:
    # on_poweroff=restart: the test driver "reboots" on ACPI shutdown, like a guest that ignores it
    xml = render(vm()).replace("<on_poweroff>destroy</on_poweroff>", "<on_poweroff>restart</on_poweroff>")
    host.connection.defineXML(xml)
    host.start_vm("o.vm")
    started = time.monotonic()
    assert host.shutdown_vm("o.vm", timeout=0.3) is False
    assert 0.3 <= time.monotonic() - started < 5
    assert only(host, "o.vm").state is PowerState.SHUTOFF


def test_undefine(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    host.start_vm("o.vm")
    with pytest.raises(HostError, match="running"):
        host.undefine_vm("o.vm")
    host.destroy_vm("o.vm")
    host.undefine_vm("o.vm")  # the test driver refuses NVRAM/CHECKPOINTS: falls back to fewer flags
    assert host.observe().vms == ()
    host.undefine_vm("o.vm")  # already gone


def test_unmanaged_domains_are_observed_without_ownership(host: LibvirtHost) -> None:
    host.connection.defineXML(
        "<domain type='test'><name>someone-else</name><memory>65536</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os></domain>"
    )
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    observed = {v.libvirt_name: v for v in host.observe().vms}
    assert observed["someone-else"].ownership is None and not observed["someone-else"].managed
    assert observed["someone-else"].max_memory_mib == 64
    assert observed["o.vm"].managed


def test_errors_name_the_operation_and_the_domain(host: LibvirtHost) -> None:
    with pytest.raises(HostError, match=r"^start o\.missing: .*[Dd]omain not found"):
        host.start_vm("o.missing")
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    # the test driver cannot attach devices: the error says which call and why
    with pytest.raises(HostError, match=r"attach USB 10c4:ea60 to o\.vm: .*not supported"):
        host.attach_usb("o.vm", CP210X, required=True, live=False)
    with pytest.raises(HostError, match=r"detach USB 10c4:ea60 live from o\.vm: .*not supported"):
        host.detach_usb("o.vm", AttachedUsb(CP210X.id, 1, 4), live=True)


def test_addresses(host: LibvirtHost) -> None:
    host.define_vm(vm(network="net"), (), uuid=None, seed_digest="")
    assert host.vm_addresses("o.vm") == ()  # not running
    assert host.vm_addresses("o.missing") == ()
    host.start_vm("o.vm")
    addresses = host.vm_addresses("o.vm")
    assert len(addresses) == 1 and addresses[0].startswith("10.9.0.")
    assert host.observe(addresses_of={"o.vm", "o.other"}).vm_addresses == {"o.vm": addresses}


def test_observe_sees_changes_after_a_repeat(host: LibvirtHost) -> None:
    host.define_vm(vm(), (), uuid=None, seed_digest="")
    first = host.observe().vms
    assert host.observe().vms == first
    host.set_memory("o.vm", 100, live=False)
    assert only(host, "o.vm").memory_mib == 100


def test_observe_parses_a_definition_once_while_its_xml_stays_the_same(
    host: LibvirtHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    read_definition = domain.read_definition

    def counting(xml: str) -> ObservedVm:
        parsed.append(xml)
        return read_definition(xml)

    monkeypatch.setattr(facts.domxml, "read_definition", counting)
    host.define_vm(vm("a"), (), uuid=None, seed_digest="")
    host.define_vm(vm("b"), (), uuid=None, seed_digest="")
    first = host.observe().vms
    assert len(parsed) == 2
    again = host.observe().vms
    assert again == first and all(x is y for x, y in zip(again, first, strict=True)) and len(parsed) == 2
    host.start_vm("o.a")  # a new state, the same definition: not parsed again
    assert only(host, "o.a").state is PowerState.RUNNING and len(parsed) == 2
    host.set_memory("o.b", 100, live=False)  # a new definition: parsed
    assert only(host, "o.b").memory_mib == 100 and len(parsed) == 3
    host.domains.forget()
    assert host.observe().vms == (only(host, "o.a"), only(host, "o.b")) and len(parsed) == 5


def test_no_image_pool(tmp_path: Path) -> None:
    path = tmp_path / "host.xml"
    path.write_text("<node/>")
    with LibvirtHost.open(f"test://{path}") as bare:
        observed = bare.observe()
    assert observed.image_pool is None and observed.volumes == () and observed.vms == ()


def test_concurrent_calls(host: LibvirtHost) -> None:
    names = [f"vm{i}" for i in range(24)]
    stop = threading.Event()
    observed_counts: list[int] = []

    def observer() -> None:
        while not stop.is_set():
            observed_counts.append(len(host.observe().vms))

    def lifecycle(name: str) -> None:
        host.define_vm(vm(name), (), uuid=None, seed_digest="")
        host.start_vm(f"o.{name}")
        host.set_vcpus(f"o.{name}", 2, live=True)
        host.shutdown_vm(f"o.{name}", timeout=5)

    watcher = threading.Thread(target=observer)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lifecycle, names))
    finally:
        stop.set()
        watcher.join()
    final = host.observe().vms
    assert [v.libvirt_name for v in final] == sorted(f"o.{n}" for n in names)
    assert all(v.state is PowerState.SHUTOFF for v in final)
    assert observed_counts
