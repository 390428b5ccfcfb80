"""The import rules of docs/architecture.md hold: the import-linter contracts in pyproject.toml
(layers, and the forbidden imports the layers allow), and no private name crosses a module."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed: pip install 'lowbit[dev]'"
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout, out.stdout


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(source: str, package: str) -> list[str]:
    """``from lowbit.x import _name`` (or any import through a ``_private`` lowbit module) in
    ``source``, the text of a module of ``package``; relative imports are resolved."""
    parts = package.split(".")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(parts[: len(parts) + 1 - node.level] + ([base] if base else []))
            if base.split(".")[0] != "lowbit":
                continue
            for alias in node.names:
                if _private(alias.name) or any(map(_private, base.split("."))):
                    found.append(f"line {node.lineno}: from {base} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "lowbit" and any(map(_private, parts)):
                    found.append(f"line {node.lineno}: import {alias.name}")
    return found


def _package(path: Path) -> str:
    return ".".join(path.parent.relative_to(SRC).parts)


def test_no_private_name_is_imported_across_modules() -> None:
    """A name with a leading underscore is its module's own: another module that needs it
    needs a public (documented) name, or the code belongs in a shared place."""
    offenders = [
        f"src/{path.relative_to(SRC)} {hit}"
        for path in sorted((SRC / "lowbit").rglob("*.py"))
        for hit in private_imports(path.read_text(), _package(path))
    ]
    assert not offenders, "private names imported across modules: " + "; ".join(offenders)


def test_the_private_import_check_finds_them() -> None:
    """The check above can fail: absolute, relative and private-module imports are found."""
    src = (
        "from lowbit.recipes.quantize import plan_layers, _fuse\n"
        "from .inspect import _folder_safetensors\n"
        "from lowbit.kernels import _rowquant\n"
        "import lowbit.kernels._rowquant\n"
        "from lowbit import __version__\n"
        "from torch import _C\n"
    )
    assert private_imports(src, "lowbit.io") == [
        "line 1: from lowbit.recipes.quantize import _fuse",
        "line 2: from lowbit.io.inspect import _folder_safetensors",
        "line 3: from lowbit.kernels import _rowquant",
        "line 4: import lowbit.kernels._rowquant",
    ]
