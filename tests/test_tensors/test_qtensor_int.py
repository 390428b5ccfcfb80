"""IntPackedTensor, built by the one RTN (algorithms.rtn_tensor): exact agreement with
formats.affine, packing, byte counts, round trips."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import rtn_tensor
from lowbit.errors import InvalidInputError
from lowbit.formats.affine import choose_qparams, fake_quantize, quantize
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.qtypes import IntType
from lowbit.formats.weight_format import WeightFormat
from lowbit.tensors import IntPackedTensor

GRANULARITIES = [PerTensor(), PerAxis(0), PerGroup(4), PerGroup(5), PerGroup(5, axis=0)]
# (symmetric, form, signed): every affine form; 1-bit only asymmetric (restricted needs 2).
FORMS = [(True, "offset", True), (False, "offset", False), (False, "zero_point", True)]
CASES = [(b, *form) for b in range(1, 9) for form in FORMS if b > 1 or not form[0]]


def _weight(shape=(6, 13), seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("granularity", GRANULARITIES, ids=repr)
@pytest.mark.parametrize(("bits", "symmetric", "form", "signed"), CASES)
def test_matches_formats_and_round_trips(bits, granularity, symmetric, form, signed, roundtrip):
    w = _weight()  # 13 columns: groups of 4 and 5 are ragged
    qtype = IntType(bits, signed)
    kw = {"symmetric": symmetric, "form": form}
    qt = rtn_tensor(w, WeightFormat(qtype, granularity, **kw))
    qp = choose_qparams(w, qtype, granularity, **kw)
    assert torch.equal(qt.codes(), quantize(w, qp))
    assert torch.equal(qt.dequantize(), fake_quantize(w, qp))
    assert qt.form == ("symmetric" if symmetric else form)
    assert qt.packed.numel() == -(-w.numel() * bits // 8)  # dense: ceil(n·b / 8) bytes
    roundtrip(qt)


def test_nbytes_int4_g128_by_hand():
    w = _weight((256, 256))
    qt = rtn_tensor(w, WeightFormat(IntType(4, True), PerGroup(128)))
    assert qt.nbytes == 256 * 256 // 2 + 256 * 2 * 4  # packed nibbles + fp32 scales
    assert qt.bits_per_weight == 8 * qt.nbytes / w.numel()
    half = rtn_tensor(w, WeightFormat(IntType(4, True), PerGroup(128), scale_dtype=torch.float16))
    assert half.scale.dtype == torch.float16
    assert half.bits_per_weight == 4.125
    zp = rtn_tensor(
        w, WeightFormat(IntType(4, False), PerGroup(128), symmetric=False, form="zero_point")
    )
    assert zp.nbytes == 32768 + 256 * 2 * 4 + 256 * 2 * 1  # uint8 zero points


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_low_precision_scales_are_what_the_codes_use(scale_dtype, roundtrip):
    w = _weight((8, 64))
    qt = rtn_tensor(
        w, WeightFormat(IntType(3, False), PerGroup(16), symmetric=False, scale_dtype=scale_dtype)
    )
    assert qt.scale.dtype == qt.offset.dtype == scale_dtype
    qp = qt.qparams  # the stored (rounded) scale, widened: recomputing codes must agree
    assert torch.equal(qt.codes(), quantize(w, qp))
    assert (qt.dequantize() - w).abs().max() <= qp.scale.max() * 0.51
    roundtrip(qt)


def test_from_codes_wraps_external_codes(roundtrip):
    w = _weight((4, 32))
    qp = choose_qparams(w, IntType(4, True), PerGroup(8))
    codes = quantize(w, qp).to(torch.int64)  # e.g. what an algorithm hands over
    qt = IntPackedTensor.from_codes(codes, qp)
    assert torch.equal(qt.codes(), codes.to(torch.int8))
    assert torch.equal(qt.dequantize(), fake_quantize(w, qp))
    roundtrip(qt)
    with pytest.raises(InvalidInputError, match="lie in"):
        IntPackedTensor.from_codes(codes.clamp(max=7) + 1, qp)  # 8 is outside ±7
    with pytest.raises(InvalidInputError, match="integer dtype"):
        IntPackedTensor.from_codes(codes.float(), qp)
    with pytest.raises(InvalidInputError, match="shape"):
        IntPackedTensor.from_codes(codes[:, :16], qp)


def test_dequantize_dtype_and_tiny_scales():
    w = _weight((4, 16))
    qt = rtn_tensor(w, WeightFormat(IntType(8, True), PerAxis(0)))
    assert qt.dequantize(torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(InvalidInputError, match="float32"):
        rtn_tensor(w * 1e-9, WeightFormat(IntType(8, True), PerTensor(), scale_dtype=torch.float16))
