"""Manifest loading: every problem at once with file:line and field path, and the desired state it produces.

Bad cases are data: tests/manifests/bad/*.yaml (and directories of files), each problem expected as a comment on
its line (see tests/manifests/bad/README.md).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from epfiot.desired import load_manifest_text, load_manifests, schema
from epfiot.errors import ManifestError, ManifestProblem
from epfiot.model import (
    NAME_PATTERN,
    NetworkMode,
    NetworkSpec,
    PowerState,
    ResourceWriteSpec,
    Source,
    UsbId,
)

HERE = Path(__file__).resolve().parent
DATA = HERE / "manifests"
REPO = HERE.parent
SPECS = sorted((REPO / "specs").glob("*.yaml"))
SPECS_ENV = {"ALICE_PASSWORD": "example"}  # the secrets the examples read from the environment
ENV = {"EPFIOT_TEST_PASSWORD": "Zebra-Quokka-417"}


def problems_of(*paths: str, env: dict[str, str] | None = None, **kwargs: Any) -> list[ManifestProblem]:
    with pytest.raises(ManifestError) as caught:
        load_manifests(list(paths), env=ENV if env is None else env, **kwargs)
    return caught.value.problems


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


VM = "version: 1\nstack: {stack}\nowner: {owner}\nvms:\n  - name: {name}\n    memory: 64MiB\n    vcpu: 1\n"


# --- the table of bad manifests -------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    file: str
    line: int
    path: str
    text: str

    def matches(self, problem: ManifestProblem) -> bool:
        return (problem.file, problem.line, problem.path) == (self.file, self.line, self.path) and self.text in problem.message

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path or '-'}: {self.text}"


_EXPECT = re.compile(r"# expect(-file)?: (\S+): (.*?)\s*(?=# expect|$)")


def expectations(case: Path) -> list[Expected]:
    files = sorted(case.rglob("*.yaml")) if case.is_dir() else [case]
    found = []
    for file in files:
        name = str(file.relative_to(DATA))
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            for whole_file, path, text in _EXPECT.findall(line):
                found.append(Expected(name, 0 if whole_file else number, "" if path == "-" else path, text))
    return found


BAD_CASES = sorted(p for p in (DATA / "bad").iterdir() if p.suffix == ".yaml" or p.is_dir())


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda p: p.name)
def test_bad_manifest_reports_exactly_the_expected_problems(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    expected = expectations(case)
    assert expected, f"{case} has no # expect: comments"
    problems = problems_of(str(case.relative_to(DATA)))
    missing = [str(e) for e in expected if not any(e.matches(p) for p in problems)]
    extra = [str(p) for p in problems if not any(e.matches(p) for e in expected)]
    assert (missing, extra) == ([], []), "\n".join(["missing:", *missing, "unexpected:", *extra])
    assert len(problems) == len(expected)


def test_all_bad_cases_at_once_report_every_problem_of_every_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    expected = [e for case in BAD_CASES for e in expectations(case)]
    problems = problems_of("bad")
    # Loaded together, the cases also clash with each other (alice's stacks, VMs and networks), and hints that
    # list names list more of them: every expected problem must still be there, at its place.
    places = {(p.file, p.line, p.path) for p in problems}
    missing = [str(e) for e in expected if (e.file, e.line, e.path) not in places]
    assert missing == []


def test_problems_are_sorted_and_the_message_counts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    with pytest.raises(ManifestError) as caught:
        load_manifests(["bad/schema-typos.yaml"], env=ENV)
    error = caught.value
    assert error.problems == sorted(error.problems, key=lambda p: (p.file, p.line, p.path))
    lines = str(error).splitlines()
    assert lines[0] == f"{len(error.problems)} problems in the manifests; nothing was changed:"
    assert "  bad/schema-typos.yaml:8: vms[0].memroy: unknown field 'memroy' (did you mean 'memory'?)" in lines
    assert error.exit_code == 2


# --- good manifests and what they become ----------------------------------------------------------------


def test_a_vm_with_defaults() -> None:
    desired = load_manifest_text(VM.format(stack="s", owner="alice", name="example1"), "m.yaml")
    (vm,) = desired.vms
    assert (vm.owner, vm.stack, vm.name) == ("alice", "s", "example1")
    assert (vm.memory_mib, vm.max_memory_mib, vm.vcpu, vm.max_vcpu) == (64, 64, 1, 1)
    assert vm.state is PowerState.RUNNING and vm.allow_restart is False
    assert vm.shutdown_timeout == 60.0 and vm.wait_for_address is None
    assert (vm.image, vm.disk_size_gib, vm.network, vm.address, vm.credentials, vm.devices) == (None,) * 5 + ((),)
    assert vm.source == Source("m.yaml", 5)
    assert desired.stacks[0].source == Source("m.yaml", 2)


def test_every_field_of_a_full_document(tmp_path: Path) -> None:
    write(tmp_path / "pw.txt", "Zebra-Quokka-417\n")
    text = """\
