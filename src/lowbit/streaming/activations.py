"""Calibration activations between blocks, in memory or spilled to disk.

The inputs of the next block are the hidden states of every calibration batch (batch x
sequence x hidden floats each); the other arguments of a block call (position embeddings,
masks) are shared by all blocks and stay in memory. When the hidden states do not fit the
budget they are written to one file per batch and read back one at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import safetensors.torch
import torch

from lowbit.recipes.batches import Call
from lowbit.recipes.blocks import next_call


def hidden_of(call: Call) -> torch.Tensor:
    """The hidden states a block call carries (its first argument, or hidden_states=)."""
    return call.args[0] if call.args else call.kwargs["hidden_states"]


class SpilledCalls(Sequence[Call]):
    """Block calls whose hidden states live in ``folder``, one file per call, read when the
    call is used; the files go when the object does."""

    _generation = itertools.count()

    def __init__(self, folder: Path, calls: Iterable[Call]) -> None:
        self._folder = folder
        self._calls: list[Call] = []
        self._files: list[Path] = []
        tag = next(self._generation)
        for i, call in enumerate(calls):
            path = folder / f"hidden-{tag}-{i}.safetensors"
            safetensors.torch.save_file({"hidden": hidden_of(call).contiguous()}, str(path))
            self._calls.append(next_call(call, torch.empty(0)))
            self._files.append(path)

    def __len__(self) -> int:
        return len(self._calls)

    def __getitem__(self, index: int) -> Call:  # type: ignore[override]
        hidden = safetensors.torch.load_file(str(self._files[index]))["hidden"]
        return next_call(self._calls[index], hidden)

    def __iter__(self) -> Iterator[Call]:
        return (self[i] for i in range(len(self)))

    def __del__(self) -> None:
        for path in self._files:
            path.unlink(missing_ok=True)
