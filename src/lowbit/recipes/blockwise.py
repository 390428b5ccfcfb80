"""Calibrated weight algorithms (GPTQ, AWQ, SmoothQuant) applied one transformer block at a
time: observe the block's Linear inputs on the outputs of the already quantized blocks,
transform, quantize, replace, move on."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from lowbit.errors import InvalidSpecError
from lowbit.nn import QuantLinear
from lowbit.recipes.batches import Call, run_batch
from lowbit.recipes.blocks import calibrate_blocks
from lowbit.recipes.fuse import set_module
from lowbit.recipes.spec import QuantSpec
from lowbit.recipes.trace import trace_flow
from lowbit.recipes.weights import quantize_weight

log = logging.getLogger(__name__)

CALIBRATED_ALGORITHMS = ("gptq", "awq", "smoothquant")
X_SAMPLE_ROWS = 4096  # activation rows kept per layer for AWQ's output-error search


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and friends: an elementwise weight we can fold scales into."""
    weight = getattr(module, "weight", None)
    return (
        "norm" in type(module).__name__.lower()
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 1
    )


def norm_groups(block: nn.Module, example: Call) -> list[tuple[str, list[str]]]:
    """(norm, [linears]) pairs inside ``block`` where the norm's output feeds only those
    Linear layers, so per-input-channel scales can be folded into the norm exactly."""
    flow = trace_flow(block, example)
    modules = dict(block.named_modules())
    groups = []
    for name, module in modules.items():
        if not name or not _is_norm(module):
            continue
        users = flow.consumers.get(name, [])
        if users and all(isinstance(modules.get(u), nn.Linear) for u in users):
            groups.append((name, sorted(set(users))))
    return groups


def _collect(
    block: nn.Module, inputs: list[Call], linears: dict[str, nn.Linear], make: Any
) -> dict[str, Any]:
    """Run the block on every cached input with an observer on each Linear's input."""
    observers = {name: make(module) for name, module in linears.items()}
    handles = [
        module.register_forward_pre_hook(lambda m, args, o=observers[name]: o.observe(args[0]))
        for name, module in linears.items()
    ]
    try:
        with torch.no_grad():
            for call in inputs:
                run_batch(block, call)
    finally:
        for h in handles:
            h.remove()
    return observers


def _options(spec: QuantSpec) -> dict[str, Any]:
    return dict(spec.algorithm_options)


def make_block_step(plan: dict[str, QuantSpec]) -> Any:
    """The per-block function for calibrate_blocks: quantize the planned Linear layers of a
    block with their spec's algorithm."""

    def step(block_name: str, block: nn.Module, inputs: list[Call]) -> None:
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
                f"unknown algorithm(s) {algorithms}; use rtn, gptq, awq or smoothquant"
            )
        clips = {}
        if algorithms & {"awq", "smoothquant"}:
            clips = _scale_groups(block, inputs, linears, specs)
        weights = _algorithm_weights(block, inputs, linears, specs)
        for name, module in linears.items():
            spec = specs[name]
            weight = weights.get(name) or quantize_weight(
                module.weight, spec.weight, clip=clips.get(name)
            )
            set_module(
                block,
                name,
                QuantLinear.from_float(
                    module,
                    weight,
                    mode=spec.activation.mode,
                    per_token=spec.activation.per_token,
                    token_zero_point=spec.activation.token_zero_point,
                ),
            )

    return step


def _scale_groups(block, inputs, linears, specs) -> dict[str, tuple]:
    """AWQ / SmoothQuant: per-input-channel scales for norm → Linear groups, folded into the
    norm (x / s) and the Linear weights (W · s), so the float block computes the same.
    Returns AWQ clip ranges for the scaled Linear layers (name -> clip)."""
    from lowbit.algorithms.transforms import (
        awq_clip_range,
        awq_search_clip,
        awq_search_scales,
        fold_into_layernorm,
        input_channel_absmax,
        smoothquant_scales,
    )
    from lowbit.observers.channel_stats import ChannelStatsObserver

    groups = [
        (norm, [u for u in users if u in linears]) for norm, users in norm_groups(block, inputs[0])
    ]
    groups = [(n, us) for n, us in groups if us]
    if not groups:
        return {}
    first = {users[0]: linears[users[0]] for _, users in groups}
    stats = _collect(
        block, inputs, first, lambda m: ChannelStatsObserver(sample_rows=X_SAMPLE_ROWS)
    )
    modules = dict(block.named_modules())
    clips: dict[str, tuple] = {}
    for norm_name, users in groups:
        spec = specs[users[0]]
        obs = stats[users[0]]
        weights = [linears[u].weight.data for u in users]
        if spec.algorithm == "smoothquant":
            alpha = _options(spec).get("alpha", 0.5)
            s = smoothquant_scales(obs.max_abs, input_channel_absmax(weights), alpha)
        elif spec.algorithm == "awq":
            s = awq_search_scales(weights, obs.sample, obs.mean_abs, _fake_quantizer(spec))
        else:
            continue
        norm = modules[norm_name]
        bias = getattr(norm, "bias", None)
        new_weight, new_bias = fold_into_layernorm(
            norm.weight.data, None if bias is None else bias.data, s
        )
        norm.weight.data.copy_(new_weight)
        if bias is not None:
            bias.data.copy_(new_bias)
        for u in users:
            linears[u].weight.data.mul_(s.to(linears[u].weight.dtype))
        group = getattr(spec.weight.granularity, "size", None)
        if spec.algorithm == "awq" and group is not None:
            x_scaled = obs.sample / s
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
    return clips


def _fake_quantizer(spec: QuantSpec) -> Any:
    def fake(w: torch.Tensor) -> torch.Tensor:
        return quantize_weight(w, spec.weight).dequantize()

    return fake


def _algorithm_weights(block, inputs, linears, specs) -> dict[str, Any]:
    """GPTQ codes from each Linear's input Hessian (one pass over the block)."""
    gptq_layers = {n: m for n, m in linears.items() if specs[n].algorithm == "gptq"}
    if not gptq_layers:
        return {}
    from lowbit.observers.hessian import HessianObserver

    observers = _collect(block, inputs, gptq_layers, lambda m: HessianObserver())
    return {
        name: gptq_weight(module.weight.data, observers[name].hessian(), specs[name])
        for name, module in gptq_layers.items()
    }


def gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec) -> Any:
    """GPTQ-rounded IntPackedTensor of ``weight`` for an integer weight spec."""
    from lowbit.algorithms.gptq import gptq_quantize
    from lowbit.formats.granularity import PerGroup
    from lowbit.formats.qtypes import IntType, get_qtype
    from lowbit.recipes.weights import scale_dtype_of
    from lowbit.tensors import IntPackedTensor

    w = spec.weight
    qtype = get_qtype(w.format)
    if not isinstance(qtype, IntType):
        raise InvalidSpecError(f"GPTQ rounds integer formats, not {w.format!r}")
    group = w.granularity.size if isinstance(w.granularity, PerGroup) else None
    codes, qparams = gptq_quantize(
        weight.float(),
        hessian,
        qtype=IntType(qtype.bits, w.symmetric),
        group_size=group,
        symmetric=w.symmetric,
        form=w.form,
        **_options(spec),
    )
    return IntPackedTensor.from_codes(codes, qparams, scale_dtype=scale_dtype_of(w))


def quantize_blockwise(model: nn.Module, plan: dict[str, QuantSpec], batches: list[Any]) -> None:
    """Quantize the planned Linear layers inside the model's blocks, block by block."""
    calibrate_blocks(model, batches, make_block_step(plan))
