"""The layers stay apart: only epfiot/libvirt imports libvirt, only epfiot/lwm2m imports aiocoap, and the
planner imports no driver at all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "epfiot"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_has_sources() -> None:
    assert len(sources()) > 10


@pytest.mark.parametrize(
    ("library", "home"),
    [("libvirt", "libvirt"), ("aiocoap", "lwm2m")],
)
def test_only_one_package_imports_each_driver(library: str, home: str) -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sources()
        if path.parent.name != home
        and any(name == library or name.startswith(library + ".") for name in imported_modules(path))
    ]
    assert offenders == [], f"{library} imported outside epfiot/{home}/"


PURE_MODULES = [*(f"plan/{p.name}" for p in sorted((PACKAGE / "plan").glob("*.py"))), "addressing.py", "model.py", "render.py", "views.py"]


def test_the_planner_package_is_checked() -> None:
    assert {"plan/__init__.py", "plan/steps.py", "plan/vms.py"} <= set(PURE_MODULES)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_no_driver(module: str) -> None:
    names = imported_modules(PACKAGE / module)
    drivers = {n for n in names if n.split(".")[0] in {"libvirt", "aiocoap"} or n.startswith("epfiot.libvirt")}
    drivers |= {n for n in names if n.startswith("epfiot.lwm2m") and not n.startswith("epfiot.lwm2m.registry")}
    assert drivers == set(), f"{module} imports {sorted(drivers)}"
