"""quantize_folder: lowbit.quantize then lowbit.save, for a model folder larger than RAM.

The model is built on the meta device (no weights), then each transformer block in turn is
read from the folder's safetensors in float32, calibrated and quantized by the same code as
in memory (recipes.blocks.calibrate_blocks with a BlockSource), written to the save folder
and freed. What lies outside the blocks (embeddings, final norm, LM head) is read and
quantized last. The folder equals the in-memory lowbit.save of lowbit.quantize byte for byte
(tests/test_streaming/test_streaming.py), and the resident memory is about one block's.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.atomic import atomic_folder
from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.io.gguf.load import GGUFTensors
from lowbit.io.hf import load_skeleton
from lowbit.io.inspect import folder_safetensors
from lowbit.io.safetensors_stream import SafetensorsFiles
from lowbit.io.save import SaveWriter, check_output_folder, model_fields
from lowbit.nn.replace import set_module
from lowbit.observers.processes import world_size
from lowbit.recipes.batches import Call, collect_batches
from lowbit.recipes.blocks import calibrate_blocks, capture_inputs, find_blocks
from lowbit.recipes.blockwise import make_block_step
from lowbit.recipes.layers import float_layers, warn_unsupported
from lowbit.recipes.presets import get_recipe
from lowbit.recipes.quantize import (
    batch_tokens,
    block_plan,
    no_layer_error,
    plan_layers,
    quantize_embeddings,
    quantize_outside_blocks,
)
from lowbit.recipes.spec import Recipe
from lowbit.streaming.activations import SpilledCalls
from lowbit.streaming.memory import (
    block_bytes,
    default_max_memory,
    float32_bytes,
    format_size,
    return_freed_memory,
)

log = logging.getLogger(__name__)

# Reads one tensor at a time by the model's own name: .tensors (the names), .read(name).
TensorSource = SafetensorsFiles | GGUFTensors

# Calibration activations (inputs and outputs of a block) may take this share of the budget
# before they are spilled to disk.
ACTIVATION_SHARE = 0.25


def _meta_tensors(module: nn.Module, skip: str) -> dict[int, list[tuple[str, torch.Tensor]]]:
    """Every meta parameter and buffer of ``module`` (none under ``skip``.) by each of its
    names, grouped by tensor (a tied LM head and embedding: one tensor, two names)."""
    groups: dict[int, list[tuple[str, torch.Tensor]]] = {}
    named = itertools.chain(
        module.named_parameters(remove_duplicate=False),
        module.named_buffers(remove_duplicate=False),
    )
    for name, tensor in named:
        if tensor.is_meta and not (skip and name.startswith(skip + ".")):
            groups.setdefault(id(tensor), []).append((name, tensor))
    return groups


def _place(module: nn.Module, name: str, value: torch.Tensor) -> None:
    parent, _, leaf = name.rpartition(".")
    owner = module.get_submodule(parent)
    if isinstance(value, nn.Parameter):
        owner._parameters[leaf] = value
    else:
        owner._buffers[leaf] = value


def materialize(module: nn.Module, prefix: str, files: TensorSource, skip: str = "") -> None:
    """Replace ``module``'s meta tensors (but those under ``skip``) with their values read
    from ``files``, under ``prefix`` + their name, in the skeleton's dtype (float32); a
    tensor with several names is read once and stays shared."""
    for names in _meta_tensors(module, skip).values():
        stored = [n for n, _ in names if prefix + n in files.tensors]
        if not stored:
            raise InvalidInputError(
                f"the model folder has no tensor {prefix + names[0][0]!r} (streaming reads "
                "tensors under the model's own names); quantize without --max-memory"
            )
        skeleton = names[0][1]
        value = files.read(prefix + stored[0])
        if tuple(value.shape) != tuple(skeleton.shape):
            raise InvalidInputError(
                f"{prefix + stored[0]} is {tuple(value.shape)} in the folder but "
                f"{tuple(skeleton.shape)} in its config; the model files are inconsistent"
            )
        value = value.to(skeleton.dtype)
        if isinstance(skeleton, nn.Parameter):
            value = nn.Parameter(value, requires_grad=False)
        for name, _ in names:
            _place(module, name, value)


def release(module: nn.Module) -> None:
    """Put ``module``'s parameters back on the meta device (shared ones stay shared)."""
    empty: dict[int, nn.Parameter] = {}
    for name, param in list(module.named_parameters(remove_duplicate=False)):
        if id(param) not in empty:
            empty[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), False)
        _place(module, name, empty[id(param)])


