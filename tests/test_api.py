"""The HTTP API of `epfiot watch` (epfiot.api), with aiohttp's client against a real watch process on loopback,
on the libvirt test driver: tokens, tenant scoping, fields, manifest problems, applies, metrics, limits, and
every path that openapi.json documents."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from api_support import TOKENS, ApiWatch, host_config, ready, secret_yaml, stack_yaml, start_watch
from hosts.testdriver import HOST_FILE
from test_watch_daemon import WatchProcess

Answer = tuple[int, dict[str, str], Any]


@pytest.fixture(scope="module")
def watch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWatch]:
    running = start_watch(tmp_path_factory.mktemp("api"), extra=("--http-rate", "0"))
    yield running
    assert running.stop() == 0


def call(watch: ApiWatch, method: str, path: str, *, token: str | None = "admin", body: str | bytes | io.BytesIO | None = None, headers: dict[str, str] | None = None) -> Answer:
    async def go() -> Answer:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {TOKENS.get(token, token)}"
        async with aiohttp.ClientSession() as session, session.request(method, watch.url + path, data=body, headers=sent) as response:
            text = await response.text()
            try:
                data = json.loads(text)
            except ValueError:
                data = text
            return response.status, dict(response.headers), data

    return asyncio.run(go())


def apply(watch: ApiWatch, token: str, text: str, query: str = "") -> Answer:
    return call(watch, "POST", f"/api/v1/apply{query}", token=token, body=text, headers={"Content-Type": "application/yaml"})


def openapi(watch: ApiWatch) -> dict[str, Any]:
    status, _, document = call(watch, "GET", "/api/v1/openapi.json")
    assert status == 200
    return document  # type: ignore[no-any-return]


def check_schema(document: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> None:
    """The documented keys: every required one is there, none is undocumented (unless allowed)."""
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "oneOf" in schema:
        errors = []
        for option in schema["oneOf"]:
            try:
                check_schema(document, option, value, where)
                return
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{where}: matches none of oneOf: {errors}")
    kind = schema.get("type")
    if kind == "array":
        assert isinstance(value, list), where
        for i, item in enumerate(value):
            check_schema(document, schema["items"], item, f"{where}[{i}]")
    elif kind == "object" and "properties" in schema:
        assert isinstance(value, dict), where
        missing = set(schema.get("required", [])) - value.keys()
        assert not missing, f"{where}: missing {missing}"
        if schema.get("additionalProperties") is False:
            extra = value.keys() - schema["properties"].keys()
            assert not extra, f"{where}: undocumented {extra}"
        for key, sub in schema["properties"].items():
            if key in value and value[key] is not None:
                check_schema(document, sub, value[key], f"{where}.{key}")


def test_tokens_decide_who_asks_and_a_bad_one_reveals_nothing(watch: ApiWatch) -> None:
    missing = call(watch, "GET", "/api/v1/vms", token=None)
    wrong = call(watch, "GET", "/api/v1/vms", token="epf_not-a-token")
    unknown_path = call(watch, "GET", "/api/v1/no-such-thing", token=None)
    for status, headers, _ in (missing, wrong, unknown_path):
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
    assert missing[2] == wrong[2] == unknown_path[2]  # the same answer, whatever was wrong
    assert call(watch, "GET", "/api/v1/vms", headers={"Authorization": "Basic YWxpY2U6eA=="}, token=None)[0] == 401
    assert call(watch, "GET", "/api/v1/vms", token="alice")[0] == 200
    status, headers, body = call(watch, "PUT", "/api/v1/vms", token="alice")
    assert status == 405 and "GET" in headers["Allow"] and body["problems"][0]["message"] == "Method Not Allowed"
    status, _, body = call(watch, "GET", "/api/v1/no-such-thing", token="alice")
    assert status == 404 and body["problems"][0]["message"] == "Not Found"


def test_tenants_see_and_change_only_their_own(watch: ApiWatch) -> None:
    assert apply(watch, "alice", stack_yaml("alice", "web"))[0] == 200
    assert apply(watch, "bob", stack_yaml("bob", "web", "db"))[0] == 200

    _, _, alices = call(watch, "GET", "/api/v1/vms", token="alice")
    _, _, bobs = call(watch, "GET", "/api/v1/vms", token="bob")
    _, _, everyone = call(watch, "GET", "/api/v1/vms?fields=owner,name")
    assert {(v["owner"], v["name"]) for v in alices} == {("alice", "web")}
    assert {(v["owner"], v["name"]) for v in bobs} == {("bob", "web"), ("bob", "db")}
    assert {("alice", "web"), ("bob", "web"), ("bob", "db")} <= {(v["owner"], v["name"]) for v in everyone}

    # Another tenant's VM by name is a 404 exactly like a VM that does not exist.
    foreign = call(watch, "GET", "/api/v1/vms/bob/db", token="alice")
    absent = call(watch, "GET", "/api/v1/vms/bob/nothing-here", token="alice")
    assert foreign[0] == absent[0] == 404
    assert foreign[2]["problems"][0]["message"].replace("db", "X") == absent[2]["problems"][0]["message"].replace("nothing-here", "X")
    assert call(watch, "GET", "/api/v1/vms/bob/db", token="bob")[2]["name"] == "db"
    assert call(watch, "DELETE", "/api/v1/vms/bob/db?auto_approve=true", token="alice")[0] == 404

    # A manifest naming another owner is refused whole, at the line of its owner, and nothing changes.
    status, _, body = apply(watch, "alice", stack_yaml("bob", "web", "db", "intruder"))
    assert status == 422
    [problem] = body["problems"]
    assert problem["line"] == 3 and problem["path"] == "owner" and "not yours" in problem["message"]
    assert "intruder" not in {v["name"] for v in call(watch, "GET", "/api/v1/vms", token="bob")[2]}

    # Events and the last reconcile's plan are scoped too.
    _, _, events = call(watch, "GET", "/api/v1/events?kind=action.", token="alice")
    assert events and all(e["subject"].startswith("vm/alice/") for e in events)
    _, _, last = call(watch, "GET", "/api/v1/plan", token="alice")
    assert all(a["owner"] == "alice" for a in last["plan"]["actions"])


def test_fields_select_keys_and_an_unknown_one_lists_the_known(watch: ApiWatch) -> None:
    apply(watch, "alice", stack_yaml("alice", "web"))
    status, _, rows = call(watch, "GET", "/api/v1/vms?fields=name,state", token="alice")
    assert status == 200 and rows == [{"name": "web", "state": "running"}]
    status, _, one = call(watch, "GET", "/api/v1/vms/alice/web?fields=name,vcpu", token="alice")
    assert status == 200 and one == {"name": "web", "vcpu": 1}
    status, _, body = call(watch, "GET", "/api/v1/networks?fields=name,colour", token="alice")
    assert status == 400
    message = body["problems"][0]["message"]
    assert "colour" in message and "cidr" in message and "bridge" in message
    status, _, usb = call(watch, "GET", "/api/v1/usb?fields=vendor_id,product_id", token="alice")
    assert status == 200 and {"vendor_id": "10c4", "product_id": "ea60"} in usb


def test_manifest_problems_are_422_with_file_line_path(watch: ApiWatch) -> None:
    text = "version: 1\nstack: alice-bad\nowner: alice\nvms:\n  - {name: x, memory: lots, vcpu: 1}\n"
    for path in ("/api/v1/plan", "/api/v1/apply"):
        status, headers, body = call(watch, "POST", path, token="alice", body=text)
        assert status == 422 and headers["Epfiot-Exit-Code"] == "2"
        [problem] = body["problems"]
        assert set(problem) == {"file", "line", "path", "message"}
        assert problem["line"] == 5 and problem["path"] == "vms[0].memory"
    status, _, body = call(watch, "POST", "/api/v1/plan", token="alice", body="version: 1\nstack: [\n")
    assert status == 422 and body["problems"][0]["line"] is not None


def test_apply_through_the_api_converges_as_the_cli_does(watch: ApiWatch, tmp_path: Path) -> None:
    text = stack_yaml("alice", "converge1", "converge2", stack="alice-converge")
    # The plan of a fresh host: the same through the API as from the CLI on its own copy of the host.
    (tmp_path / "host.xml").write_text(HOST_FILE)
    (tmp_path / "stack.yaml").write_text(text)
    cli = subprocess.run(
        [sys.executable, "-m", "epfiot", "--connect", f"test://{tmp_path / 'host.xml'}", "--state-dir", str(tmp_path / "state"), "plan", "-o", "json", "-f", "-"],
        input=text, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    status, headers, planned = call(watch, "POST", "/api/v1/plan", token="alice", body=text)
    assert status == 200 and headers["Epfiot-Exit-Code"] == "0"
    assert planned == json.loads(cli.stdout)

    status, headers, applied = apply(watch, "alice", text)
    assert status == 200 and headers["Epfiot-Exit-Code"] == "0"
    assert applied["plan"]["summary"]["create"] == 2
    assert [(o["name"], o["action"], o["ok"]) for o in applied["outcomes"]] == [("converge1", "create", True), ("converge2", "create", True)]
    status, _, again = apply(watch, "alice", text)
    assert status == 200 and again["outcomes"] == [] and again["plan"]["summary"]["create"] == again["plan"]["summary"]["update"] == 0
    status, headers, _ = call(watch, "POST", "/api/v1/plan?detailed_exitcode=true", token="alice", body=text)
    assert status == 200 and headers["Epfiot-Exit-Code"] == "0"
    states = {v["name"]: v["state"] for v in call(watch, "GET", "/api/v1/vms?fields=name,state", token="alice")[2]}
    assert states["converge1"] == states["converge2"] == "running"

    # A plan that destroys needs auto_approve, as a script without a terminal does.
    smaller = stack_yaml("alice", "converge1", stack="alice-converge")
    status, headers, refused = apply(watch, "alice", smaller)
    assert status == 409 and headers["Epfiot-Exit-Code"] == "1"
    assert "auto-approve" in refused["problems"][0]["message"]
    status, _, done = apply(watch, "alice", smaller, "?auto_approve=true")
    assert status == 200 and [(o["name"], o["action"]) for o in done["outcomes"]] == [("converge2", "destroy")]


def test_every_documented_path_answers_with_the_documented_keys(watch: ApiWatch) -> None:
    apply(watch, "alice", stack_yaml("alice", "web"))
    document = openapi(watch)
    for path, item in document["paths"].items():
        if "get" not in item:
            continue
        concrete = path.replace("{owner}", "alice").replace("{name}", "web")
        status, _, body = call(watch, "GET", concrete)
        documented = item["get"]["responses"]
        assert str(status) in documented, f"GET {concrete}: {status} is not documented"
        content = documented[str(status)].get("content", {})
        if "application/json" in content:
            check_schema(document, content["application/json"]["schema"], body, f"GET {concrete}")
        for tenant in ("alice", "bob"):
            assert str(call(watch, "GET", concrete, token=tenant)[0]) in documented
    for path in ("/api/v1/plan", "/api/v1/apply"):
        post = document["paths"][path]["post"]
        status, _, body = call(watch, "POST", path, token="alice", body=stack_yaml("alice", "web"))
        assert status == 200
        check_schema(document, post["responses"]["200"]["content"]["application/json"]["schema"], body, f"POST {path}")


def test_metrics_and_health(watch: ApiWatch) -> None:
    assert call(watch, "GET", "/healthz", token=None)[:1] == (200,)
    status, _, ready = call(watch, "GET", "/readyz", token=None)
    assert status == 200 and ready["status"] == "ready"
    assert call(watch, "GET", "/metrics", token=None)[0] == 401
    assert call(watch, "GET", "/metrics", token="alice")[0] == 403
    apply(watch, "alice", stack_yaml("alice", "web"))
    status, headers, text = call(watch, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in (
        "epfiot_reconcile_duration_seconds_bucket", "epfiot_vms{", "epfiot_last_successful_reconcile_timestamp_seconds",
        "epfiot_api_requests_total{",
    ):  # fmt: skip
        assert name in text, name
    assert 'epfiot_actions_total{kind="vm",outcome="ok",verb="create"}' in text  # the API's applies count too
    for documented in ("epfiot_actions_total", "epfiot_drift_corrected_total", "epfiot_things", "epfiot_bootstrap_requests_total"):
        assert f"# TYPE {documented.removesuffix('_total')}" in text


def test_limits_on_body_size_and_request_rate(tmp_path: Path) -> None:
    watch = start_watch(tmp_path, extra=("--http-rate", "1"))
    try:
        statuses = [call(watch, "GET", "/healthz", token=None)[0] for _ in range(6)]
        assert statuses[0] == 200 and 429 in statuses
        status, headers, _ = call(watch, "GET", "/healthz", token=None)
        assert status == 429 and int(headers["Retry-After"]) >= 1
    finally:
        assert watch.stop() == 0
    (tmp_path / "again").mkdir()
    watch = start_watch(tmp_path / "again")
    try:
        big = "# " + "x" * (2 * 1024 * 1024) + "\n"
        assert call(watch, "POST", "/api/v1/plan", token="alice", body=io.BytesIO(big.encode()))[0] == 413
    finally:
        assert watch.stop() == 0


def test_http_on_a_non_loopback_address_needs_its_flag(tmp_path: Path) -> None:
    (tmp_path / "stacks").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "epfiot", "--connect", "test:///default", "--state-dir", str(tmp_path / "state"),
         "watch", "-f", str(tmp_path / "stacks"), "--no-serve", "--http", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--http-allow-remote" in result.stderr and "Traceback" not in result.stderr


def test_reads_at_the_same_time_are_each_scoped_to_their_caller(watch: ApiWatch) -> None:
    """Identical reads in flight together share one computation: only within one caller."""
    apply(watch, "alice", stack_yaml("alice", "web"))
    apply(watch, "bob", stack_yaml("bob", "web", "db"))

    async def go() -> list[set[str]]:
        async with aiohttp.ClientSession() as session:
            async def owners(token: str) -> set[str]:
                headers = {"Authorization": f"Bearer {TOKENS[token]}"}
                async with session.get(f"{watch.url}/api/v1/vms?fields=owner", headers=headers) as response:
                    return {row["owner"] for row in await response.json()}

            return await asyncio.gather(*(owners(t) for t in ("alice", "bob", "admin") * 4))

    seen = asyncio.run(go())
    assert seen[0::3] == [{"alice"}] * 4 and seen[1::3] == [{"bob"}] * 4
    assert all({"alice", "bob"} <= s for s in seen[2::3])


def test_a_tenant_cannot_have_the_service_read_a_file_secret_over_http(watch: ApiWatch) -> None:
    for ref in ("/etc/shadow", "/nonexistent/secret"):
        status, _, body = call(watch, "POST", "/api/v1/plan", token="alice", body=secret_yaml("alice", f"{{file: {ref}}}"))
        assert status == 422
        [problem] = body["problems"]
        assert problem["line"] == 11 and "read on the service's host" in problem["message"]
    # The administrator's manifests are read as the CLI reads them: a file outside the manifest's directory and
    # the secrets directory is the loader's own problem.
    status, _, body = call(watch, "POST", "/api/v1/plan", body=secret_yaml("alice", "{file: /nonexistent/secret}"))
    assert status == 422 and "secret file not allowed or unreadable" in body["problems"][0]["message"]


def test_a_body_that_is_not_utf8_is_a_manifest_problem_at_its_line(watch: ApiWatch) -> None:
    status, _, body = call(watch, "POST", "/api/v1/plan", token="alice", body=b"version: 1\nstack: caf\xe9\n")
    assert status == 422
    [problem] = body["problems"]
    assert problem["line"] == 2 and "not UTF-8" in problem["message"]


def test_a_second_watch_on_the_same_socket_stops_and_leaves_the_first_alone(watch: ApiWatch, tmp_path: Path) -> None:
    (tmp_path / "stacks").mkdir()
    (tmp_path / "host.xml").write_text(HOST_FILE)
    second = WatchProcess(
        "--connect", f"test://{tmp_path / 'host.xml'}", "--state-dir", str(tmp_path / "state"),
        "watch", "-f", str(tmp_path / "stacks"), "--no-serve", "--log-format", "json", "--api-socket", str(watch.socket),
    )  # fmt: skip
    failed = second.event("api.failed")
    assert "another service answers" in failed["message"]
    assert second.proc.wait(timeout=30) == 1
    second.reader.join(timeout=10)
    assert second.proc.stdout is not None
    second.proc.stdout.close()
    assert ready(watch.socket)


def test_not_ready_while_libvirt_is_out_of_reach(tmp_path: Path) -> None:
    (tmp_path / "stacks").mkdir()
    (tmp_path / "host.yaml").write_text(host_config(tmp_path / "state"))
    process = WatchProcess(
        "--connect", f"test://{tmp_path / 'no-such-host.xml'}", "--host-config", str(tmp_path / "host.yaml"),
        "watch", "-f", str(tmp_path / "stacks"), "--no-serve", "--log-format", "json",
        "--http", "127.0.0.1:0", "--api-socket", str(tmp_path / "api.sock"),
    )  # fmt: skip
    watch = ApiWatch(process, process.event("api.listening", address="127.0.0.1")["port"], tmp_path / "api.sock", tmp_path / "stacks")
    try:
        process.event("libvirt.unavailable")
        assert call(watch, "GET", "/healthz", token=None)[0] == 200
        status, _, body = call(watch, "GET", "/readyz", token=None)
        assert status == 503 and body["status"] == "not ready" and body["reason"]
        status, _, body = call(watch, "GET", "/api/v1/vms")
        assert status == 503 and "libvirt" in body["problems"][0]["message"]
    finally:
        assert watch.stop() == 0


def test_a_password_applied_twice_through_the_api_changes_nothing_the_second_time(watch: ApiWatch) -> None:
    # The service hashes a password with the salt it recorded at the first apply, as the CLI does: the same
    # password makes the same seed, so the second apply has nothing to do.
    from epfiot.api.client import SOURCES_TYPE

    body = json.dumps({"files": [{"name": "login.yaml", "text": secret_yaml("alice", "{env: LOGIN_PASSWORD}")}], "env": {"LOGIN_PASSWORD": "correct horse"}})
    headers = {"Content-Type": SOURCES_TYPE}
    status, _, first = call(watch, "POST", "/api/v1/apply", token="alice", body=body, headers=headers)
    assert status == 200 and [(o["name"], o["action"], o["ok"]) for o in first["outcomes"]] == [("login", "create", True)]
    status, _, second = call(watch, "POST", "/api/v1/apply", token="alice", body=body, headers=headers)
    assert status == 200 and second["outcomes"] == []
    assert second["plan"]["summary"]["create"] == second["plan"]["summary"]["update"] == 0


def test_events_filtered_by_owner_and_kinds_as_the_cli_filters_them(watch: ApiWatch) -> None:
    assert apply(watch, "alice", stack_yaml("alice", "filtered", stack="alice-filtered"))[0] == 200
    assert apply(watch, "bob", stack_yaml("bob", "filtered", stack="bob-filtered"))[0] == 200
    status, _, events = call(watch, "GET", "/api/v1/events?owner=bob&kinds=action.done")
    assert status == 200 and events
    assert ("action.done", "vm/bob/filtered") in [(e["kind"], e["subject"]) for e in events]
    assert {e["kind"] for e in events} == {"action.done"} and all(e["subject"].startswith("vm/bob/") for e in events)
    status, _, body = call(watch, "GET", "/api/v1/events?kinds=no.such.kind")
    assert status == 400 and "unknown event kind 'no.such.kind'" in body["problems"][0]["message"]


def test_a_targeted_plan_through_the_api_plans_only_its_target(watch: ApiWatch) -> None:
    text = stack_yaml("alice", "aimed", "spared", stack="alice-targets")
    status, _, planned = call(watch, "POST", "/api/v1/plan?target=vm/alice/aimed", token="alice", body=text)
    assert status == 200
    assert [(a["kind"], a["name"], a["action"]) for a in planned["actions"]] == [("vm", "aimed", "create")]
    status, _, body = call(watch, "POST", "/api/v1/plan?target=vm/alice", token="alice", body=text)
    assert status == 400 and "a target is KIND/OWNER/NAME" in body["problems"][0]["message"]


def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def observed_at(headers: dict[str, str]) -> float:
    """The Epfiot-Observed-At header of an answer, as a time.time() value."""
    from datetime import datetime

    return datetime.fromisoformat(headers["Epfiot-Observed-At"].replace("Z", "+00:00")).timestamp()


def test_a_vm_applied_through_the_api_shows_in_the_next_read_from_an_observation_after_the_apply(watch: ApiWatch) -> None:
    import time

    before = time.time()
    status, _, applied = apply(watch, "alice", stack_yaml("alice", "fresh1", stack="alice-fresh"))
    assert status == 200 and [(o["name"], o["ok"]) for o in applied["outcomes"]] == [("fresh1", True)]
    status, headers, vms = call(watch, "GET", "/api/v1/vms?fields=name,state", token="alice")
    assert status == 200 and {"name": "fresh1", "state": "running"} in vms
    # Rendered from the observation the apply ended with, not one older than the apply.
    assert observed_at(headers) >= before
    status, headers, vm = call(watch, "GET", "/api/v1/vms/alice/fresh1", token="alice")
    assert status == 200 and vm["state"] == "running" and observed_at(headers) >= before


def test_the_freshness_of_host_reads_is_in_a_header_that_moves_forward_after_a_change(watch: ApiWatch) -> None:
    for path in ("/api/v1/vms", "/api/v1/usb", "/api/v1/networks", "/api/v1/images"):
        status, headers, _ = call(watch, "GET", path, token="alice")
        assert status == 200 and "Epfiot-Observed-At" in headers, path
    _, headers, _ = call(watch, "GET", "/api/v1/vms", token="alice")
    first = observed_at(headers)
    assert apply(watch, "alice", stack_yaml("alice", "later1", stack="alice-later"))[0] == 200
    _, after, vms = call(watch, "GET", "/api/v1/vms?fields=name", token="alice")
    assert observed_at(after) > first and {"name": "later1"} in vms


def test_a_read_answers_while_a_reconcile_waits_in_the_worker_thread(watch: ApiWatch) -> None:
    """Another epfiot holds the host lock: watch's reconcile of a saved manifest waits for it in the worker
    thread, and reads answer meanwhile, from watch's last observation."""
    from epfiot.state import host_lock

    directory = watch.stacks.parent
    assert apply(watch, "alice", stack_yaml("alice", "steady1", stack="alice-steady"))[0] == 200
    mark = watch.process.mark()
    with host_lock(directory / "state", f"test://{directory / 'host.xml'}", on_wait=lambda _: None):
        (watch.stacks / "waiting.yaml").write_text(stack_yaml("admin", "waits1", stack="admin-waiting"))
        watch.process.event("lock.wait", after=mark)

        async def read() -> tuple[int, Any]:
            # A read that waited for the worker thread would wait for the lock this test holds: it would
            # never answer, and the bound turns that into a failure rather than a hang.
            bound = aiohttp.ClientTimeout(total=60)
            sent = {"Authorization": f"Bearer {TOKENS['alice']}"}
            async with aiohttp.ClientSession(timeout=bound) as session, session.get(watch.url + "/api/v1/vms?fields=name", headers=sent) as response:
                return response.status, await response.json()

        status, vms = asyncio.run(read())
        assert status == 200 and {"name": "steady1"} in vms
        assert not [r for r in watch.process.since(mark) if r.get("event") == "reconcile.done"]  # still waiting
    watch.process.event("action.done", after=mark, subject="vm/admin/waits1")
    # The reconcile's own observation is published once its run is over: the next reads show the VM.
    shown = lambda: {"owner": "admin", "name": "waits1"} in call(watch, "GET", "/api/v1/vms?fields=owner,name")[2]  # noqa: E731
    assert eventually(shown)
    (watch.stacks / "waiting.yaml").unlink()
