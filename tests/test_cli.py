"""The command line end to end, in process, on the libvirt test driver.

`test:///default` is shared by every connection of one process and reset when the last one closes: the
fixture holds one connection for the test's duration, so successive commands see one host, and each
test starts from a fresh one. Its predefined domain "test" has no epfiot metadata: it must survive all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from epfiot.cli import main
from tests.stacks import vm, write_stack

URI = "test:///default"




def domain_names(conn: libvirt.virConnect) -> set[str]:
    return {d.name() for d in conn.listAllDomains()}


def test_plan_apply_plan_is_the_idempotency_triple(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    stack = write_stack(tmp_path, "alice", vms=[vm("example1"), vm("example2", state="shutoff")])

    code, out, _ = run("plan", "-f", str(stack), "--detailed-exitcode")
    assert code == 2
    assert "+ vm alice/example1: create" in out
    assert "Plan: 2 to create, 0 to change, 0 to destroy, 0 unchanged." in out

    code, out, _ = run("apply", "-f", str(stack))
    assert code == 0, out
    assert "Apply complete: 2 created" in out
    assert host.lookupByName("alice.example1").isActive()
    assert not host.lookupByName("alice.example2").isActive()

    code, out, _ = run("plan", "-f", str(stack), "--detailed-exitcode")
    assert code == 0, out
    code, out, _ = run("apply", "-f", str(stack))
    assert code == 0 and "No changes." in out
    assert "test" in domain_names(host)


def pool_names(conn: libvirt.virConnect) -> set[str]:
    return {p.name() for p in conn.listAllStoragePools()}


def test_dry_run_and_plan_leave_a_host_without_an_image_pool_unchanged(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    credentials = {"user": "edge", "ssh_authorized_keys": ["ssh-ed25519 AAAA edge@laptop"]}
    stack = write_stack(tmp_path, "alice", vms=[vm("example1", credentials=credentials)])  # its seed needs the pool
    images = ["--image-dir", str(tmp_path / "images")]
    assert "epfiot-images" not in pool_names(host)

    code, out, _ = run(*images, "apply", "--dry-run", "-f", str(stack))
    assert code == 0, out
    assert "epfiot-images" not in pool_names(host)
    assert "+ pool epfiot-images: create image pool" in out and "+ vm alice/example1: create" in out
    code, out, _ = run(*images, "plan", "-f", str(stack), "--detailed-exitcode")
    assert code == 2 and "+ pool epfiot-images" in out
    code, out, _ = run(*images, "plan", "-f", str(stack), "-o", "json")
    assert json.loads(out)["setup"] == [{"kind": "pool", "name": "epfiot-images", "path": str(tmp_path / "images"), "action": "create", "done": False}]
    assert "epfiot-images" not in pool_names(host) and "alice.example1" not in domain_names(host)
    assert not (tmp_path / "state" / "events.db").exists()  # nothing done, nothing recorded

    code, out, _ = run(*images, "apply", "-f", str(stack))
    assert code == 0, out
    assert out.index("Image pool epfiot-images ready") < out.index("+ vm alice/example1: create")
    assert "epfiot-images" in pool_names(host) and "alice.example1" in domain_names(host)
    code, out, _ = run(*images, "plan", "-f", str(stack), "--detailed-exitcode")
    assert code == 0 and "pool" not in out
    code, out, _ = run("events", "-o", "json")
    kinds = [e["kind"] for e in json.loads(out)]
    assert kinds[0] == "pool.created" and "action.done" in kinds


def test_get_vms_json_and_field_selection(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    stack = write_stack(tmp_path, "alice", vms=[vm("example1", memory="128MiB", vcpu=2)])
    assert run("apply", "-f", str(stack))[0] == 0

    code, out, _ = run("get", "vms", "-o", "json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["name"], r["owner"], r["stack"], r["state"], r["vcpu"], r["memory_mib"]) for r in rows] == [
        ("example1", "alice", "alice-stack", "running", 2, 128)
    ]
    code, out, _ = run("get", "vms", "alice/example1", "-o", "json", "--fields", "name,state")
    assert json.loads(out) == [{"name": "example1", "state": "running"}]
    code, out, _ = run("get", "vms", "--fields", "name,state,memory,vcpu")
    assert out.splitlines() == ["NAME      STATE    MEMORY  VCPU", "example1  running  128MiB  2"]
    code, _, err = run("get", "vms", "--fields", "name,colour")
    assert code == 2 and "colour" in err


def test_live_vcpu_and_memory_changes_then_stop_and_start(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    write_stack(tmp_path, "alice", vms=[vm("example1", vcpu=1, max_vcpu=4, memory="64MiB", max_memory="256MiB")])
    assert run("apply", "-f", str(tmp_path))[0] == 0

    write_stack(tmp_path, "alice", vms=[vm("example1", vcpu=3, max_vcpu=4, memory="128MiB", max_memory="256MiB")])
    _code, out, _ = run("plan", "-f", str(tmp_path))
    assert "vcpu: 1 -> 3 (live)" in out and "memory_mib: 64 -> 128 (live)" in out
    assert run("apply", "-f", str(tmp_path))[0] == 0
    dom = host.lookupByName("alice.example1")
    assert dom.info()[3] == 3
    assert run("plan", "-f", str(tmp_path), "--detailed-exitcode")[0] == 0

    write_stack(tmp_path, "alice", vms=[vm("example1", vcpu=3, max_vcpu=4, memory="128MiB", max_memory="256MiB", state="shutoff")])
    assert run("apply", "-f", str(tmp_path))[0] == 0
    assert not dom.isActive()
    write_stack(tmp_path, "alice", vms=[vm("example1", vcpu=3, max_vcpu=4, memory="128MiB", max_memory="256MiB")])
    assert run("apply", "-f", str(tmp_path))[0] == 0
    assert dom.isActive()
    assert run("plan", "-f", str(tmp_path), "--detailed-exitcode")[0] == 0


def test_drift_a_vm_stopped_by_hand_is_started_again(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    stack = write_stack(tmp_path, "alice", vms=[vm("example1")])
    assert run("apply", "-f", str(stack))[0] == 0
    host.lookupByName("alice.example1").destroy()

    code, out, _ = run("plan", "-f", str(stack), "--detailed-exitcode")
    assert code == 2 and "state: shutoff -> running" in out
    assert run("apply", "-f", str(stack))[0] == 0
    assert host.lookupByName("alice.example1").isActive()


def test_prune_destroys_only_the_tenants_own_removed_vms(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    alice = tmp_path / "alice"
    bob = tmp_path / "bob"
    alice.mkdir()
    bob.mkdir()
    write_stack(alice, "alice", vms=[vm("example1"), vm("example2")])
    write_stack(bob, "bob", vms=[vm("example1")])
    assert run("apply", "-f", str(alice), "-f", str(bob))[0] == 0
    assert {"alice.example1", "alice.example2", "bob.example1"} <= domain_names(host)

    write_stack(alice, "alice", vms=[vm("example2")])
    code, out, _ = run("apply", "-f", str(alice), "--force", "-y")
    assert code == 0, out
    assert "- vm alice/example1: destroy (no longer declared)" in out
    names = domain_names(host)
    assert "alice.example1" not in names
    assert {"alice.example2", "bob.example1", "test"} <= names


def test_a_domain_without_epfiot_metadata_is_never_touched(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    xml = "<domain type='test'><name>alice.example1</name><memory>65536</memory><os><type>hvm</type></os></domain>"
    host.defineXML(xml)
    stack = write_stack(tmp_path, "alice", vms=[vm("example1", vcpu=2)])

    code, _out, err = run("apply", "-f", str(stack))
    assert code == 1
    assert "not managed by epfiot" in err
    assert "nothing was changed" in err
    dom = host.lookupByName("alice.example1")
    assert not dom.isActive() and dom.info()[3] == 1


def test_delete_one_vm_and_delete_by_manifest(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    stack = write_stack(tmp_path, "alice", vms=[vm("example1"), vm("example2")])
    assert run("apply", "-f", str(stack))[0] == 0

    code, out, _ = run("delete", "vm", "alice/example1", "--force", "-y")
    assert code == 0, out
    assert "alice.example1" not in domain_names(host)
    code, _, err = run("delete", "vm", "alice/example1")
    assert code == 1 and "vm alice/example1 does not exist" in err

    assert run("delete", "-f", str(stack), "--force", "-y")[0] == 0
    assert not {n for n in domain_names(host) if n.startswith("alice.")}


def test_manifest_errors_are_reported_at_once_before_any_connection(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nstack: s\nowner: alice\nvms:\n  - name: example1\n    memroy: 64MiB\n    vcpu: 0\n")
    # The URI cannot be opened: a manifest error must come first, before any libvirt call.
    code = main(["--connect", "test:///nonexistent/host.xml", "--state-dir", str(tmp_path / "s"), "apply", "-f", str(bad)])
    assert code == 2


def test_manifest_error_output_names_file_line_and_field(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nstack: s\nowner: alice\nvms:\n  - name: example1\n    memroy: 64MiB\n    vcpu: 0\n")
    code, _out, err = run("plan", "-f", str(bad))
    assert code == 2
    assert f"{bad}:" in err and "memroy" in err and "vcpu" in err


def test_connection_failure_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = write_stack(tmp_path, "alice", vms=[vm("example1")])
    uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    code = main(["--connect", uri, "--state-dir", str(tmp_path / "s"), "plan", "-f", str(stack)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cannot connect to libvirt at {uri}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_plan_json_output(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    stack = write_stack(tmp_path, "alice", vms=[vm("example1")])
    code, out, _ = run("plan", "-f", str(stack), "-o", "json")
    data = json.loads(out)
    assert code == 0
    assert data["summary"]["create"] == 1
    assert data["actions"][0]["kind"] == "vm" and data["actions"][0]["action"] == "create"


def test_schema_command_prints_the_json_schema(run) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run("schema")
    assert code == 0
    assert json.loads(out)["type"] == "object"


def test_manifest_from_stdin(tmp_path: Path, host: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io

    text = write_stack(tmp_path, "alice", vms=[vm("example1")]).read_text()
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code = main(["--connect", URI, "--state-dir", str(tmp_path / "s"), "apply", "-f", "-"])
    assert code == 0, capsys.readouterr()
    assert "alice.example1" in domain_names(host)


def test_installed_script_runs() -> None:
    script = Path(sys.executable).parent / "epfiot"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("epfiot ")


def test_detailed_exitcode_manifest_errors_are_1_and_2_without_the_flag(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nstack: s\nowner: alice\nvms:\n  - name: v1\n    memory: lots\n    vcpu: 1\n")
    code, _, err = run("plan", "-f", str(bad), "--detailed-exitcode")
    assert code == 1 and f"{bad}:6" in err, err
    code, _, err = run("plan", "-f", str(bad))
    assert code == 2 and f"{bad}:6" in err, err


def test_detailed_exitcode_is_3_when_a_vm_only_waits_for_an_unplugged_device(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "policy.yaml"
    policy.write_text("usb: []\n")
    stack = write_stack(tmp_path, "alice", vms=[vm("logger", devices=[{"usb": {"id": "0403:6001"}}])])
    assert run("--policy", str(policy), "apply", "-f", str(stack))[0] == 0
    code, out, _ = run("--policy", str(policy), "plan", "-f", str(stack), "--detailed-exitcode")
    assert code == 3, out
    assert "! vm alice/logger: wait (USB 0403:6001 is not plugged in" in out
    assert "Plan: 0 to create, 0 to change, 0 to destroy, 0 unchanged, 1 waiting." in out
    code, out, _ = run("--policy", str(policy), "plan", "-f", str(stack), "-o", "json")
    assert code == 0 and json.loads(out)["summary"]["wait"] == 1
    write_stack(tmp_path, "alice", vms=[vm("logger", devices=[{"usb": {"id": "0403:6001"}}]), vm("other")])
    assert run("--policy", str(policy), "plan", "-f", str(stack), "--detailed-exitcode")[0] == 2  # changes and waits: 2


def test_json_output_on_manifest_errors_gives_problems_with_file_line_and_path(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nstack: s\nowner: alice\nvms:\n  - name: v1\n    memory: lots\n    vcpu: 1\n")
    for command in ("plan", "apply"):
        code, out, err = run(command, "-f", str(bad), "-o", "json")
        assert code == 2 and "error:" in err
        (problem,) = json.loads(out)["problems"]
        assert (problem["file"], problem["line"], problem["path"]) == (str(bad), 6, "vms[0].memory"), problem
        assert problem["message"]


def test_json_output_gives_plan_problems_as_objects(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    host.defineXML("<domain type='test'><name>alice.example1</name><memory>65536</memory><os><type>hvm</type></os></domain>")
    stack = write_stack(tmp_path, "alice", vms=[vm("example1")])
    code, out, _ = run("plan", "-f", str(stack), "-o", "json")
    assert code == 1
    (problem,) = json.loads(out)["problems"]
    assert problem["file"] is None and "not managed by epfiot" in problem["message"], problem
    code, out, _ = run("apply", "-f", str(stack), "-o", "json")
    assert code == 1
    assert json.loads(out) == {"problems": [problem]}
    code, out, _ = run("--connect", "test:///nonexistent/path.xml", "get", "vms", "-o", "json")
    assert code != 0 and json.loads(out)["problems"][0]["message"]


def test_global_options_are_taken_anywhere_on_the_line(tmp_path: Path) -> None:
    from epfiot.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["plan", "-v", "-f", "x"])
    assert args.verbose and args.files == ["x"]
    args = parser.parse_args(["apply", "--virt-type", "qemu", "-f", "x"])
    assert args.virt_type == "qemu"
    assert parser.parse_args(["--connect", "test:///default", "get", "vms"]).connect == "test:///default"
    assert parser.parse_args(["get", "vms", "--connect", "test:///default"]).connect == "test:///default"
    # a value given before the command is not overwritten by the subcommand's default
    args = parser.parse_args(["-v", "--image-pool", "mine", "--state-dir", "/s", "plan", "-f", "x"])
    assert (args.verbose, args.image_pool, args.state_dir) == (True, "mine", Path("/s"))
    args = parser.parse_args(["plan", "-f", "x"])
    assert (args.verbose, args.connect, args.image_pool) == (False, None, "epfiot-images")


def test_global_options_after_the_command_reach_it(run, tmp_path: Path, host: libvirt.virConnect, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    stack = write_stack(tmp_path, "alice", vms=[vm("example1")])
    assert run("apply", "-f", str(stack))[0] == 0
    code = main(["get", "vms", "--connect", URI, "--state-dir", str(tmp_path / "state"), "-o", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["name"] for r in rows] == ["example1"]
    code = main(["plan", "-f", str(stack), "-v", "--connect", URI, "--state-dir", str(tmp_path / "state")])
    assert code == 0 and "= vm alice/example1: noop" in capsys.readouterr().out


def test_version_command_and_option(run, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from epfiot import __version__

    code, out, _ = run("version")
    assert code == 0 and out.splitlines()[0] == f"epfiot {__version__}" and "libvirt-python " in out
    code, out, _ = run("version", "-o", "json")
    assert code == 0 and json.loads(out)["epfiot"] == __version__
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"epfiot {__version__}\n"


def test_counts_in_the_output_agree_with_their_noun(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from epfiot.wording import counted

    assert (counted(0, "action"), counted(1, "action"), counted(2, "action")) == ("0 actions", "1 action", "2 actions")
    stack = write_stack(tmp_path, "alice", vms=[vm("example1")])
    code, out, _ = run("apply", "-f", str(stack))
    assert code == 0 and "\nApplying 1 action to test:///default ..." in out, out
    write_stack(tmp_path, "alice", vms=[vm("example1"), vm("example2"), vm("example3")])
    code, out, _ = run("apply", "-f", str(stack))
    assert code == 0 and "\nApplying 2 actions to test:///default ..." in out, out
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nstack: s\nowner: alice\nvms:\n  - name: v1\n    memory: lots\n    vcpu: 1\n")
    assert "error: 1 problem in the manifests; nothing was changed" in run("plan", "-f", str(bad))[2]


def test_serve_on_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "epfiot", "--state-dir", str(tmp_path / "state"), "serve", "--bind", "127.0.0.1", "--port", str(port), "--no-dtls"],
            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent,
        )
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and "bug" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == f"error: cannot serve LwM2M bootstrap: cannot listen for CoAP on 127.0.0.1 port {port}: Address already in use", line