version: 1
stack: full
owner: alice
networks:
  - name: lan
    mode: isolated
    cidr: 10.160.0.0/24
    dhcp: {start: 10.160.0.100, end: 10.160.0.150}
vms:
  - name: big
    memory: 1.5GiB
    max_memory: 4GiB
    vcpu: 2
    max_vcpu: 8
    state: paused
    allow_restart: yes
    shutdown_timeout: 1m30s
    image: debian-12.qcow2
    disk_size: 1TiB
    network: lan
    address: 10.160.0.200
    wait_for_address: 2m
    credentials:
      user: alice
      password: {file: pw.txt}
      ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL alice@laptop"]
      hostname: big.example.org
      user_data: "#cloud-config\\npackages: [git]"
    devices:
      - usb: {vendor: 0403, product: 6001, serial: FT123, port: "1-2.3", required: false}
      - usb: {id: "18D1:9302", aliases: ["1a6e:089A"]}
things:
  - name: urn:imei:490154203237518
    vm: big
    port: 5690
    lifetime: 60
    binding: UQ
    bootstrap:
      delete: [/0, /1, /3/0]
      write:
        - {path: /3/0/14, value: "+01:00"}
        - {path: /1/1/2, value: 1}
        - {path: /3/0/13, value: 1.5}
        - {path: /3/0/16, value: true}
  - name: plain
    server: coap://[2001:db8::1]:5683
