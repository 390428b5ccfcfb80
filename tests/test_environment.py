"""The test tree cannot collide with the environment it runs in.

pytest puts tests/ on sys.path, so a test folder named like an installed top-level module
either shadows it or is shadowed by it: transformers 5.25 installed a PyPI package called
`kernels`, and `from kernels.kernel_helpers import ...` (then tests/kernels/) broke every
fresh install. Test folders are named `test_<layer>`; helpers live in `lowbit_testkit`.
"""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _outside_project(entry: str) -> bool:
    """A sys.path entry that is not this checkout (tests/ and the repo root are ours)."""
    path = Path(entry or ".").resolve()
    return path != TESTS and path != ROOT


def _test_folders() -> list[Path]:
    return sorted(
        p
        for p in TESTS.rglob("*")
        if p.is_dir() and p.name != "__pycache__" and not p.name.startswith(".")
    )


def _importable_elsewhere(name: str) -> str | None:
    """Where `name` is importable from outside this checkout, or None."""
    if name in sys.builtin_module_names or name in sys.stdlib_module_names:
        return "the standard library"
    search_path = [entry for entry in sys.path if _outside_project(entry)]
    spec = importlib.machinery.PathFinder.find_spec(name, search_path)
    if spec is None:
        return None
    return spec.origin or ", ".join(spec.submodule_search_locations or [])


def test_no_test_folder_shares_its_name_with_an_importable_module() -> None:
    clashes = [
        f"{folder.relative_to(ROOT)} (also importable as `{folder.name}` from {where})"
        for folder in _test_folders()
        if folder.name.isidentifier() and (where := _importable_elsewhere(folder.name))
    ]
    assert not clashes, (
        "test folders named like importable top-level modules; rename them (test_<layer>): "
        + "; ".join(clashes)
    )


def test_the_check_finds_installed_and_standard_modules() -> None:
    """The check above can fail: installed and standard-library names are found, ours are not."""
    assert _importable_elsewhere("pytest") is not None
    assert _importable_elsewhere("json") == "the standard library"
    assert _importable_elsewhere("lowbit_testkit") is None
    assert _importable_elsewhere("test_kernels") is None


def test_helpers_are_imported_through_the_testkit_only() -> None:
    """No test imports a helper by a bare top-level name that a dependency could also own."""
    bare = ("from conftest import", "import conftest", "from kernels", "import kernels")
    offenders = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in TESTS.rglob("*.py")
        for line in path.read_text().splitlines()
        if line.lstrip().startswith(bare)
    ]
    assert not offenders, "import test helpers from lowbit_testkit: " + "; ".join(offenders)
