"""What a plain apply imports: modules only some runs need stay out of the rest (a no-op `epfiot apply`
is a whole process, so every import counts; bench/bench_daemon.py measures it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Each is needed only by some runs: difflib for name suggestions in a bad document, ElementTree for the XML
# of USB devices, pools, volumes and DHCP hosts, concurrent.futures for a phase of more than one action.
ONLY_WHEN_USED = ("difflib", "xml.etree.ElementTree", "concurrent.futures")

SCRIPT = """
import json, sys
from epfiot.cli import main
assert main(sys.argv[1:]) == 0
print(json.dumps(sorted(name for name in {names!r} if name in sys.modules)))
"""


def test_an_apply_of_a_plain_vm_imports_none_of_the_modules_it_does_not_use(tmp_path: Path) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(
        "version: 1\nstack: plain\nowner: plain\nvms:\n  - name: a\n    memory: 64MiB\n    vcpu: 1\n    state: running\n"
    )
    argv = ["--connect", "test:///default", "--state-dir", str(tmp_path / "state"), "apply", "-f", str(manifest)]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(names=ONLY_WHEN_USED), *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []
