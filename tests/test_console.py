"""The web console (epfiot.console) in a real browser: Debian's chromium through chromium-driver (selenium,
headless), against a real `epfiot watch --http 127.0.0.1:PORT` on the libvirt test driver, whose host
configuration has two tenants with tokens.

A tenant logs in with its token and sees its own VM, thing, events and plan and nothing of the other
tenant's; a wrong token gets an error and nothing else; the pages follow watch without a reload (a thing
bootstraps from a real LwM2M client; a VM is shut off and started again through its manifest). Each page is
kept as a screenshot under the test's temporary directory (the paths are printed; `pytest -s` shows them).
The real daemon's part, a VM stopped by hand and started again by watch: tests/test_console_daemon.py.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from api_support import ready
from hosts.testdriver import HOST_FILE
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from test_watch_daemon import WatchProcess

from epfiot.hostconfig import token_hash
from tests.lwm2m_client import Lwm2mTestClient
from tests.stacks import vm, write_stack

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PAGES = ("vms", "usb", "things", "events", "plan")
ADMIN = "(admin)"
WAIT = 60.0  # seconds a page may take to show what watch did (it refreshes every 2 s)


# --- a watch with two tenants, and a browser ---------------------------------------------------------------


@dataclass
class ConsoleWatch:
    process: WatchProcess
    url: str
    stacks: Path
    bootstrap_port: int
    tokens: dict[str, str]
    config: Path  # the host configuration

    def stop(self) -> int:
        proc = self.process.proc
        proc.terminate()
        code = proc.wait(timeout=60)
        self.process.reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        return code

    def get(self, path: str, tenant: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.tokens[tenant]}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def until(self, what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"watch did not get there: {what}")
            time.sleep(0.25)


def host_yaml(state: Path, tokens: dict[str, str]) -> str:
    """Tenants with one token each; the token named ADMIN is the administrator's."""
    lines = ["version: 1", f"state_dir: {state}"]
    if ADMIN in tokens:
        lines.append(f'admin: {{tokens: ["{token_hash(tokens[ADMIN])}"]}}')
    lines.append("tenants:")
    for tenant, token in tokens.items():
        if tenant != ADMIN:
            lines += [f"  {tenant}:", f'    tokens: ["{token_hash(token)}"]']
    return "\n".join(lines) + "\n"


def start_watch(directory: Path, tenants: tuple[str, ...], *, connect: str | None = None, extra: tuple[str, ...] = ()) -> ConsoleWatch:
    """watch with its bootstrap server and the API on loopback; returns once /readyz says it is ready."""
    stacks, state = directory / "stacks", directory / "state"
    stacks.mkdir(exist_ok=True)
    if connect is None:
        (directory / "host.xml").write_text(HOST_FILE)
        connect = f"test://{directory / 'host.xml'}"
    tokens = {tenant: "epf_" + secrets.token_urlsafe(32) for tenant in tenants}
    config = directory / "host.yaml"
    config.write_text(host_yaml(state, tokens))
    socket = directory / "api.sock"
    process = WatchProcess(
        "--connect", connect, "--host-config", str(config), "watch", "-f", str(stacks), "--log-format", "json",
        "--bind", "127.0.0.1", "--port", "0", "--no-dtls", "--http", "127.0.0.1:0", "--api-socket", str(socket), *extra,
    )  # fmt: skip
    bootstrap_port = process.event("serve.listening")["port"]
    port = process.event("api.listening", address="127.0.0.1")["port"]
    watch = ConsoleWatch(process, f"http://127.0.0.1:{port}", stacks, bootstrap_port, tokens, config)
    try:
        watch.until("ready", lambda: ready(socket))
    except AssertionError:
        watch.stop()
        raise
    return watch


def new_browser(width: int = 1280, height: int = 900) -> WebDriver:
    """Debian's chromium, headless, through Debian's chromium-driver (nothing is downloaded)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's errors, CSP refusals included
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver = new_browser()
    yield driver
    driver.quit()


def log_in(browser: WebDriver, watch: ConsoleWatch, token: str) -> None:
    browser.get(watch.url + "/console/login")
    field = browser.find_element(By.ID, "token")
    field.send_keys(token)
    field.submit()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.ID, "login-error") or b.find_elements(By.ID, "caller"))


def screenshot(browser: WebDriver, directory: Path, name: str) -> Path:
    path = directory / f"console-{name}.png"
    browser.save_screenshot(str(path))
    print(f"screenshot of {name}: {path}")
    return path


def keep_mark(browser: WebDriver) -> None:
    """A value in the page's window: a reload would lose it."""
    browser.execute_script("window.consoleMark = 'not reloaded';")


def assert_not_reloaded(browser: WebDriver) -> None:
    assert browser.execute_script("return window.consoleMark;") == "not reloaded"


def field_of(browser: WebDriver, row: str, field: str) -> str:
    """The text of a cell, read in one step (the page may replace its content between two)."""
    script = "const c = document.querySelector(arguments[0]); return c ? c.textContent : '';"
    text = browser.execute_script(script, f'tr[{row}] [data-field="{field}"]')
    return " ".join(str(text).split())


