"""The "input-transform" algorithm inside one transformer block: the Linear layers that read
one tensor share one input transform (a shrinking SmoothQuant multiply, float outlier
channels, or none), chosen by measured error (``lowbit.algorithms.transforms.input_transform``),
and become dynamic QuantLinear layers that apply it."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence

import torch
from torch import nn

from lowbit.errors import InvalidSpecError
from lowbit.nn import QuantLinear
from lowbit.nn.replace import set_module
from lowbit.recipes.batches import Call, run_batch
from lowbit.recipes.spec import QuantSpec
from lowbit.recipes.weights import quantize_weight

log = logging.getLogger(__name__)

ALGORITHM = "input-transform"
SAMPLE_ROWS = 4096  # calibration rows per input on which the errors are measured


def shared_inputs(
    block: nn.Module, example: Call, linears: dict[str, nn.Linear]
) -> list[list[str]]:
    """The Linear layers of ``linears`` grouped by the tensor they read on ``example`` (Q, K
    and V read one norm output): one transform per group, so one multiply per input."""
    seen: dict[str, torch.Tensor] = {}  # kept alive: no address is reused during the pass

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            seen.setdefault(name, args[0])

        return hook

    with contextlib.ExitStack() as stack:
        for name, module in linears.items():
            stack.callback(module.register_forward_pre_hook(record(name)).remove)
        with torch.no_grad():
            run_batch(block, example)
    groups: list[list[str]] = []
    for name in linears:
        owner = next((g for g in groups if name in seen and seen.get(g[0]) is seen[name]), None)
        if owner is None:
            groups.append([name])
        else:
            owner.append(name)
    return groups


def quantize_with_input_transforms(
    block: nn.Module,
    block_name: str,
    inputs: Sequence[Call],
    linears: dict[str, nn.Linear],
    specs: dict[str, QuantSpec],
) -> None:
    """Replace ``linears`` (the "input-transform" layers of ``block``) by dynamic QuantLinear
    layers with the input transform measured best for each group that shares an input."""
    from lowbit.algorithms.transforms import choose_input_transform
    from lowbit.observers.channel_stats import ChannelStatsObserver
    from lowbit.recipes.blockwise import collect_inputs, fake_quantizer

    modes = {specs[n].activation.mode for n in linears}
    if modes != {"dynamic"}:
        raise InvalidSpecError(
            f"{ALGORITHM} is for dynamic int8 layers; these layers are {sorted(modes)}: use "
            "ActivationSpec('dynamic') (the int8-dynamic-smooth preset)"
        )
    groups = shared_inputs(block, inputs[0], linears)
    first = {g[0]: linears[g[0]] for g in groups}
    stats = collect_inputs(
        block, inputs, first, lambda m: ChannelStatsObserver(sample_rows=SAMPLE_ROWS)
    )
    for group in groups:
        obs = stats[group[0]]
        obs.combine_processes()  # several processes: each saw its share of the data
        spec = specs[group[0]]
        weights = [linears[n].weight.data for n in group]
        transform, errors = choose_input_transform(
            weights, obs.sample, obs.max_abs, fake_quantizer(spec), **dict(spec.algorithm_options)
        )
        _log_choice(block_name, group, transform.name, errors)
        input_scale = None if transform.is_identity else transform.input_scale()
        floats = transform.outliers.numel() > 0
        for name in group:
            module = linears[name]
            weight = quantize_weight(transform.quantized_weight(module.weight), specs[name].weight)
            layer = QuantLinear.from_float(
                module,
                weight,
                mode="dynamic",
                per_token=spec.activation.per_token,
                token_zero_point=spec.activation.token_zero_point,
                input_scale=input_scale,
                outlier_channels=transform.outliers if floats else None,
                outlier_weight=transform.float_weight(module.weight) if floats else None,
            )
            set_module(block, name, layer)


def _log_choice(block_name: str, group: list[str], chosen: str, errors: dict[str, float]) -> None:
    blocks = re.sub(r"\.\d+(?=\.|$)", ".*", block_name)
    log.info(
        "%s %s.{%s}: %s (relative output error %.3g; none %.3g)",
        ALGORITHM, blocks, ",".join(group), chosen, errors[chosen], errors["none"],
    )  # fmt: skip
