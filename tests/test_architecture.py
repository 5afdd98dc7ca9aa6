"""The layers stay apart, checked by import-linter over every module of the package (`make lint` runs
`lint-imports`; the contracts are [tool.importlinter] in pyproject.toml):

- drivers (epfiot.libvirt, epfiot.lwm2m) import nothing above them: not the planner, reconcile, apply, cli,
  watch;
- the planner and the pure modules (model, addressing, render, views) reach no driver, even through other
  modules, and import nothing of epfiot.lwm2m but its registry;
- the planner and the firewall's pure modules (epfiot.firewall.ruleset, .planning) run no nft (nor reach
  the modules that do) and reach no driver;
- the things registry (epfiot.registry) reaches no CoAP code;
- the manifest loader (epfiot.desired) reaches no driver and imports nothing that uses it (planner, cli,
  watch, cloudinit ...);
- only epfiot.libvirt imports libvirt; only epfiot.lwm2m imports aiocoap.

Contracts name packages, so they hold wherever modules move inside them. Imports inside functions count:
the second test adds such imports to a copy of the package and expects every contract to break.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# New modules whose imports, all inside functions, break one contract or more each.
PROBES = {
    "libvirt/_probe.py": "def f() -> None:\n    from epfiot.plan import Plan\n",
    "lwm2m/_probe.py": "def f() -> None:\n    from epfiot import watch\n",
    "plan/_probe.py": "def f() -> None:\n    import libvirt\n    from epfiot.lwm2m import codec\n",
    "registry/_probe.py": "def f() -> None:\n    from epfiot.lwm2m import codec\n",
    "_probe.py": "def f() -> None:\n    import aiocoap\n    import libvirt\n",
    "desired/_probe.py": "def f() -> None:\n    from epfiot import cloudinit\n",
}


def contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return found


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the package under `root`, not the installed one
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_package_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout


def test_imports_inside_functions_break_the_contracts(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "epfiot", tmp_path / "epfiot", ignore=shutil.ignore_patterns("__pycache__"))
    for path, source in PROBES.items():
        (tmp_path / "epfiot" / path).write_text(source)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    for contract in contracts():
        assert re.search(rf"^{re.escape(str(contract['name']))} ?BROKEN", result.stdout, re.MULTILINE), (
            f"{contract['name']!r} missed an import inside a function:\n{result.stdout}"
        )
    assert "epfiot._probe" in result.stdout and "epfiot.plan._probe" in result.stdout


def test_the_contracts_cover_the_rules() -> None:
    by_name = {str(c["name"]): c for c in contracts()}
    drivers = by_name["Drivers import nothing above them"]
    assert set(drivers["forbidden_modules"]) >= {  # type: ignore[arg-type]
        "epfiot.plan",
        "epfiot.reconcile",
        "epfiot.apply",
        "epfiot.cli",
        "epfiot.watch",
    }
    protected = {str(c["protected_modules"]): c["allowed_importers"] for c in contracts() if c["type"] == "protected"}
    assert protected == {"['libvirt']": ["epfiot.libvirt"], "['aiocoap']": ["epfiot.lwm2m"]}