def wait_for_field(browser: WebDriver, row: str, field: str, wanted: Callable[[str], bool], what: str) -> str:
    try:
        WebDriverWait(browser, WAIT, poll_frequency=0.2).until(lambda b: wanted(field_of(b, row, field)))
    except TimeoutException:
        raise AssertionError(f"the page did not show {what}: {field} is {field_of(browser, row, field)!r}") from None
    return field_of(browser, row, field)


def page_errors(browser: WebDriver) -> list[str]:
    return [str(entry["message"]) for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def rows(browser: WebDriver, attribute: str) -> set[str]:
    return {str(r.get_attribute(attribute)) for r in browser.find_elements(By.CSS_SELECTOR, f"tr[{attribute}]")}


# --- the scenario on the test driver -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def watch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleWatch]:
    running = start_watch(tmp_path_factory.mktemp("console"), ("alice", "bob", ADMIN))
    yield running
    assert running.stop() == 0


def alice_stack(watch: ConsoleWatch, state: str = "running") -> None:
    write_stack(
        watch.stacks, "alice", networks=[{"name": "iot", "mode": "route", "cidr": "10.140.0.0/24"}],
        vms=[vm("web", network="iot", state=state)], things=[{"name": "sensor-a", "vm": "web", "lifetime": 120}],
    )  # fmt: skip


def bob_stack(watch: ConsoleWatch) -> None:
    write_stack(
        watch.stacks, "bob", networks=[{"name": "lab", "mode": "route", "cidr": "10.141.0.0/24"}],
        vms=[vm("bobs-secret-vm", network="lab")], things=[{"name": "bobs-secret-thing", "vm": "bobs-secret-vm"}],
    )  # fmt: skip


def vm_state(watch: ConsoleWatch, tenant: str, name: str) -> str | None:
    return next((v["state"] for v in watch.get("/api/v1/vms", tenant) if v["name"] == name), None)


def test_a_wrong_token_gets_an_error_and_nothing_else(watch: ConsoleWatch, browser: WebDriver, tmp_path: Path) -> None:
    alice_stack(watch)
    watch.until("alice's VM runs", lambda: vm_state(watch, "alice", "web") == "running")

    browser.get(watch.url + "/console/vms")
    assert browser.current_url == watch.url + "/console/login"  # no session: the login form
    log_in(browser, watch, "epf_" + secrets.token_urlsafe(32))
    assert browser.find_element(By.ID, "login-error").text == "That token is not valid."
    assert browser.find_elements(By.ID, "caller") == [] and browser.get_cookies() == []
    assert "web" not in browser.find_element(By.ID, "content").text and "alice" not in browser.page_source
    screenshot(browser, tmp_path, "login-refused")
    browser.get(watch.url + "/console/things?fragment=1")
    assert "sensor-a" not in browser.page_source


def test_a_tenant_sees_its_own_only_and_the_pages_follow_watch(watch: ConsoleWatch, browser: WebDriver, tmp_path: Path) -> None:
    alice_stack(watch)
    bob_stack(watch)
    watch.until("both tenants' VMs run", lambda: vm_state(watch, "alice", "web") == vm_state(watch, "bob", "bobs-secret-vm") == "running")
    watch.until("alice's thing is registered", lambda: [t["status"] for t in watch.get("/api/v1/things", "alice")] == ["pending"])

    log_in(browser, watch, watch.tokens["alice"])
    assert browser.current_url == watch.url + "/console/vms"
    assert browser.find_element(By.ID, "caller").text == "tenant alice"
    [cookie] = browser.get_cookies()  # the token, out of the page script's reach, sent to /console only
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")
    assert browser.execute_script("return document.cookie;") == ""

    for page in PAGES:
        browser.get(f"{watch.url}/console/{page}")
        assert browser.find_element(By.ID, "caller").text == "tenant alice", page
        assert "bob" not in browser.page_source, page  # neither bob's names nor bob as an owner
        screenshot(browser, tmp_path, page)
        if page == "vms":
            assert rows(browser, "data-vm") == {"alice/web"}
            assert field_of(browser, "data-vm", "state") == "running"
            assert field_of(browser, "data-vm", "address").startswith("10.140.0.")
        elif page == "usb":
            assert "10c4:ea60" in browser.find_element(By.ID, "content").text
        elif page == "things":
            assert rows(browser, "data-thing") == {"alice/sensor-a"}
        elif page == "events":
            subjects = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "tr[data-event] td.name")}
            assert "vm/alice/web" in subjects

    # A phone: one card per row, each value under its column's name.
    browser.get(watch.url + "/console/vms")
    browser.set_window_size(390, 844)
    assert browser.execute_script("return getComputedStyle(document.querySelector('.rows thead')).display;") == "none"
    screenshot(browser, tmp_path, "vms-phone")
    browser.set_window_size(1280, 900)

    # A thing bootstraps from a real LwM2M client: its page shows it without a reload.
    browser.get(watch.url + "/console/things")
    keep_mark(browser)
    assert field_of(browser, "data-thing", "status") == "pending"

    async def bootstrap() -> None:
        async with Lwm2mTestClient("sensor-a", "127.0.0.1", watch.bootstrap_port) as client:
            await client.bootstrap()

    asyncio.run(bootstrap())
    wait_for_field(browser, "data-thing", "status", lambda s: s == "bootstrapped", "the thing's bootstrap on its page")
    assert_not_reloaded(browser)
    screenshot(browser, tmp_path, "things-bootstrapped")

    # The VM shut off through its manifest, then declared running again: its row follows, no reload.
    browser.get(watch.url + "/console/vms")
    keep_mark(browser)
    alice_stack(watch, state="shutoff")
    wait_for_field(browser, "data-vm", "state", lambda s: s == "shutoff", "the VM shut off on its page")
    assert_not_reloaded(browser)
    screenshot(browser, tmp_path, "vms-shutoff")
    alice_stack(watch, state="running")
    wait_for_field(browser, "data-vm", "state", lambda s: s == "running", "the VM running again on its page")
    assert_not_reloaded(browser)
    assert "bob" not in browser.page_source

    browser.get(watch.url + "/console/plan")
    actions = rows(browser, "data-action")
    assert actions and all(a.startswith(("vm/alice/", "network/alice/", "thing/alice/")) for a in actions)
    assert page_errors(browser) == []  # no script error, nothing the Content-Security-Policy refused


