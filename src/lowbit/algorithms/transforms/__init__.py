"""Equivalence transforms: per-input-channel scales (and clip values) that make weights or
activations easier to quantize while leaving the float model's outputs unchanged.

``smoothquant``: SmoothQuant's activation-to-weight migration for W8A8. ``awq``:
activation-aware weight scales and clip search for weight-only quantization.
``input_transform``: a shrinking SmoothQuant multiply or float outlier channels for
per-batch int8 activations whose input nothing can absorb a scale, chosen by measured error.
None of them rounds anything (but in a measurement); the caller quantizes the weights.
"""

from lowbit.algorithms.transforms.awq import (
    awq_clip_range,
    awq_scales_for_ratio,
    awq_search_clip,
    awq_search_scales,
)
from lowbit.algorithms.transforms.input_transform import InputTransform, choose_input_transform
from lowbit.algorithms.transforms.smoothquant import (
    apply_input_scales,
    check_input_scales,
    fold_into_layernorm,
    fold_into_linear_output,
    input_channel_absmax,
    smoothquant_scales,
)

__all__ = [
    "InputTransform",
    "apply_input_scales",
    "awq_clip_range",
    "awq_scales_for_ratio",
    "awq_search_clip",
    "awq_search_scales",
    "check_input_scales",
    "choose_input_transform",
    "fold_into_layernorm",
    "fold_into_linear_output",
    "input_channel_absmax",
    "smoothquant_scales",
]
