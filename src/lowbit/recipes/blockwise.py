"""Calibrated weight algorithms (GPTQ, AWQ, SmoothQuant) applied one transformer block at a
time: observe the block's Linear inputs on the outputs of the already quantized blocks,
transform, quantize, replace, move on."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from lowbit.errors import InvalidSpecError, LowbitWarning
from lowbit.nn import QuantLinear
from lowbit.nn.replace import set_module
from lowbit.observers.hooks import ObserverHook
from lowbit.recipes.batches import Call, observe_batches
from lowbit.recipes.blocks import calibrate_blocks
from lowbit.recipes.input_transforms import ALGORITHM, quantize_with_input_transforms
from lowbit.recipes.spec import QuantSpec
from lowbit.recipes.trace import function_name, trace_flow
from lowbit.recipes.weights import quantize_weight

log = logging.getLogger(__name__)

CALIBRATED_ALGORITHMS = ("gptq", "awq", "smoothquant", ALGORITHM)
SCALED_ALGORITHMS = ("awq", "smoothquant")  # they fold per-input-channel scales
X_SAMPLE_ROWS = 4096  # activation rows kept per layer for AWQ's output-error search


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and friends: an elementwise weight we can fold scales into."""
    weight = getattr(module, "weight", None)
    return (
        "norm" in type(module).__name__.lower()
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 1
    )


def scale_groups(block: nn.Module, example: Call) -> list[tuple[str, list[str]]]:
    """(source, [linears]) pairs inside ``block`` where per-input-channel scales of those
    Linear layers can be folded exactly into the source's output: a norm whose output feeds
    only those Linear layers, or a Linear whose output reaches only the next Linear through
    an elementwise product (gated MLPs: act(gate(x)) * up(x) -> down)."""
    flow = trace_flow(block, example)
    modules = dict(block.named_modules())
    groups = []
    for name, module in modules.items():
        if not name:
            continue
        users = flow.consumers.get(name, [])
        if is_norm(module):
            if users and all(isinstance(modules.get(u), nn.Linear) for u in users):
                groups.append((name, sorted(set(users))))
        elif isinstance(module, nn.Linear) and flow.calls[name] == 1:
            via = flow.only_consumer(name)
            nxt = flow.only_consumer(via) if via is not None else None
            target = modules.get(nxt) if nxt is not None else None
            if (
                function_name(via or "") == "mul"
                and isinstance(target, nn.Linear)
                and flow.calls[nxt] == 1
                and target.in_features == module.out_features
            ):
                groups.append((name, [nxt]))
    return groups


def collect_inputs(
    block: nn.Module, inputs: Sequence[Call], linears: dict[str, nn.Linear], make: Any
) -> dict[str, Any]:
    """Run the block on every cached input with an observer on each Linear's input."""
    observers = {name: make(module) for name, module in linears.items()}
    hooks = [ObserverHook(m, observers[n], on="input") for n, m in linears.items()]
    observe_batches(block, hooks, inputs)
    return observers


def _options(spec: QuantSpec) -> dict[str, Any]:
    return dict(spec.algorithm_options)


class LayerQuantizer(Protocol):
    """How the block-wise pipeline stores one planned Linear, once its block is calibrated.

    ``fake(name, spec)``: the fake quantizer AWQ's scale search measures with (weight ->
    dequantized weight); ``clip_search``: whether AWQ's clip search applies (lowbit's group
    formats take clip ranges); ``quantize(block, local, name, module, spec, hessian, clip)``:
    quantize ``module`` (``local`` inside ``block``, ``name`` in the model) in place or
    replace it, with GPTQ's ``hessian`` (gptq layers) and AWQ's ``clip`` (or None). The
    block's outputs are then computed with what it left, so later blocks calibrate on them.
    """

    clip_search: bool

    def fake(self, name: str, spec: QuantSpec) -> Any: ...

    def quantize(
        self,
        block: nn.Module,
        local: str,
        name: str,
        module: nn.Linear,
        spec: QuantSpec,
        hessian: torch.Tensor | None,
        clip: Any,
    ) -> None: ...


class QuantLinearLayers:
    """lowbit's own formats: each Linear becomes a QuantLinear of its spec (GPTQ codes when a
    hessian is given, else RTN with AWQ's clip ranges)."""

    clip_search = True

    def fake(self, name: str, spec: QuantSpec) -> Any:
        return fake_quantizer(spec)

    def quantize(self, block, local, name, module, spec, hessian, clip) -> None:
        weight = (
            gptq_weight(module.weight.data, hessian, spec)
            if hessian is not None
            else quantize_weight(module.weight, spec.weight, clip=clip)
        )
        set_module(
            block,
            local,
            QuantLinear.from_float(
                module,
                weight,
                mode=spec.activation.mode,
                per_token=spec.activation.per_token,
                token_zero_point=spec.activation.token_zero_point,
            ),
        )