def test_the_administrator_sees_every_tenant_with_its_owner(watch: ConsoleWatch, browser: WebDriver) -> None:
    alice_stack(watch)
    bob_stack(watch)
    watch.until("both tenants' VMs run", lambda: vm_state(watch, "alice", "web") == vm_state(watch, "bob", "bobs-secret-vm") == "running")
    log_in(browser, watch, watch.tokens[ADMIN])
    assert browser.find_element(By.ID, "caller").text == "administrator"
    assert {"alice/web", "bob/bobs-secret-vm"} <= rows(browser, "data-vm")
    assert "Owner" in [h.get_attribute("textContent") for h in browser.find_elements(By.CSS_SELECTOR, ".rows th")]
    # The page says when the observation it shows was made, as the API's Epfiot-Observed-At does.
    shown = browser.find_element(By.CSS_SELECTOR, "[data-field=observed_at] time").get_attribute("datetime")
    assert shown is not None and shown.endswith("Z") and shown[:4].isdigit()


def test_logging_out_or_a_revoked_token_ends_the_session(browser: WebDriver, tmp_path: Path) -> None:
    watch = start_watch(tmp_path, ("alice", "bob"))
    try:
        log_in(browser, watch, watch.tokens["alice"])
        browser.find_element(By.CSS_SELECTOR, "form.who button").click()
        WebDriverWait(browser, 30).until(lambda b: b.current_url == watch.url + "/console/login")
        assert browser.get_cookies() == []
        browser.get(watch.url + "/console/events")
        assert browser.current_url == watch.url + "/console/login"

        # The token taken out of the host configuration: the page's next refresh goes to the login form.
        log_in(browser, watch, watch.tokens["alice"])
        assert browser.find_element(By.ID, "caller").text == "tenant alice"
        watch.config.write_text(host_yaml(watch.config.parent / "state", {**watch.tokens, "alice": "epf_" + secrets.token_urlsafe(32)}))
        WebDriverWait(browser, WAIT).until(lambda b: b.current_url == watch.url + "/console/login", message="back to the login form")
        log_in(browser, watch, watch.tokens["alice"])
        assert browser.find_element(By.ID, "login-error").text == "That token is not valid."
    finally:
        assert watch.stop() == 0


def test_the_session_cookie_reads_and_changes_nothing(watch: ConsoleWatch) -> None:
    """Outside a browser: the cookie authorizes GETs only; the forms refuse another site's posts."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def send(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> int:
        request = urllib.request.Request(watch.url + path, data=body, method=method, headers=headers or {})
        try:
            with opener.open(request, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    form = f"token={watch.tokens['alice']}".encode()
    assert send("POST", "/console/login", form, {"Origin": "http://evil.example"}) == 403 and not list(jar)
    assert send("POST", "/console/login", form, {"Sec-Fetch-Site": "cross-site"}) == 403 and not list(jar)
    assert send("POST", "/console/login", form, {"Origin": watch.url}) == 200 and [c.name for c in jar] == ["epfiot_console"]
    [cookie] = jar
    sent = {"Cookie": f"{cookie.name}={cookie.value}"}
    assert send("GET", "/console/vms?fragment=1") == 200
    assert send("GET", "/api/v1/vms", headers=sent) == 200  # the same token, for a read
    yaml = "version: 1\nstack: alice-x\nowner: alice\nvms: []\n"
    assert send("POST", "/api/v1/plan", yaml.encode(), sent) == 401  # never for a change
    assert send("POST", "/console/logout", b"", {"Origin": "http://evil.example"}) == 403
    assert send("POST", "/console/logout", b"", {"Origin": watch.url}) == 200  # then the login form
    assert send("GET", "/console/vms?fragment=1") == 401
