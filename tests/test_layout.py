"""The package layout's one-way dependencies (README "Layout", DESIGN.md), checked on the
source's import statements."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PKG = REPO / "edgetl"


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.startswith("edgetl")}


def package_imports(folder: str) -> dict[str, set[str]]:
    return {str(p.relative_to(REPO)): imports_of(p) for p in (PKG / folder).rglob("*.py")}


# folder -> module prefixes it must never import
FORBIDDEN = {
    "runtime": ("edgetl.ondevice", "edgetl.cli", "edgetl.exporter", "edgetl.transfer", "edgetl.formats"),
    "ondevice": ("edgetl.runtime", "edgetl.cli", "edgetl.exporter", "edgetl.transfer", "edgetl.formats"),
    "bundle": ("edgetl.runtime", "edgetl.ondevice", "edgetl.backends", "edgetl.cli", "edgetl.exporter"),
    "core": ("edgetl.bundle", "edgetl.runtime", "edgetl.ondevice", "edgetl.backends", "edgetl.cli",
             "edgetl.exporter", "edgetl.transfer", "edgetl.formats"),
    "backends": ("edgetl.runtime", "edgetl.ondevice", "edgetl.cli", "edgetl.exporter"),
    "quantize": ("edgetl.exporter", "edgetl.formats", "edgetl.cli"),
    "formats": ("edgetl.exporter", "edgetl.cli", "edgetl.runtime", "edgetl.ondevice"),
    "transfer": ("edgetl.cli", "edgetl.exporter", "edgetl.runtime", "edgetl.ondevice"),
}


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_dependencies_run_one_way(folder):
    bad = {f: sorted(m for m in mods if m.startswith(FORBIDDEN[folder])) for f, mods in package_imports(folder).items()}
    assert not {f: m for f, m in bad.items() if m}


def test_no_library_module_imports_the_cli():
    for path in PKG.rglob("*.py"):
        if "cli" not in path.relative_to(PKG).parts:
            assert not any(m.startswith("edgetl.cli") for m in imports_of(path)), path


def test_library_never_draws_on_a_console():
    """Progress and messages go through edgetl.core.progress and logging; only cli/ prints."""
    for path in PKG.rglob("*.py"):
        if "cli" in path.relative_to(PKG).parts:
            continue
        source = path.read_text(encoding="utf-8")
        assert "rich.progress" not in source and "Console(" not in source, path
