"""Hostile and broken input: every one is a manifest problem at a real line, said in words, found at once.

No input may give a traceback, a hang, or a problem at line 0 (line 0 is for a path as a whole: missing,
unreadable, a directory without manifests)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

from epfiot.cli import main
from epfiot.desired import load_manifest_text, load_manifests, schema
from epfiot.errors import ManifestError, ManifestProblem
from epfiot.units import format_mib

HEAD = "version: 1\nstack: s\nowner: alice\n"
VM = HEAD + "vms:\n  - name: a\n    memory: 64MiB\n    vcpu: 1\n"


def problems(text: str) -> list[ManifestProblem]:
    with pytest.raises(ManifestError) as caught:
        load_manifest_text(text, "m.yaml", env={})
    return caught.value.problems


def merge_bomb(levels: int = 8, width: int = 10) -> str:
    """A few hundred bytes whose merge keys stand for width**levels mappings (minutes of work, if expanded)."""
    lines = ["x0: &a0 {}"]
    lines += [f"x{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * width)}]}}" for i in range(1, levels + 1)]
    return HEAD + "\n".join(lines) + "\n"


# --- bounded work ---------------------------------------------------------------------------------------


def test_a_merge_key_bomb_is_refused_at_once_by_the_command(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(merge_bomb())
    assert path.stat().st_size < 600
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "epfiot", "plan", "-f", str(path)],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{path}:9: YAML aliases (*name) and merge keys (<<) expand this document past" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


def test_the_bomb_is_refused_where_it_crosses_the_limit() -> None:
    (problem,) = problems(merge_bomb())
    # x5 stands for 10**5 empty mappings, more than the allowance above the text's size
    assert (problem.file, problem.line, problem.path) == ("m.yaml", 9, "")


def test_sharing_defaults_among_many_entries_is_fine() -> None:
    lines = [HEAD + "vms:", "  - &vm {name: vm0, memory: 64MiB, max_memory: 128MiB, vcpu: 1, max_vcpu: 2, state: shutoff}"]
    lines += [f"  - {{<<: *vm, name: vm{i}}}" for i in range(1, 5000)]
    desired = load_manifest_text("\n".join(lines), "m.yaml", env={})
    assert len(desired.vms) == 5000 and desired.vms[-1].max_memory_mib == 128


def test_the_allowance_is_for_the_whole_load_not_for_each_file_or_document(tmp_path: Path) -> None:
    # Each file expands to some 13,000 values (10**4 empty mappings): fine alone, refused once, together, they
    # pass the allowance; many small bombs are no way around it.
    for i in range(12):
        (tmp_path / f"f{i:02d}.yaml").write_text(merge_bomb(levels=4).replace("stack: s", f"stack: s{i}"))
    alone = [p.message for p in problems(merge_bomb(levels=4))]
    assert len(alone) == 5 and all(m.startswith("unknown field 'x") for m in alone)  # x0 ... x4: no bomb
    with pytest.raises(ManifestError) as caught:
        load_manifests([str(tmp_path)], env={})
    refused = sorted({p.file for p in caught.value.problems if "expand this document past" in p.message})
    files = [str(tmp_path / f"f{i:02d}.yaml") for i in range(12)]
    assert 2 <= len(files) - len(refused) <= 10 and refused == files[len(files) - len(refused) :], refused


def test_a_cloud_config_shares_the_allowance_of_its_manifest() -> None:
    bomb = "\\n".join(["#cloud-config", *merge_bomb(levels=4).splitlines()[3:]])
    vms = "".join(f"  - {{name: vm{i}, memory: 64MiB, vcpu: 1, credentials: {{user: u, user_data: \"{bomb}\"}}}}\n" for i in range(12))
    refused = [p.path for p in problems(HEAD + "vms:\n" + vms) if "expand this document past" in p.message]
    paths = [f"vms[{i}].credentials.user_data" for i in range(12)]
    assert 2 <= len(paths) - len(refused) <= 10 and refused == paths[len(paths) - len(refused) :], refused


@pytest.mark.parametrize(
    ("yaml_text", "line"),
    [
        ("x: &a [*a]\n", 4),  # a list inside itself
        ("x: &a {<<: *a}\n", 4),  # a mapping merged into itself
        ("x:\n  y: &a\n    z: [1, {w: *a}]\n", 5),
    ],
)
def test_an_alias_inside_its_own_anchor_is_refused(yaml_text: str, line: int) -> None:
    (problem,) = problems(HEAD + yaml_text)
    assert (problem.line, problem.message) == (line, "a YAML alias (*name) refers to a node that contains it: endless")


def test_deep_nesting_is_refused_at_its_line() -> None:
    (problem,) = problems(HEAD + "x: " + "[" * 70 + "]" * 70 + "\n")
    assert (problem.line, problem.message) == (4, "nested more than 64 levels deep")


# --- text that is not YAML ------------------------------------------------------------------------------


def test_invalid_utf8_on_stdin_is_a_problem_at_its_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # as `printf 'version: 1\nstack: s\xff\n' | epfiot plan -f -` gives it
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"version: 1\nstack: s\xff\n"), errors="surrogateescape"))
    assert main(["plan", "-f", "-"]) == 2
    err = capsys.readouterr().err
    assert "<stdin>:2: not UTF-8 text: byte 0xff at column 9 (save it as UTF-8)" in err


def test_text_stdin_that_could_not_be_decoded_is_a_problem_at_its_line() -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifests(["-"], stdin=io.StringIO("version: 1\nstack: s\udcff\n"), env={})
    assert [str(p) for p in caught.value.problems] == ["<stdin>:2: not UTF-8 text: byte 0xff at column 9 (save it as UTF-8)"]


def test_a_file_that_is_not_utf8_is_a_problem_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(VM.replace("name: a", "name: caf\xe9").encode("latin-1"))
    with pytest.raises(ManifestError) as caught:
        load_manifests([str(path)], env={})
    assert [(p.line, p.message) for p in caught.value.problems] == [
        (5, "not UTF-8 text: byte 0xe9 at column 14 (save it as UTF-8)")
    ]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("version: 1\nstack: s\x01\n", 2, "invalid YAML: character U+0001 at column 9 (a control character;"),
        ("version: 1\nstack: é\nowner: \x7f\n", 3, "invalid YAML: character U+007F at column 8 (a control character;"),
        ("version: 1\n\nstack: s\ufffe\n", 3, "invalid YAML: character U+FFFE at column 9 (not allowed in YAML text;"),
    ],
)
def test_characters_yaml_does_not_allow_are_problems_at_their_line(text: str, line: int, message: str) -> None:
    (problem,) = problems(text)
    assert problem.line == line and problem.message.startswith(message), problem


@pytest.mark.parametrize(
    ("value", "message"),
    [("!!int twelve", "tagged !!int but not a whole number"), ("!!float x", "tagged !!float but not a number"),
     ("!!bool maybe", "tagged !!bool but not true or false")],
)  # fmt: skip
def test_a_tag_its_value_does_not_fit_is_a_problem(value: str, message: str) -> None:
    (problem,) = problems(VM.replace("vcpu: 1", f"vcpu: {value}"))
    assert (problem.line, problem.path, problem.message) == (7, "vms[0].vcpu", message)


# --- sizes ----------------------------------------------------------------------------------------------


def test_the_size_maxima_are_in_the_schema_and_its_descriptions() -> None:
    defs = schema()["$defs"]
    memory, disk = defs["memorySize"], defs["diskSize"]
    assert format_mib(memory["maximum"]) == "16384GiB" and "16TiB" in memory["maximumErrorMessage"]
    assert disk["maximum"] == 64 * 1024 and "64TiB" in disk["maximumErrorMessage"]
    assert "At most 16TiB" in memory["description"] and "At most 64TiB" in disk["description"]
    vm = defs["vm"]["properties"]
    assert vm["vcpu"]["maximum"] == vm["max_vcpu"]["maximum"] == 1024
    assert "1024" in vm["vcpu"]["description"] and "1024" in vm["max_vcpu"]["description"]


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_a_number_that_is_not_finite_is_refused(value: str) -> None:
    text = HEAD + f"things:\n  - name: t\n    bootstrap:\n      write:\n        - {{path: /3/0/1, value: {value}}}\n"
    (problem,) = problems(text)
    assert (problem.line, problem.path) == (8, "things[0].bootstrap.write[0].value")
    assert problem.message.startswith("expected a string or a whole number or a number or true or false, got")