def tensor_source(model: Path) -> TensorSource:
    """Where the weights are read from: a folder's safetensors, or a llama GGUF file."""
    if model.suffix == ".gguf":
        return GGUFTensors(model)
    return SafetensorsFiles(folder_safetensors(model))


def _stored_prefix(model: nn.Module, files: TensorSource) -> str:
    """What the files put before the model's own tensor names: "" as a rule; the base
    model's prefix ("model.") when a bare base model (LlamaModel, for a config without
    architectures) reads a checkpoint of the model with a head, as from_pretrained allows."""
    first = next(name for name, _ in model.named_parameters())
    base = getattr(model, "base_model_prefix", "")
    if first not in files.tensors and base and f"{base}.{first}" in files.tensors:
        return f"{base}."
    return ""


def _check_no_sharing(model: nn.Module, prefix: str) -> None:
    """A block is written and freed on its own, so no tensor may be shared between blocks
    or between a block and the rest (ALBERT-style sharing)."""
    owner: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        part = (
            ".".join(name.split(".")[: prefix.count(".") + 2])
            if name.startswith(prefix + ".")
            else ""
        )
        if owner.setdefault(id(param), part) != part:
            raise InvalidInputError(
                f"{name} is shared with {owner[id(param)] or 'a layer outside the blocks'}: "
                "streaming writes each block on its own; quantize without --max-memory"
            )


class StreamedBlocks:
    """calibrate_blocks' BlockSource for streaming: read each block when its turn comes,
    write and free it when it is done, keep activations in memory or on disk."""

    def __init__(
        self,
        model: nn.Module,
        files: TensorSource,
        writer: SaveWriter,
        recipe: Recipe,
        spill: Path | None,
        root: str = "",
    ) -> None:
        self.model, self.files, self.writer = model, files, writer
        self.recipe, self.spill = recipe, spill
        self.root = root  # what the files' names have before the model's own
        self.prefix, self.blocks = find_blocks(model)
        self.reasons: dict[str, str] = {}

    def capture(self, model: nn.Module, block: nn.Module, batches: list[Any]) -> list[Call]:
        """The first block's inputs, with what comes before it read from the files."""
        materialize(model, self.root, self.files, skip=self.prefix)
        try:
            return capture_inputs(model, block, batches)
        finally:
            release(model)

    def load(self, index: int, block: nn.Module) -> nn.Module:
        materialize(block, f"{self.root}{self.prefix}.{index}.", self.files)
        return block

    def done(self, index: int, block: nn.Module) -> None:
        name = f"{self.prefix}.{index}"
        self.reasons.update(float_layers(self.model, self.recipe, within=name))
        self.writer.add(block, name)
        self.blocks[index] = nn.Identity()  # the block's tensors go with it
        return_freed_memory()

    def keep(self, calls: Iterable[Call]) -> Sequence[Call]:
        return SpilledCalls(self.spill, calls) if self.spill is not None else list(calls)


def _check_budget(model: nn.Module, prefix: str, inside: dict[str, Any], max_memory: int) -> None:
    """Refuse before any work when one block, or what lies outside the blocks, cannot fit."""
    blocks = model.get_submodule(prefix)
    first = blocks[0]
    gptq_inputs = [
        m.in_features
        for n, m in first.named_modules()
        if isinstance(m, nn.Linear)
        and getattr(inside.get(f"{prefix}.0.{n}"), "algorithm", "") == "gptq"
    ]
    per_block = block_bytes(first, gptq_inputs)
    # embeddings, final norm and head are read and quantized together: their float32
    # tensors and RTN's temporaries, measured 2.6x their float32 bytes (bench_streaming.py)
    outside = 3 * (float32_bytes(model) - len(blocks) * float32_bytes(first))
    need = max(per_block, outside)
    if need > max_memory:
        raise InvalidInputError(
            f"quantizing this model one block at a time needs about {format_size(need)}, "
            f"more than --max-memory {format_size(max_memory)}; give a larger budget"
        )


