"""fp16/bf16 casts and scaled fp8 agree with torch's own casts."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.floats import choose_float_scale, dequantize_float, quantize_float
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor, broadcast_to
from lowbit.formats.qtypes import BF16, FP8_E4M3, FP8_E5M2, FP16


@pytest.mark.parametrize("qtype", [FP16, BF16])
def test_plain_casts_equal_torch(qtype) -> None:
    x = torch.randn(64, 33) * 10
    q = quantize_float(x, qtype)
    assert torch.equal(q, x.to(qtype.dtype))
    assert torch.equal(dequantize_float(q), x.to(qtype.dtype).float())
    assert float(choose_float_scale(x, qtype)) == 1.0
    with pytest.raises(InvalidSpecError, match="plain cast"):
        quantize_float(x, qtype, torch.ones(()))


@pytest.mark.parametrize("qtype", [FP8_E4M3, FP8_E5M2])
@pytest.mark.parametrize("granularity", [PerTensor(), PerAxis(0), PerGroup(16)])
def test_fp8_equals_torch_cast_of_the_scaled_tensor(qtype, granularity) -> None:
    x = torch.randn(8, 40) * 3
    scale = choose_float_scale(x, qtype, granularity)
    s = broadcast_to(scale, tuple(x.shape), granularity)
    q = quantize_float(x, qtype, scale, granularity)
    assert q.dtype == qtype.dtype
    assert torch.equal(q, (x / s).to(qtype.dtype))
    # the block maximum maps onto the format's largest finite value
    assert float((x / s).abs().max()) == pytest.approx(qtype.max, rel=1e-6)
    xq = dequantize_float(q, scale, granularity)
    assert torch.equal(xq, (x / s).to(qtype.dtype).float() * s)
    rel = (xq - x).norm() / x.norm()
    assert rel < (0.05 if qtype == FP8_E4M3 else 0.1)


def test_fp8_saturates_instead_of_producing_nan() -> None:
    x = torch.tensor([1.0, 2.0, 1000.0])
    q = quantize_float(x, FP8_E4M3, torch.tensor(1.0))
    assert float(q.float()[-1]) == FP8_E4M3.max


def test_fp8_all_zero_block_has_finite_scale() -> None:
    scale = choose_float_scale(torch.zeros(2, 8), FP8_E4M3, PerAxis(0))
    assert torch.equal(scale, torch.ones(2))


def test_fp_rejects_nan() -> None:
    with pytest.raises(InvalidInputError):
        quantize_float(torch.tensor([float("nan")]), FP16)
