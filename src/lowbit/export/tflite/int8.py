"""The numbers of TFLite's int8 scheme (https://ai.google.dev/edge/litert/models/
quantization_spec) from lowbit's: activation parameters, weight codes, int32 biases, SAME
padding."""

from __future__ import annotations

import numpy as np
import torch

from lowbit.errors import InvalidInputError
from lowbit.formats.affine import QParams
from lowbit.formats.granularity import PerAxis, PerTensor
from lowbit.formats.qtypes import IntType
from lowbit.kernels import check_activation_qparams
from lowbit.tensors import IntPackedTensor

INT8 = IntType(8, True)


def activation_qparams(qparams: QParams | None, what: str) -> tuple[float, int]:
    """lowbit's uint8 activation QParams as TFLite int8 (scale, zero point - 128)."""
    if qparams is None:
        raise InvalidInputError(
            f"{what} has no activation qparams (it was not calibrated); quantize the model "
            "with preset 'int8-static' and calibration data"
        )
    scale, zero_point = check_activation_qparams(qparams, what)
    return scale, zero_point - 128


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding of TFLite's SAME (tensorflow/lite/kernels/padding.h)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def weight_codes(name: str, weight: object, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 per-output-channel scales) of an int8 symmetric weight."""
    ok = (
        isinstance(weight, IntPackedTensor)
        and weight.qtype == INT8
        and weight.form == "symmetric"
        and weight.qmin >= -127
        and len(weight.shape) == ndim
        and (
            isinstance(weight.granularity, PerTensor)
            or (isinstance(weight.granularity, PerAxis) and weight.granularity.axis % ndim == 0)
        )
    )
    if not ok:
        raise InvalidInputError(
            f"layer {name!r}: TFLite int8 needs int8 symmetric weights in [-127, 127], per "
            f"output channel or per tensor; got {getattr(weight, 'kind', weight)!r} "
            f"({weight!r}); quantize with preset 'int8-static'"
        )
    assert isinstance(weight, IntPackedTensor)
    codes = weight.codes().to(torch.int8).numpy()
    scales = weight.scale.float().reshape(-1).expand(weight.shape[0]).numpy()
    return codes, np.ascontiguousarray(scales, dtype=np.float32)


def int32_bias(
    name: str, bias: torch.Tensor | None, input_scale: float, weight_scales: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(int32 bias, its float32 scales): round(b / (s_in * s_w)), ties to even."""
    scales = (np.float32(input_scale) * weight_scales).astype(np.float32)
    if bias is None:
        return np.zeros(len(scales), dtype=np.int32), scales
    q = np.rint(bias.double().numpy() / scales.astype(np.float64))
    if np.abs(q).max(initial=0) >= 2**31:
        raise InvalidInputError(
            f"layer {name!r}: its bias does not fit int32 at scale input_scale * weight_scale; "
            "recalibrate (a larger input scale) or leave the layer out"
        )
    return q.astype(np.int32), scales
