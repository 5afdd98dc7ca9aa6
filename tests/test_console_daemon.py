"""The console on the real libvirt daemon: a VM stopped by hand, outside epfiot, and started again by watch,
as the tenant's VMs page shows it in the browser without a reload.

Why the real daemon: a test-driver host lives inside watch's own process, so nothing outside it can stop
one of its VMs; on qemu:///system `virsh destroy` does, as an operator would. The VMs have no disk image:
QEMU runs them (booting nothing), which is all a state needs. watch starts the VM again within moments,
and the page reads watch's latest observation of the host, which its reconcile publishes once it is over
(epfiot.snapshot), so the page may never catch the VM shut off; what it always shows is the correction: the VM's "last change" becomes watch's
action on the drift ("update: is shutoff"), while its state is running. Objects are named after the `tenant` fixture (cleaned up).

Run with scripts/in-netns.sh .venv/bin/pytest tests/test_console_daemon.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver
from test_console import (
    ConsoleWatch,
    assert_not_reloaded,
    browser,  # noqa: F401 - fixture
    field_of,
    keep_mark,
    log_in,
    rows,
    screenshot,
    start_watch,
    vm_state,
    wait_for_field,
)

from tests.stacks import vm, write_stack

# Every state the VMs page showed for the VM, as the page's content was replaced (the test's own record).
RECORD_STATES = """
window.seenStates = [];
new MutationObserver(function () {
  const cell = document.querySelector('tr[data-vm] [data-field="state"]');
  if (cell) { window.seenStates.push(cell.textContent); }
}).observe(document.getElementById("content"), {childList: true, subtree: true});
"""


@pytest.fixture
def watch(system_uri: str, tenant: str, tmp_path: Path) -> Iterator[ConsoleWatch]:
    running = start_watch(tmp_path, (tenant, f"{tenant}b"), connect=system_uri)
    yield running
    assert running.stop() == 0


@pytest.mark.daemon
def test_a_vm_stopped_by_hand_is_started_again_on_the_page(
    watch: ConsoleWatch, system_uri: str, tenant: str, browser: WebDriver, tmp_path: Path  # noqa: F811
) -> None:
    other = f"{tenant}b"
    write_stack(watch.stacks, tenant, vms=[vm("web")])
    write_stack(watch.stacks, other, vms=[vm("hidden")])
    watch.until("both VMs run", lambda: vm_state(watch, tenant, "web") == vm_state(watch, other, "hidden") == "running", timeout=180)

    log_in(browser, watch, watch.tokens[tenant])
    assert browser.current_url == watch.url + "/console/vms"
    assert rows(browser, "data-vm") == {f"{tenant}/web"}
    assert other not in browser.page_source and "hidden" not in browser.page_source
    before = field_of(browser, "data-vm", "last_event")
    screenshot(browser, tmp_path, "vms-before")
    keep_mark(browser)
    browser.execute_script(RECORD_STATES)

    subprocess.run(["virsh", "-c", system_uri, "destroy", f"{tenant}.web"], check=True, capture_output=True, timeout=60)

    after = wait_for_field(browser, "data-vm", "last_event", lambda text: text != before, "watch's correction")
    wait_for_field(browser, "data-vm", "state", lambda s: s == "running", "the VM running again on its page")
    assert_not_reloaded(browser)
    print(f"last change before: {before!r}; after: {after!r}")
    print(f"states the page showed: {browser.execute_script('return window.seenStates;')}")
    screenshot(browser, tmp_path, "vms-corrected")
    kinds = [e["kind"] for e in watch.get("/api/v1/events", tenant) if e["subject"] == f"vm/{tenant}/web"]
    assert kinds[-3:] == ["drift", "action.start", "action.done"], kinds  # seen stopped, started again
    assert other not in browser.page_source
