"""The one RTN: its int8 per-channel fast path (formats.fused) is bit-identical to the affine
path it replaces, and every option that fused does not implement takes the affine path."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import rtn, rtn_quantize, rtn_tensor
from lowbit.errors import InvalidInputError
from lowbit.formats.affine import choose_qparams, quantize
from lowbit.formats.granularity import PerAxis, PerGroup
from lowbit.formats.qtypes import IntType
from lowbit.formats.weight_format import WeightFormat

INT8 = IntType(8, True)


def _reference(w, qtype, granularity, **kw):
    qp = choose_qparams(w, qtype, granularity, **kw)
    return quantize(w, qp), qp


@pytest.mark.parametrize(
    "shape", [(16, 64), (5, 3), (8, 2, 3, 3), (1, 1000)], ids=lambda s: "x".join(map(str, s))
)
def test_fast_path_is_bit_identical(shape, monkeypatch):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    w[0] = 0  # an all-zero channel gets scale 1 on both paths
    calls = []
    monkeypatch.setattr(
        rtn.fused, "quantize_int8_per_channel",
        lambda x, f=rtn.fused.quantize_int8_per_channel: calls.append(1) or f(x),
    )  # fmt: skip
    codes, qp = rtn_quantize(w, WeightFormat(INT8, PerAxis(0)))
    ref_codes, ref_qp = _reference(w, INT8, PerAxis(0))
    assert calls, "the int8 per-channel spec should take formats.fused"
    assert codes.dtype == ref_codes.dtype and torch.equal(codes, ref_codes)
    assert torch.equal(qp.scale, ref_qp.scale)
    assert (qp.qmin, qp.qmax, qp.granularity) == (ref_qp.qmin, ref_qp.qmax, ref_qp.granularity)
    t = rtn_tensor(w, WeightFormat(INT8, PerAxis(0)))
    assert torch.equal(t.codes(), ref_codes) and torch.equal(t.scale, ref_qp.scale)


@pytest.mark.parametrize(
    "options",
    [
        {"scale_dtype": torch.float16},
        {"restricted": False},
        {"rounding": "half_away"},
        {"clip": (torch.full((16,), -0.5), torch.full((16,), 0.5))},
        {"granularity": PerGroup(32)},
        {"granularity": PerAxis(1)},
        {"w": torch.randn(16, 64, dtype=torch.float64)},
    ],
    ids=lambda o: next(iter(o)),
)
def test_other_options_take_the_affine_path(options, monkeypatch):
    monkeypatch.setattr(rtn.fused, "quantize_int8_per_channel", None)  # would fail if called
    opts = dict(options)
    w = opts.pop("w", torch.randn(16, 64))
    granularity = opts.pop("granularity", PerAxis(0))
    call = {k: opts.pop(k) for k in ("clip", "rounding") if k in opts}
    rtn_quantize(w, WeightFormat(INT8, granularity, **opts), **call)


def test_non_finite_weights_are_refused_on_both_paths():
    w = torch.randn(4, 8)
    w[1, 2] = float("nan")
    for g in (PerAxis(0), PerGroup(4)):
        with pytest.raises(InvalidInputError, match=r"NaN|finite"):
            rtn_tensor(w, WeightFormat(INT8, g))
