"""AWQ scale and clip search: unit behaviour, and lower output error than round-to-nearest
on real weights and activations of all-MiniLM-L6-v2 (held-out tokens)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from lowbit.algorithms.transforms.awq import (
    awq_clip_range,
    awq_scales_for_ratio,
    awq_search_clip,
    awq_search_scales,
)
from lowbit.algorithms.transforms.smoothquant import apply_input_scales
from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.eval.bundled import minilm_path
from lowbit.formats.affine import choose_qparams, fake_quantize
from lowbit.formats.granularity import PerGroup
from lowbit.formats.qtypes import IntType
from lowbit.observers.channel_stats import ChannelStatsObserver

GROUP = 128


def rtn(bits: int, symmetric: bool) -> Callable:
    """Fake quantizer (w, clip=None) -> w' for b-bit PerGroup(128) through formats.affine."""
    qtype = IntType(bits, signed=symmetric)

    def q(w: torch.Tensor, clip: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        qp = choose_qparams(w, qtype, PerGroup(GROUP), symmetric=symmetric, clip=clip)
        return fake_quantize(w, qp)

    return q


# ---------------------------------------------------------------- unit behaviour


def test_ratio_zero_is_identity_and_scales_are_normalised() -> None:
    a = torch.rand(64) * 10 + 0.01
    assert torch.equal(awq_scales_for_ratio(a, 0.0), torch.ones(64))
    s = awq_scales_for_ratio(a, 0.5)
    assert torch.allclose(s.max() * s.min(), torch.tensor(1.0), rtol=1e-5)
    # Larger activations get larger scales.
    assert torch.equal(torch.argsort(s), torch.argsort(a))


def test_single_grid_point_is_rtn() -> None:
    w, x = torch.randn(16, 256), torch.randn(32, 256)
    s = awq_search_scales([w], x, x.abs().mean(0), rtn(4, False), n_grid=1)
    assert torch.equal(s, torch.ones(256))


def test_scale_search_never_loses_to_rtn_on_its_sample() -> None:
    # An outlier input channel: the case AWQ is for.
    w, x = torch.randn(32, 256), torch.randn(128, 256)
    x[:, 7] *= 30
    q = rtn(3, False)
    s = awq_search_scales([w], x, x.abs().mean(0), q)
    assert s[7] == s.max() and not torch.equal(s, torch.ones(256))
    ref = x @ w.T
    err_rtn = (x @ q(w).T - ref).pow(2).sum()
    err_awq = ((x / s) @ q(apply_input_scales([w], s)[0]).T - ref).pow(2).sum()
    assert err_awq < err_rtn


def test_clip_without_shrink_is_absmax_and_range_matches_formats() -> None:
    w, x = torch.randn(8, 300), torch.randn(64, 300)  # ragged last group (300 = 2·128 + 44)
    q = rtn(4, True)
    max_val = awq_search_clip(w, x, GROUP, q, max_shrink=0.0)
    absmax = torch.stack([c.abs().amax(dim=1) for c in w.split(GROUP, dim=1)], dim=1)
    assert max_val.shape == (8, 3) and torch.equal(max_val, absmax)
    lo, hi = awq_clip_range(w, max_val * 0.5, GROUP)
    # Symmetric: the bound is max_val itself; as clip=max_val gives the same quantization.
    assert torch.allclose(torch.maximum(lo.abs(), hi.abs()), max_val * 0.5)
    assert torch.equal(q(w, (lo, hi)), q(w, max_val * 0.5))


def test_clip_search_never_loses_to_rtn_per_group() -> None:
    w, x = torch.randn(64, 256), torch.randn(200, 256)
    w[3, 5] = 12.0  # an outlier weight: clipping its group should pay off
    q = rtn(3, False)
    max_val = awq_search_clip(w, x, GROUP, q)
    assert bool((max_val <= torch.stack([c.abs().amax(1) for c in w.split(GROUP, 1)], 1)).all())
    clipped = q(w, awq_clip_range(w, max_val, GROUP))
    err = lambda wq: (x @ (wq - w).T).pow(2).sum()  # noqa: E731
    assert err(clipped) <= err(q(w))


def test_errors_name_the_problem() -> None:
    w, x = torch.randn(8, 128), torch.randn(16, 128)
    q = rtn(4, True)
    with pytest.raises(InvalidInputError, match="x_sample must be"):
        awq_search_scales([w], x[:, :64], x.abs().mean(0), q)
    with pytest.raises(InvalidInputError, match="act_mean_abs"):
        awq_search_scales([w], x, x.abs().mean(0)[:5], q)
    with pytest.raises(InvalidInputError, match="share one input"):
        awq_search_scales([w, torch.randn(8, 64)], x, x.abs().mean(0), q)
    with pytest.raises(InvalidSpecError, match="returned shape"):
        awq_search_scales([w], x, x.abs().mean(0), lambda t: t[:1])
    with pytest.raises(InvalidSpecError, match="max_shrink"):
        awq_search_clip(w, x, GROUP, q, max_shrink=1.0)
    with pytest.raises(InvalidSpecError, match="n_grid"):
        awq_search_clip(w, x, GROUP, q, n_grid=0)
    with pytest.raises(InvalidInputError, match="max_val must have shape"):
        awq_clip_range(w, torch.ones(8, 2), GROUP)


# ---------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def minilm() -> dict[str, object]:
    """Layer inputs and weights of all-MiniLM-L6-v2 block 1 on 64 pydoc topics: statistics
    and a 256-row sample from the first 32 texts, held-out rows from the other 32."""
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pydoc_data.topics import topics

    folder = minilm_path()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    block = model.encoder.layer[1]
    layers = {
        "qkv": [block.attention.self.query, block.attention.self.key, block.attention.self.value],
        "fc1": [block.intermediate.dense],
        "fc2": [block.output.dense],
    }
    captured: dict[str, torch.Tensor] = {}
    handles = [
        mods[0].register_forward_pre_hook(
            lambda m, args, name=name: captured.__setitem__(name, args[0].detach())
        )
        for name, mods in layers.items()
    ]
    texts = [topics[k][:400] for k in sorted(topics)[:64]]
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        model(**enc)
    for h in handles:
        h.remove()
    mask = enc["attention_mask"].bool()
    out: dict[str, object] = {}
    for name, mods in layers.items():
        x = captured[name]
        calib, held_out = x[:32][mask[:32]], x[32:][mask[32:]]
        obs = ChannelStatsObserver(sample_rows=256)
        for batch in calib.split(500):
            obs.observe(batch)
        out[name] = {
            "weights": [m.weight.detach() for m in mods],
            "sample": obs.sample,
            "mean_abs": obs.mean_abs,
            "held_out": held_out,
        }
    return out


@pytest.mark.parametrize(
    ("layer", "bits", "symmetric"),
    [
        *((layer, bits, False) for bits in (4, 3) for layer in ("qkv", "fc1", "fc2")),
        ("fc1", 4, True),
    ],
)
def test_awq_beats_rtn_on_held_out_activations(
    minilm: dict, layer: str, bits: int, symmetric: bool
) -> None:
    data = minilm[layer]
    weights, x_eval = data["weights"], data["held_out"]
    q = rtn(bits, symmetric)
    # A coarser grid than the default 20 keeps the test fast (the unit tests use defaults).
    s = awq_search_scales(weights, data["sample"], data["mean_abs"], q, n_grid=10)
    scaled = apply_input_scales(weights, s)
    x_s = data["sample"] / s
    max_vals = [awq_search_clip(w, x_s, GROUP, q, n_grid=10) for w in scaled]
    clipped = [q(w, awq_clip_range(w, m, GROUP)) for w, m in zip(scaled, max_vals, strict=True)]

    refs = [x_eval @ w.T for w in weights]

    def error(outputs: list[torch.Tensor]) -> float:
        return sum(float((o - r).pow(2).sum()) for o, r in zip(outputs, refs, strict=True))

    err_rtn = error([x_eval @ q(w).T for w in weights])
    err_scale = error([(x_eval / s) @ q(w).T for w in scaled])
    err_awq = error([(x_eval / s) @ w.T for w in clipped])
    tag = f"{'sym' if symmetric else 'asym'} int{bits} g{GROUP} {layer}"
    scale_ratio, awq_ratio = err_scale / err_rtn, err_awq / err_rtn
    print(f"AWQ/RTN output MSE {tag}: scales {scale_ratio:.3f}, +clip {awq_ratio:.3f}")
    assert err_awq < err_rtn
