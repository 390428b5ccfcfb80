"""Calibration and example inputs: any iterable of batches, each a tensor (one positional
input), a tuple/list (positional inputs) or a dict (keyword inputs)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from lowbit.errors import InvalidInputError, LowbitWarning
from lowbit.observers.hooks import ObserverHook
from lowbit.progress import track

RECOMMENDED_SAMPLES = 100  # below this, ranges are noisy; 1000-2000 is the usual advice


class Call(NamedTuple):
    """Positional and keyword inputs of one call (what a block of a transformer receives)."""

    args: tuple
    kwargs: dict


def run_batch(model: nn.Module, batch: Any, index: int = 0) -> Any:
    """Call ``model`` on one batch; a failure becomes an error that says what was wrong."""
    try:
        if isinstance(batch, Call):
            return model(*batch.args, **batch.kwargs)
        if isinstance(batch, dict):
            return model(**batch)
        if isinstance(batch, tuple | list):
            return model(*batch)
        return model(batch)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise InvalidInputError(
            f"the model failed on calibration batch {index} ({describe_batch(batch)}): {exc}. "
            "calib_data must yield inputs the model accepts: a tensor, a tuple of positional "
            "inputs or a dict of keyword inputs (for (x, y) loaders pass (x for x, _ in loader))"
        ) from exc


def observe_batches(
    model: nn.Module, hooks: Iterable[ObserverHook], batches: list[Any], label: str | None = None
) -> None:
    """The one calibration loop (static PTQ, GPTQ, AWQ, SmoothQuant): run every batch through
    ``model`` without gradients while the observer ``hooks`` are attached; they are removed
    afterwards, also after an error. ``label`` shows progress."""
    with contextlib.ExitStack() as stack:
        for hook in hooks:
            stack.enter_context(hook)
        shown = track(batches, label, total=len(batches)) if label else batches
        with torch.no_grad():
            for i, batch in enumerate(shown):
                run_batch(model, batch, i)


def describe_batch(batch: Any) -> str:
    """Shapes of a batch, for error messages."""
    if isinstance(batch, torch.Tensor):
        return f"tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, Call):
        return describe_batch(batch.args) + " + " + describe_batch(batch.kwargs)
    if isinstance(batch, dict):
        return "dict(" + ", ".join(f"{k}={describe_batch(v)}" for k, v in batch.items()) + ")"
    if isinstance(batch, tuple | list):
        return "(" + ", ".join(describe_batch(v) for v in batch) + ")"
    return type(batch).__name__


def batch_size(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, dict) else batch
    for v in values:
        if isinstance(v, torch.Tensor):
            return batch_size(v)
    return 1


def collect_batches(
    calib_data: Iterable[Any] | None, what: str = "calibration", *, warn: bool = True
) -> list[Any]:
    """Materialise calib_data once (it is iterated twice: trace and calibrate) and, with
    ``warn``, warn when it holds fewer than RECOMMENDED_SAMPLES samples."""
    if calib_data is None:
        raise InvalidInputError(
            f"this recipe needs {what} data: pass calib_data=<iterable of input batches> "
            "(100+ samples; 1000-2000 is the usual recommendation)"
        )
    if isinstance(calib_data, torch.Tensor):
        batches: list[Any] = [calib_data]
    else:
        batches = list(calib_data)
    if not batches:
        raise InvalidInputError(f"{what} data is empty: give at least one batch")
    n = sum(batch_size(b) for b in batches)
    if warn and n < RECOMMENDED_SAMPLES:
        warnings.warn(
            f"{what} data holds only {n} samples; statistics from fewer than "
            f"{RECOMMENDED_SAMPLES} are noisy (usual: 1000-2000 images for static int8, "
            "128 windows of 512 tokens for GPTQ/AWQ/SmoothQuant)",
            LowbitWarning,
            stacklevel=3,
        )
    return batches
