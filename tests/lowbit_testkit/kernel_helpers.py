"""Shared helpers of the kernel and nn tests: weights, activation qparams, kernel pairs
(SQNR is ``lowbit.formats.sqnr_db``)."""

from __future__ import annotations

import torch

from lowbit.algorithms import rtn_tensor
from lowbit.formats.granularity import PerAxis
from lowbit.formats.qtypes import IntType
from lowbit.formats.weight_format import WeightFormat
from lowbit.kernels import REFERENCE_NAME, activation_qparams
from lowbit.tensors import IntPackedTensor

INT8 = IntType(8, True)


def int8_weight(*shape: int) -> IntPackedTensor:
    """Symmetric per-output-channel int8 weight of a random Gaussian tensor."""
    return rtn_tensor(torch.randn(*shape) * 0.2, WeightFormat(INT8, PerAxis(0)))


def minmax_qparams(t: torch.Tensor):
    """uint8 zero-point QParams covering t's range (and 0), as a calibration would give."""
    t = t.detach()
    lo, hi = min(float(t.min()), 0.0), max(float(t.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    return activation_qparams(scale, round(-lo / scale))


def run_pair(registry, op, weight, bias, spec, kernel, *inputs):
    """(fast output, reference output) of the named kernel and the reference on inputs."""
    fast = registry.get(op, kernel)
    ref = registry.get(op, REFERENCE_NAME)
    assert fast.applies(weight, spec) is None, fast.applies(weight, spec)
    y = fast.run(fast.prepare(weight, bias, spec), *inputs)
    yr = ref.run(ref.prepare(weight, bias, spec), *inputs)
    return y, yr