def _spill_folder(
    batches: list[Any] | None, hidden_size: int, max_memory: int, tmp: Path
) -> Path | None:
    """Where to keep activations: None (memory) when a block's inputs and outputs for all
    calibration batches fit ACTIVATION_SHARE of the budget, else a folder in the output's
    temporary folder."""
    if not batches:
        return None
    tokens = sum(batch_tokens(b) for b in batches)
    activation_bytes = 2 * tokens * hidden_size * 4
    if activation_bytes <= ACTIVATION_SHARE * max_memory:
        return None
    folder = tmp / ".activations"
    folder.mkdir()
    log.info("calibration activations (%s) spill to disk", format_size(activation_bytes))
    return folder


def quantize_folder(
    folder: str | os.PathLike,
    recipe: str | Recipe,
    out: str | os.PathLike,
    *,
    calib_data: Iterable[Any] | None = None,
    max_memory: int | None = None,
    tokenizer: Any = None,
) -> Path:
    """Quantize the Hugging Face model in ``folder`` with ``recipe`` and write the lowbit save
    folder ``out``, one transformer block in memory at a time.

    Args:
        folder: config.json + safetensors (one file or shards), or a llama GGUF file
            (its tensors dequantized to float32 one at a time, as transformers would).
        recipe: a weight-only or dynamic-activation preset or Recipe (RTN, GPTQ, AWQ,
            SmoothQuant); static activation recipes need the whole model and are refused.
        calib_data: token batches, as for lowbit.quantize (calibrated recipes).
        max_memory: the budget in bytes (default: default_max_memory()); refused up front
            when one block cannot fit; activations spill to disk beyond a quarter of it.
        tokenizer: saved beside the model (default: the folder's own).
    """
    if world_size() > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InvalidInputError(
            "quantizing one block at a time (--max-memory) runs in one process; run it "
            "without torchrun"
        )
    folder = Path(folder)
    recipe = get_recipe(recipe)
    budget = max_memory if max_memory is not None else default_max_memory()
    if recipe.kind != "ptq":
        raise InvalidSpecError(
            f"{recipe.name!r} is a {recipe.kind} recipe; streaming quantizes post-training "
            "recipes (weight-only, dynamic, GPTQ, AWQ, SmoothQuant)"
        )
    loaded = load_skeleton(folder)
    model = loaded.model
    plan = plan_layers(model, recipe)
    if not plan:
        raise no_layer_error(model, recipe)
    if any(e.spec.activation.mode == "static" for e in plan):
        raise InvalidSpecError(
            f"{recipe.name!r} calibrates static activation ranges across the whole model, "
            "which streaming cannot do; use a weight-only or dynamic recipe, or quantize "
            "without --max-memory"
        )
    prefix, _ = find_blocks(model)
    _check_no_sharing(model, prefix)
    inside = block_plan(model, plan)
    _check_budget(model, prefix, inside, budget)
    calibrated = any(e.spec.algorithm != "rtn" for e in plan)
    batches = collect_batches(calib_data) if calibrated else None
    files = tensor_source(folder)
    order = [name or "(root)" for name, _ in model.named_modules()]
    out = check_output_folder(out)
    with atomic_folder(out) as tmp:
        writer = SaveWriter(tmp)
        hidden_size = getattr(model.config, "hidden_size", 0)
        root = _stored_prefix(model, files)
        spill = _spill_folder(batches, hidden_size, budget, tmp)
        source = StreamedBlocks(model, files, writer, recipe, spill, root)
        calibrate_blocks(model, batches, make_block_step(inside), source)
        set_module(model, prefix, nn.ModuleList())
        materialize(model, root, files)
        quantize_outside_blocks(model, plan, inside)
        quantize_embeddings(model, recipe)
        reasons = {**source.reasons, **float_layers(model, recipe)}
        warn_unsupported(reasons)
        model.lowbit_recipe = recipe.to_dict()  # type: ignore[assignment]
        model.lowbit_float_layers = {n: reasons[n] for n in order if n in reasons}  # type: ignore[assignment]
        writer.add(model)
        shutil.rmtree(tmp / ".activations", ignore_errors=True)  # its files went with the calls
        writer.finish(
            model_fields(model),
            tokenizer=tokenizer if tokenizer is not None else loaded.tokenizer,
            order=order,
        )
    return out