"""
    desired = load_manifest_text(text, "full.yaml", env={}, base_dir=tmp_path)
    (net,) = desired.networks
    assert net == NetworkSpec("alice", "full", "lan", NetworkMode.ISOLATED, "10.160.0.0/24", "10.160.0.100", "10.160.0.150")
    (vm,) = desired.vms
    assert (vm.memory_mib, vm.max_memory_mib, vm.vcpu, vm.max_vcpu) == (1536, 4096, 2, 8)
    assert vm.state is PowerState.PAUSED and vm.allow_restart is True
    assert (vm.shutdown_timeout, vm.wait_for_address) == (90.0, 120.0)
    assert (vm.image, vm.disk_size_gib, vm.network, vm.address) == ("debian-12.qcow2", 1024, "lan", "10.160.0.200")
    creds = vm.credentials
    assert creds is not None
    assert creds.user == "alice" and creds.hostname == "big.example.org" and creds.user_data == "#cloud-config\npackages: [git]"
    assert creds.password_hash is not None and creds.password_hash.startswith("$6$")
    assert creds.ssh_authorized_keys == ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL alice@laptop",)
    ftdi, coral = vm.devices
    # Unquoted 0403 stays "0403" (YAML 1.1 would read the octal number 259); ids are lower-cased.
    assert (ftdi.id, ftdi.serial, ftdi.port, ftdi.required) == (UsbId("0403", "6001"), "FT123", "1-2.3", False)
    assert (coral.id, coral.aliases, coral.required) == (UsbId("18d1", "9302"), (UsbId("1a6e", "089a"),), True)
    assert ftdi.source == Source("full.yaml", 30)
    thing, plain = desired.things
    assert (thing.name, thing.vm, thing.server, thing.port, thing.lifetime, thing.binding) == (
        "urn:imei:490154203237518", "big", None, 5690, 60, "UQ",
    )  # fmt: skip
    assert thing.deletes == ("/0", "/1", "/3/0")
    assert thing.writes == (
        ResourceWriteSpec("/3/0/14", "+01:00"),
        ResourceWriteSpec("/1/1/2", 1),
        ResourceWriteSpec("/3/0/13", 1.5),
        ResourceWriteSpec("/3/0/16", True),
    )
    assert (plain.vm, plain.server, plain.deletes, plain.writes, plain.lifetime) == (
        None, "coap://[2001:db8::1]:5683", ("/0", "/1"), (), 300,
    )  # fmt: skip


def test_the_good_manifests_load() -> None:
    desired = load_manifests([str(DATA / "good")], env=ENV)
    assert [v.libvirt_name for v in desired.vms] == ["alice.example1", "bob.example1", "bob.example2"]
    assert [(v.address, v.memory_mib) for v in desired.vms][1:] == [("10.171.0.200", 64), ("10.171.0.201", 64)]
    assert [t.name for t in desired.things] == ["bob-sensor"]


def test_a_thing_with_neither_vm_nor_server_is_valid() -> None:
    text = "version: 1\nstack: s\nowner: alice\nthings:\n  - name: later\n"
    (thing,) = load_manifest_text(text).things
    assert (thing.vm, thing.server) == (None, None)


def test_several_documents_and_an_empty_one_merge() -> None:
    text = "\n---\n".join(
        [
            VM.format(stack="s1", owner="alice", name="a"),
            "# only a comment: an empty document is skipped",
            VM.format(stack="s1", owner="alice", name="b"),
            VM.format(stack="s2", owner="bob", name="a"),
        ]
    )
    desired = load_manifest_text(text, "multi.yaml")
    assert [(v.owner, v.stack, v.name) for v in desired.vms] == [("alice", "s1", "a"), ("alice", "s1", "b"), ("bob", "s2", "a")]
    assert [(s.owner, s.name) for s in desired.stacks] == [("alice", "s1"), ("bob", "s2")]
    assert desired.scopes() == {("alice", "s1"), ("bob", "s2")}
    assert [v.source.line for v in desired.vms] == [5, 16, 25]


def test_a_directory_is_read_recursively_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", VM.format(stack="s", owner="alice", name="b"))
    write(tmp_path / "a" / "z.yml", VM.format(stack="s", owner="alice", name="z"))
    write(tmp_path / "c.yaml", VM.format(stack="s", owner="alice", name="c"))
    write(tmp_path / "notes.txt", "not yaml")
    write(tmp_path / ".hidden" / "x.yaml", "this is not even valid: [")
    write(tmp_path / ".skipped.yaml", "nor this: [")
    desired = load_manifests([str(tmp_path)])
    assert [v.name for v in desired.vms] == ["z", "b", "c"]
    assert desired.vms[0].source == Source(str(tmp_path / "a" / "z.yml"), 5)


def test_a_file_named_twice_is_read_once(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", VM.format(stack="s", owner="alice", name="a"))
    assert len(load_manifests([str(path), str(tmp_path), str(path)]).vms) == 1


def test_stdin_and_files_merge(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", VM.format(stack="s", owner="alice", name="a"))
    stdin = io.StringIO(VM.format(stack="s", owner="alice", name="b"))
    desired = load_manifests([str(path), "-"], stdin=stdin)
    assert [(v.name, v.source.file) for v in desired.vms] == [("a", str(path)), ("b", "<stdin>")]


def test_password_files_of_stdin_documents_are_relative_to_base_dir(tmp_path: Path) -> None:
    write(tmp_path / "secret", "Zebra-Quokka-417\n")
    text = VM.format(stack="s", owner="alice", name="a") + "    credentials:\n      user: alice\n      password: {file: secret}\n"
    desired = load_manifests(["-"], stdin=io.StringIO(text), base_dir=tmp_path)
    creds = desired.vms[0].credentials
    assert creds is not None and creds.password_hash is not None


def test_password_files_are_relative_to_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "stacks" / "secret", "Zebra-Quokka-417")
    text = VM.format(stack="s", owner="alice", name="a") + "    credentials:\n      user: alice\n      password: {file: secret}\n"
    path = write(tmp_path / "stacks" / "a.yaml", text)
    monkeypatch.chdir(tmp_path)
    creds = load_manifests([str(path.relative_to(tmp_path))]).vms[0].credentials
    assert creds is not None and creds.password_hash is not None


def test_missing_paths_and_empty_directories_are_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    problems = problems_of(str(tmp_path / "nope.yaml"), str(tmp_path / "empty"))
    assert [(p.file, p.line, p.message) for p in problems] == [
        (str(tmp_path / "empty"), 0, "no *.yaml or *.yml files in this directory"),
        (str(tmp_path / "nope.yaml"), 0, "no such file or directory"),
    ]


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = """\
version: 1
stack: s
owner: alice
vms:
  - &small
    name: a
    memory: 64MiB
    vcpu: 1
    shutdown_timeout: 5s
  - <<: *small
    name: b
    memory: 128MiB
