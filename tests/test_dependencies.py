"""The committed lock agrees with pyproject.toml, and tools/deps.py writes what it says.

The lock (requirements/lock.txt) is what every `make` target installs; pyproject's ranges are
what users of the package get. A lock outside the ranges would mean the suite ran on versions
users cannot install, or the reverse.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def _deps_tool():
    spec = importlib.util.spec_from_file_location("lowbit_deps_tool", ROOT / "tools" / "deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lock() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra, items in project["optional-dependencies"].items():
        if extra != "all":
            reqs += [Requirement(r) for r in items]
    return reqs


def test_every_locked_direct_dependency_is_inside_pyprojects_range() -> None:
    lock = _lock()
    outside = []
    for req in _project_requirements():
        version = lock.get(canonicalize_name(req.name))
        if version is None:
            outside.append(f"{req.name}: not in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            outside.append(f"{req.name}=={version} outside {req.specifier}")
    assert not outside, "run `make lock`: " + "; ".join(outside)


def test_lock_pins_the_cpu_torch_and_the_build_tools() -> None:
    lock = _lock()
    assert lock["torch"] == Version("2.13.0")
    assert "setuptools" in lock and "pip" in lock
    assert not [name for name in lock if name.startswith("nvidia-")], "a CUDA build was locked"


def test_lowest_pins_take_each_lower_bound(tmp_path: Path) -> None:
    deps = _deps_tool()
    pins = dict(pin.split("==") for pin in deps.lowest_pins(["hf", "gguf"]))
    project = _project_requirements()
    for req in project:
        lower = [s.version for s in req.specifier if s.operator in (">=", "==")]
        if canonicalize_name(req.name) in {"transformers", "gguf", "numpy", "torch"}:
            assert pins[canonicalize_name(req.name)] == lower[0]
    assert "onnx" not in pins  # only the extras asked for
    out = tmp_path / "lowest.txt"
    assert deps.main(["lowest", str(out), "hf"]) == 0
    assert f"transformers=={pins['transformers']}" in out.read_text().splitlines()
