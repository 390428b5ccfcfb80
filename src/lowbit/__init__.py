"""lowbit: quantize trained neural networks, run them on real low-bit kernels, and report
honestly what it cost.

The model-level API (``quantize``, ``describe``, ``prepare_qat``, ``convert``, ``save``,
``load``, ``load_gguf``) and the sub-packages (``lowbit.recipes``, ``lowbit.nn``, ...) are
imported on first use, so ``import lowbit`` stays light and ``import lowbit;
lowbit.nn.QuantLinear`` works.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from lowbit.errors import LowbitError

__version__ = "0.1.0"

_LAZY = {
    "quantize": "lowbit.recipes",
    "describe": "lowbit.recipes",
    "prepare_qat": "lowbit.recipes",
    "convert": "lowbit.recipes",
    "Recipe": "lowbit.recipes",
    "PRESETS": "lowbit.recipes",
    "save": "lowbit.io",
    "load": "lowbit.io",
    "load_gguf": "lowbit.io.gguf",
    "export_gguf": "lowbit.export",
    "export_onnx": "lowbit.export.onnx",
    "export_tflite": "lowbit.export.tflite",
    "retain_freed_memory": "lowbit.kernels",
}

__all__ = ["LowbitError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # a sub-package or module
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
