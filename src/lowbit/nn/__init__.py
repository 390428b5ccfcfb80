"""L4 modules: quantized layers whose forward calls a kernel from lowbit.kernels.

QuantLinear, QuantConv2d and QuantAdd pick their kernel through the registry (see
``lowbit.kernels.explain``); ``Add`` is the float residual add users put in models so that
calibration can observe it; ``SplitAttention`` is torch's nn.MultiheadAttention with
quantizable projections. QAT modules live in ``lowbit.nn.qat``; ``cast_model`` casts a
whole model to fp16/bf16 in place.
"""

from __future__ import annotations

from lowbit.nn.add import Add, QuantAdd
from lowbit.nn.attention import SplitAttention
from lowbit.nn.base import KernelModule
from lowbit.nn.cast import cast_model
from lowbit.nn.conv import QuantConv2d
from lowbit.nn.embedding import QuantEmbedding
from lowbit.nn.linear import QuantLinear

__all__ = [
    "Add",
    "KernelModule",
    "QuantAdd",
    "QuantConv2d",
    "QuantEmbedding",
    "QuantLinear",
    "SplitAttention",
    "cast_model",
]