def make_block_step(plan: dict[str, QuantSpec], layers: LayerQuantizer | None = None) -> Any:
    """The per-block function for calibrate_blocks: quantize the planned Linear layers of a
    block with their spec's algorithm, stored by ``layers`` (default: QuantLinear)."""
    store = layers if layers is not None else QuantLinearLayers()

    def step(block_name: str, block: nn.Module, inputs: Sequence[Call]) -> None:
        linears = {
            n: m
            for n, m in block.named_modules()
            if isinstance(m, nn.Linear) and f"{block_name}.{n}" in plan
        }
        if not linears:
            return
        specs = {n: plan[f"{block_name}.{n}"] for n in linears}
        algorithms = {s.algorithm for s in specs.values()}
        if algorithms - {"rtn", *CALIBRATED_ALGORITHMS}:
            raise InvalidSpecError(
                f"unknown algorithm(s) {algorithms}; use rtn, gptq, awq, smoothquant or {ALGORITHM}"
            )
        transformed = {n: m for n, m in linears.items() if specs[n].algorithm == ALGORITHM}
        if transformed:
            if not isinstance(store, QuantLinearLayers):
                raise InvalidSpecError(f"{ALGORITHM} writes lowbit QuantLinear layers only")
            quantize_with_input_transforms(block, block_name, inputs, transformed, specs)
            linears = {n: m for n, m in linears.items() if n not in transformed}
        clips: dict[str, tuple] = {}
        if algorithms & set(SCALED_ALGORITHMS):
            clips, scaled = _scale_groups(block, inputs, linears, specs, block_name, store)
            _warn_unscaled(block_name, specs, scaled)
        hessians = _hessians(block, inputs, linears, specs)
        for name, module in linears.items():
            store.quantize(
                block, name, f"{block_name}.{name}", module, specs[name],
                hessians.get(name), clips.get(name),
            )  # fmt: skip

    return step


def _warn_unscaled(block_name: str, specs: dict[str, QuantSpec], scaled: set[str]) -> None:
    """Say which AWQ/SmoothQuant layers got no scales: they are rounded as plain RTN.

    A block where no such layer could be scaled (post-LN BERT: every norm output is also the
    residual, and GELU sits between the FFN Linears) is a LowbitWarning, since the algorithm
    asked for did nothing there; a few unscaled layers beside scaled ones (llama's o_proj, as
    in AutoAWQ for grouped-query attention) are logged. The block index is written ``*``, so
    the same layers of every block make one identical warning, shown once."""
    asked = [n for n in specs if specs[n].algorithm in SCALED_ALGORITHMS]
    unscaled = [n for n in asked if n not in scaled]
    if not unscaled:
        return
    algorithms = " / ".join(sorted({specs[n].algorithm for n in unscaled}))
    blocks = re.sub(r"\.\d+(?=\.|$)", ".*", block_name)
    where = f"{', '.join(unscaled)} in {blocks}"
    if len(unscaled) < len(asked):
        log.info("%s: %s rounded without scales (no exact fold)", algorithms, where)
        return
    warnings.warn(
        f"{algorithms} did nothing to {where}: no layer's input comes from a norm that feeds "
        "only Linear layers or from a gated product, so no scales fold in exactly (a post-LN "
        "model such as BERT); these layers are plain rtn with the same format. Use the plain "
        "preset (e.g. w8a8-dynamic, w4a16-g32), -gptq, or int8-dynamic-smooth (its scales "
        "applied by a multiply before each layer) instead",
        LowbitWarning,
        stacklevel=2,
    )


