"""epfiot completion: the bash and zsh scripts generated from the parser (shtab) parse and complete."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from epfiot.cli import main
from epfiot.cli.parser import COMMANDS


def script(capsys: pytest.CaptureFixture[str], shell: str) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def test_the_bash_script_parses_and_names_every_subcommand(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "epfiot.bash"
    path.write_text(script(capsys, "bash"))
    checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    text = path.read_text()
    assert "complete -o bashdefault -F _shtab_epfiot epfiot" in text
    for command in COMMANDS:
        assert command in text


def complete(path: Path, *words: str) -> list[str]:
    """What bash offers for the last of `words` after sourcing the script, as when Tab is pressed."""
    line = " ".join(("epfiot", *words))
    program = f'source "$1"; COMP_WORDS=({line}); COMP_CWORD={len(words)}; COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; _shtab_epfiot; printf "%s\\n" "${{COMPREPLY[@]}}"'
    done = subprocess.run(["bash", "-c", program, "bash", str(path)], capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.split()


def test_the_bash_script_completes_commands_options_and_choices(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "epfiot.bash"
    path.write_text(script(capsys, "bash"))
    assert complete(path, "pl") == ["plan"]
    assert complete(path, "plan", "--det") == ["--detailed-exitcode"]
    assert complete(path, "get", "''") == ["vms", "vm", "usb", "images", "networks", "things"]
    assert "--connect" in complete(path, "get", "vms", "--con")  # global options after the command, too


def test_the_zsh_script_names_every_subcommand(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = script(capsys, "zsh")
    assert text.startswith("#compdef epfiot")
    for command in COMMANDS:
        assert command in text
    if zsh := shutil.which("zsh"):
        path = tmp_path / "_epfiot"
        path.write_text(text)
        checked = subprocess.run([zsh, "-n", str(path)], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