"""
    _, b = load_manifest_text(text).vms
    assert (b.name, b.memory_mib, b.vcpu, b.shutdown_timeout) == ("b", 128, 1, 5.0)
    assert b.source.line == 10


def test_alias_bombs_are_refused() -> None:
    lines = ["version: 1", "stack: s", "owner: alice", "x0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    with pytest.raises(ManifestError) as caught:
        load_manifest_text("\n".join(lines))
    # refused where the expansion crosses the limit: x4 stands for 10**5 values
    assert [(p.line, p.path) for p in caught.value.problems] == [(8, "")]
    assert "YAML aliases (*name) and merge keys (<<) expand this document past" in caught.value.problems[0].message


def test_unknown_tags_are_problems() -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest_text("version: 1\nstack: s\nowner: alice\nvms: !!python/object:os.system [ls]\n")
    assert any("unsupported YAML tag" in p.message for p in caught.value.problems)


def test_duplicates_across_files_name_both_places(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", VM.format(stack="s", owner="alice", name="example1"))
    b = write(tmp_path / "b.yaml", VM.format(stack="s", owner="alice", name="example1"))
    (problem,) = problems_of(str(a), str(b))
    assert (problem.file, problem.line, problem.path) == (str(b), 5, "vms[0].name")
    assert problem.message == f"VM 'example1' of owner 'alice' is defined twice: here and at {a}:5"


def test_the_same_name_for_two_owners_is_fine() -> None:
    text = VM.format(stack="sa", owner="alice", name="example1") + "---\n" + VM.format(stack="sb", owner="bob", name="example1")
    assert [v.libvirt_name for v in load_manifest_text(text).vms] == ["alice.example1", "bob.example1"]


def test_a_stack_split_over_files_with_one_owner_is_fine(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", VM.format(stack="s", owner="alice", name="a"))
    write(tmp_path / "b.yaml", VM.format(stack="s", owner="alice", name="b"))
    desired = load_manifests([str(tmp_path)])
    assert [s.name for s in desired.stacks] == ["s"] and len(desired.vms) == 2


def test_a_vm_name_is_the_model_pattern() -> None:
    name = schema()["$defs"]["name"]
    assert name["pattern"] == NAME_PATTERN


# --- speed (a measurement for the report, with a generous bound: not a benchmark) ---------------------------


def test_loading_a_thousand_vms_takes_well_under_a_few_seconds(tmp_path: Path) -> None:
    lines = ["version: 1", "stack: many", "owner: bench", "networks:", "  - {name: net, cidr: 10.200.0.0/16}", "vms:"]
    for i in range(1000):
        lines += [
            f"  - name: vm{i:04d}",
            "    memory: 64MiB",
            "    max_memory: 128MiB",
            "    vcpu: 1",
            "    max_vcpu: 2",
            "    network: net",
            f"    address: 10.200.{i // 200}.{i % 200 + 2}",
            "    devices:",
            f'      - usb: {{vendor: "18d1", product: "9302", serial: S{i}}}',
        ]
    path = write(tmp_path / "many.yaml", "\n".join(lines) + "\n")
    desired = load_manifests([str(path)])  # its speed is measured in bench/, never asserted here
    assert len(desired.vms) == 1000
    assert desired.vms[999].address == "10.200.4.201"