def _scale_groups(
    block, inputs, linears, specs, block_name: str = "", store: LayerQuantizer | None = None
) -> tuple[dict[str, tuple], set[str]]:
    """AWQ / SmoothQuant: per-input-channel scales s for each group of ``scale_groups``,
    folded into the source (its output / s) and the group's Linear weights (W · s), so the
    float block computes the same. As AutoAWQ: every s from the float block's statistics
    first, then all folds, then AWQ's clip search on the final weights. Returns the clip
    ranges of the scaled Linear layers (name -> clip) and the names of the scaled layers."""
    from lowbit.algorithms.transforms import (
        awq_clip_range,
        awq_search_clip,
        awq_search_scales,
        fold_into_layernorm,
        fold_into_linear_output,
        input_channel_absmax,
        smoothquant_scales,
    )
    from lowbit.observers.channel_stats import ChannelStatsObserver

    groups = [
        (source, [u for u in users if u in linears])
        for source, users in scale_groups(block, inputs[0])
    ]
    groups = [(n, us) for n, us in groups if us and specs[us[0]].algorithm in SCALED_ALGORITHMS]
    if not groups:
        return {}, set()
    store = store if store is not None else QuantLinearLayers()
    first = {users[0]: linears[users[0]] for _, users in groups}
    stats = collect_inputs(
        block, inputs, first, lambda m: ChannelStatsObserver(sample_rows=X_SAMPLE_ROWS)
    )
    for obs in stats.values():
        obs.combine_processes()  # several processes: each saw its share of the data
    scales = {}
    for source, users in groups:
        spec, obs = specs[users[0]], stats[users[0]]
        weights = [linears[u].weight.data for u in users]
        if spec.algorithm == "smoothquant":
            alpha = _options(spec).get("alpha", 0.5)
            scales[source] = smoothquant_scales(obs.max_abs, input_channel_absmax(weights), alpha)
        else:
            fakes = [store.fake(f"{block_name}.{u}", specs[u]) for u in users]
            scales[source] = awq_search_scales(weights, obs.sample, obs.mean_abs, fakes)
    modules = dict(block.named_modules())
    for source, users in groups:
        s = scales[source]
        producer = modules[source]
        bias = getattr(producer, "bias", None)
        fold = fold_into_linear_output if isinstance(producer, nn.Linear) else fold_into_layernorm
        new_weight, new_bias = fold(producer.weight.data, None if bias is None else bias.data, s)
        producer.weight.data.copy_(new_weight)
        if bias is not None:
            bias.data.copy_(new_bias)
        for u in users:
            linears[u].weight.data.mul_(s.to(linears[u].weight.dtype))
    clips: dict[str, tuple] = {}
    for source, users in groups if store.clip_search else ():
        spec = specs[users[0]]
        group = getattr(spec.weight.granularity, "size", None)
        if spec.algorithm != "awq" or group is None:
            continue
        x_scaled = stats[users[0]].sample / scales[source]
        for u in users:
            w = linears[u].weight.data
            max_val = awq_search_clip(
                w,
                x_scaled,
                group,
                lambda rows, clip, sp=spec: quantize_weight(
                    rows, sp.weight, clip=clip
                ).dequantize(),
            )
            clips[u] = awq_clip_range(w, max_val, group)
    return clips, {u for _, users in groups for u in users}


def fake_quantizer(spec: QuantSpec) -> Any:
    def fake(w: torch.Tensor) -> torch.Tensor:
        return quantize_weight(w, spec.weight).dequantize()

    return fake


def _hessians(block, inputs, linears, specs) -> dict[str, torch.Tensor]:
    """GPTQ's input Hessian of each gptq Linear (one pass over the block)."""
    gptq_layers = {n: m for n, m in linears.items() if specs[n].algorithm == "gptq"}
    if not gptq_layers:
        return {}
    from lowbit.observers.hessian import HessianObserver

    # float64 sums: GPTQ amplifies last-bit differences of H, and float32 sums differ with
    # the order of the batches (reordered or split over processes); float64 sums rounded
    # once to float32 give the same H for any order (docs/decisions.md, issue 15).
    observers = collect_inputs(
        block, inputs, gptq_layers, lambda m: HessianObserver(dtype=torch.float64)
    )
    for obs in observers.values():
        obs.combine_processes()  # several processes: each saw its share of the data
    return {name: observers[name].hessian().float() for name in gptq_layers}


def gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec) -> Any:
    """GPTQ-rounded IntPackedTensor of ``weight`` for an integer weight spec."""
    from lowbit.algorithms.gptq import gptq_quantize
    from lowbit.tensors import IntPackedTensor

    fmt = spec.weight.weight_format()
    codes, qparams = gptq_quantize(weight.float(), hessian, fmt, **_options(spec))
    return IntPackedTensor.from_codes(codes, qparams, scale_dtype=fmt.scale_dtype)


def quantize_blockwise(
    model: nn.Module,
    plan: dict[str, QuantSpec],
    batches: list[Any],
    layers: LayerQuantizer | None = None,
) -> None:
    """Quantize the planned Linear layers inside the model's blocks, block by block, stored
    by ``layers`` (default: lowbit's QuantLinear)."""
    calibrate_blocks(model, batches, make_block_step(plan, layers))
