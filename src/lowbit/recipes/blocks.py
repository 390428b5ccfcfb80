"""Calibration one transformer block at a time.

The model's list of blocks is found by structure (a table of known names, as data, then a
structural fallback), the inputs of the first block are captured at its boundary by a hook,
and each block is calibrated and quantized on the outputs of the already quantized blocks
before it. Peak memory is one block's activations for the calibration set, not the
model's. No fx tracing: any architecture with a list of blocks works.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.progress import track
from lowbit.recipes.batches import Call, run_batch

# Where architectures keep their blocks (suffixes of module names), most specific first.
KNOWN_BLOCK_LISTS = (
    "model.layers",  # Llama, Mistral, Qwen, Gemma, Phi-3, SmolLM
    "model.decoder.layers",  # OPT, Whisper decoder
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "gpt_neox.layers",  # Pythia, GPT-NeoX
    "transformer.blocks",  # MPT
    "encoder.layer",  # BERT, RoBERTa, MiniLM
    "layers",
    "blocks",
    "h",
)


class BlocksNotFoundError(InvalidInputError):
    """No list of repeated blocks in the model."""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, ModuleList) of the model's transformer blocks."""
    lists = {n: m for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)}
    for suffix in KNOWN_BLOCK_LISTS:
        for name, modules in lists.items():
            if name == suffix or name.endswith("." + suffix):
                return name, modules
    candidates = [
        (name, modules)
        for name, modules in lists.items()
        if len(modules) >= 2
        and len({type(m) for m in modules}) == 1
        and any(isinstance(x, nn.Linear) for x in modules[0].modules())
    ]
    if candidates:
        return max(candidates, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
    raise BlocksNotFoundError(
        f"cannot find the transformer blocks of this {type(model).__name__}: no ModuleList of "
        f"repeated blocks with Linear layers (ModuleLists found: {sorted(lists) or 'none'}). "
        "Block-wise calibration needs one; add its name to "
        "lowbit.recipes.blocks.KNOWN_BLOCK_LISTS, or use a round-to-nearest recipe"
    )


class _FirstBlockReachedError(Exception):
    """Raised by the capture hook: nothing after the first block needs to run."""


def without_cache(model: nn.Module, batch: Any) -> Any:
    """Calibration batches must not fill a KV cache: add use_cache=False where accepted."""
    try:
        accepts = "use_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        accepts = False
    if not accepts:
        return batch
    if isinstance(batch, dict):
        return {**batch, "use_cache": False}
    if isinstance(batch, torch.Tensor):
        return {"input_ids": batch, "use_cache": False}
    return batch


def capture_inputs(model: nn.Module, block: nn.Module, batches: Iterable[Any]) -> list[Call]:
    """The (args, kwargs) the first block receives for each batch."""
    captured: list[Call] = []

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(Call(args, dict(kwargs)))
        raise _FirstBlockReachedError

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                with contextlib.suppress(_FirstBlockReachedError):
                    run_batch(model, without_cache(model, batch), i)
    finally:
        handle.remove()
    if not captured:
        raise InvalidInputError("calibration data is empty: give at least one batch")
    return captured


def block_output(block: nn.Module, call: Call) -> torch.Tensor:
    """The hidden states a block returns (the first element when it returns a tuple)."""
    out = run_batch(block, call)
    return out[0] if isinstance(out, tuple | list) else out


def next_call(call: Call, hidden: torch.Tensor) -> Call:
    """The same call with the hidden states replaced by ``hidden``."""
    if call.args:
        return Call((hidden, *call.args[1:]), call.kwargs)
    return Call((), {**call.kwargs, "hidden_states": hidden})


BlockStep = Callable[[str, nn.Module, Sequence[Call]], None]


class BlockSource(Protocol):
    """Where calibrate_blocks gets each block and keeps the activations between blocks.
    In memory (the default) a block is the model's own and the activations a list;
    lowbit.streaming reads each block's weights from disk, writes and frees it when done,
    and may keep activations on disk."""

    def capture(self, model: nn.Module, block: nn.Module, batches: list[Any]) -> list[Call]: ...

    def load(self, index: int, block: nn.Module) -> nn.Module: ...

    def done(self, index: int, block: nn.Module) -> None: ...

    def keep(self, calls: Iterable[Call]) -> Sequence[Call]: ...


class InMemoryBlocks:
    """The model's blocks as they are; activations in a list."""

    def capture(self, model: nn.Module, block: nn.Module, batches: list[Any]) -> list[Call]:
        return capture_inputs(model, block, batches)

    def load(self, index: int, block: nn.Module) -> nn.Module:
        return block

    def done(self, index: int, block: nn.Module) -> None:
        return None

    def keep(self, calls: Iterable[Call]) -> Sequence[Call]:
        return list(calls)


def calibrate_blocks(
    model: nn.Module,
    batches: list[Any] | None,
    step: BlockStep,
    source: BlockSource | None = None,
) -> Sequence[Call]:
    """Run ``step(name, block, inputs)`` on every block in order (it observes and quantizes
    the block in place), feeding each block the outputs of the already processed ones.
    ``batches`` None: nothing to calibrate, ``step`` gets no inputs. Returns the inputs the
    model's head receives after the last block."""
    source = source if source is not None else InMemoryBlocks()
    prefix, blocks = find_blocks(model)
    inputs = source.keep(source.capture(model, blocks[0], batches) if batches is not None else [])
    with torch.no_grad():
        for i in track(range(len(blocks)), "quantizing blocks", total=len(blocks)):
            block = source.load(i, blocks[i])
            step(f"{prefix}.{i}", block, inputs)
            inputs = source.keep(next_call(call, block_output(block, call)) for call in inputs)
            source.done(i, block)
    return inputs
