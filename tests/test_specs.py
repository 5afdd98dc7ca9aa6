"""Every example stack in specs/ passes the idempotency triple: the first plan has changes, apply succeeds,
the next plan is empty.

Stacks run on the real daemon through the CLI, as the test's tenant. A stack that needs a USB device the
machine does not have (these machines have no USB bus) runs on the libvirt test driver instead, with a
host file that declares the device. A stack whose VMs boot a base image is applied by
tests/test_real_guest.py, which boots the guest and looks inside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hosts.usbhost import standard_devices, write_usb_host

from epfiot.cli import main
from epfiot.desired import load_manifests
from epfiot.libvirt.host import LibvirtHost
from epfiot.plan import Options
from epfiot.reconcile import apply_plan, observe, plan_changes
from tests.stacks import spec_for_tenant

ALL_SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.yaml"))


def boots_an_image(spec: Path) -> bool:
    return any(vm.get("image") for doc in yaml.safe_load_all(spec.read_text()) if doc for vm in doc.get("vms", ()))


GUEST_SPECS = [s for s in ALL_SPECS if boots_an_image(s)]
SPECS = [s for s in ALL_SPECS if not boots_an_image(s)]


def needs_a_required_usb_device(spec: Path) -> bool:
    desired = load_manifests([str(spec)])
    return any(selector.required for vm in desired.vms for selector in vm.devices)


DAEMON_SPECS = [s for s in SPECS if not needs_a_required_usb_device(s)]
USB_SPECS = [s for s in SPECS if needs_a_required_usb_device(s)]


def test_there_are_example_stacks_of_both_kinds() -> None:
    assert len(DAEMON_SPECS) >= 3 and USB_SPECS


def test_the_stacks_on_a_real_guest_are_the_ones_its_test_applies() -> None:
    from tests.test_real_guest import SPEC

    assert GUEST_SPECS == [SPEC]


@pytest.mark.daemon
@pytest.mark.parametrize("spec", DAEMON_SPECS, ids=lambda p: p.name)
def test_spec_on_the_real_daemon(
    spec: Path, system_uri: str, tenant: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = spec_for_tenant(spec, tenant, tmp_path)
    state = tmp_path / "state"

    def run(*argv: str) -> int:
        code = main(["--connect", system_uri, "--state-dir", str(state), *argv])
        out, err = capsys.readouterr()
        print(out, err)
        return code

    assert run("plan", "-f", str(stack), "--detailed-exitcode") == 2
    assert run("apply", "-f", str(stack)) == 0
    assert run("plan", "-f", str(stack), "--detailed-exitcode") == 0
    assert run("delete", "-f", str(stack), "--force", "-y") == 0


@pytest.mark.parametrize("spec", USB_SPECS, ids=lambda p: p.name)
def test_usb_spec_on_the_test_driver(spec: Path, tmp_path: Path) -> None:
    # test:///PATH gives each connection a private copy of the host: one LibvirtHost serves all three steps.
    host = LibvirtHost.open(write_usb_host(tmp_path, standard_devices(coral_identity="18d1:9302")))
    desired = load_manifests([str(spec)])
    options = Options()
    try:
        first = plan_changes(desired, observe(host, None, desired), options, None)
        assert first.changes and not first.problems, first.problems
        result = apply_plan(first, desired, host, None, options, None, parallel=4)
        assert not result.failed, result.failed
        again = plan_changes(desired, observe(host, None, desired), options, None)
        assert not again.has_changes, [a for a in again.actions if a.verb != "noop"]
        held = {vm.libvirt_name: vm.devices for vm in host.observe().vms if vm.managed}
        assert any(held.values()), "the Coral is lent to a VM"
    finally:
        host.close()
