"""The package layering of docs/architecture.md: ctprep imports neither ctsample nor ctmodel; ctsample never
imports torch (or ctmodel). Checked on the source (every import, lazy ones inside functions included) and at
run time (importing every ctsample module loads no torch)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"ctprep": {"ctsample", "ctmodel"}, "ctsample": {"ctmodel", "torch"}}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, anywhere in the file (relative imports excluded)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layering(package):
    broken = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
              for path in modules_of(package)}
    assert {path: names for path, names in broken.items() if names} == {}


def test_the_source_scan_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from ctmodel.nets import build_model\n    import torch.nn\n")
    assert imported_packages(module) == {"ctmodel", "torch"}


def test_importing_every_ctsample_module_loads_no_torch():
    names = [".".join(path.relative_to(ROOT).with_suffix("").parts) for path in modules_of("ctsample")]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ctmodel')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
