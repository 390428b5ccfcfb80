"""Float8Tensor and FloatCastTensor: exact agreement with formats.floats, round trips."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import rtn_tensor
from lowbit.formats.floats import choose_float_scale, dequantize_float, quantize_float
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.qtypes import BF16, FP8_E4M3, FP8_E5M2, FP16, FP32
from lowbit.formats.weight_format import WeightFormat
from lowbit.tensors import Float8Tensor, FloatCastTensor

W = torch.randn(6, 20, generator=torch.Generator().manual_seed(1)) * 3


@pytest.mark.parametrize("qtype", [FP8_E4M3, FP8_E5M2], ids=lambda t: t.name)
@pytest.mark.parametrize("granularity", [PerTensor(), PerAxis(0), PerGroup(8)], ids=repr)
def test_float8_matches_formats_and_round_trips(qtype, granularity, roundtrip):
    qt = rtn_tensor(W, WeightFormat(qtype, granularity))
    scale = choose_float_scale(W, qtype, granularity)
    expected = dequantize_float(quantize_float(W, qtype, scale, granularity), scale, granularity)
    assert qt.data.dtype == qtype.dtype
    assert torch.equal(qt.dequantize(), expected)
    assert qt.nbytes == W.numel() + scale.numel() * 4
    roundtrip(qt)


def test_float8_fp16_scales(roundtrip):
    qt = rtn_tensor(W, WeightFormat(FP8_E4M3, PerAxis(0), scale_dtype=torch.float16))
    assert qt.nbytes == W.numel() + W.shape[0] * 2
    assert torch.allclose(qt.dequantize(), W, rtol=0.07, atol=1e-3)
    roundtrip(qt)


@pytest.mark.parametrize("qtype", [FP32, FP16, BF16], ids=lambda t: t.name)
def test_float_cast(qtype, roundtrip):
    qt = rtn_tensor(W, WeightFormat(qtype))
    assert torch.equal(qt.dequantize(), W.to(qtype.dtype).float())
    assert qt.bits_per_weight == qtype.bits
    roundtrip(qt)


def test_the_format_family_picks_the_container():
    assert isinstance(rtn_tensor(W, WeightFormat(FP16)), FloatCastTensor)
    assert isinstance(rtn_tensor(W, WeightFormat(FP8_E4M3, PerTensor())), Float8Tensor)
