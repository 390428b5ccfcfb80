"""SmoothQuant scales and folding: the formula, exact float equivalence (also through a real
LayerNorm and through a whole model), and lower W8A8 error on a real layer with activation
outliers (all-MiniLM-L6-v2's intermediate.dense input, whose largest channel is ~15x the
median channel's maximum)."""

from __future__ import annotations

import os

import pytest
import torch

from lowbit.algorithms.transforms.smoothquant import (
    apply_input_scales,
    fold_into_layernorm,
    fold_into_linear_output,
    input_channel_absmax,
    smoothquant_scales,
)
from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.eval.bundled import minilm_path
from lowbit.formats.affine import choose_qparams, fake_quantize
from lowbit.formats.granularity import Granularity, PerAxis, PerTensor
from lowbit.formats.qtypes import IntType
from lowbit.observers.channel_stats import ChannelStatsObserver

INT8 = IntType(8, signed=True)


def fq8(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Symmetric int8 fake quantization (dynamic: range from x itself)."""
    return fake_quantize(x, choose_qparams(x, INT8, granularity))


# ---------------------------------------------------------------- unit behaviour


def test_scales_follow_the_formula() -> None:
    a, w = torch.rand(32) * 20 + 0.1, torch.rand(32) + 0.01
    for alpha in (0.0, 0.5, 0.85, 1.0):
        want = (a**alpha / w ** (1 - alpha)).clamp(min=1e-5)
        assert torch.allclose(smoothquant_scales(a, w, alpha), want, rtol=1e-6)


def test_dead_channels_get_scale_one() -> None:
    a, w = torch.tensor([0.0, 4.0, 2.0]), torch.tensor([1.0, 0.0, 0.5])
    s = smoothquant_scales(a, w)
    assert s[0] == 1 and s[1] == 1 and torch.isclose(s[2], torch.tensor(2.0))


def test_input_channel_absmax_spans_all_weights() -> None:
    w1, w2 = torch.randn(4, 6), torch.randn(3, 6) * 5
    want = torch.maximum(w1.abs().amax(0), w2.abs().amax(0))
    assert torch.equal(input_channel_absmax([w1, w2]), want)


def test_errors_name_the_problem() -> None:
    with pytest.raises(InvalidSpecError, match="alpha"):
        smoothquant_scales(torch.ones(4), torch.ones(4), alpha=1.5)
    with pytest.raises(InvalidInputError, match="channels"):
        smoothquant_scales(torch.ones(4), torch.ones(5))
    with pytest.raises(InvalidInputError, match="positive"):
        apply_input_scales([torch.ones(2, 3)], torch.tensor([1.0, 0.0, 2.0]))
    with pytest.raises(InvalidInputError, match="input channels"):
        fold_into_layernorm(torch.ones(3), None, torch.ones(4))
    with pytest.raises(InvalidInputError, match="share one input"):
        input_channel_absmax([torch.ones(2, 3), torch.ones(2, 4)])


def test_transforms_do_not_modify_their_inputs() -> None:
    w, g, b, s = torch.randn(4, 3), torch.randn(3), torch.randn(3), torch.rand(3) + 0.5
    copies = [t.clone() for t in (w, g, b)]
    apply_input_scales([w], s)
    fold_into_layernorm(g, b, s)
    fold_into_linear_output(w.T.contiguous(), b, s)
    assert all(torch.equal(t, c) for t, c in zip((w, g, b), copies, strict=True))


# ---------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def minilm() -> dict:
    """all-MiniLM-L6-v2, its tokenized inputs (64 pydoc topics), and captured inputs of
    block 1's intermediate.dense and of its preceding LayerNorm."""
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pydoc_data.topics import topics

    folder = minilm_path()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    block = model.encoder.layer[1]
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda m, args: captured.__setitem__(name, args[0].detach())

    ln = block.attention.output.LayerNorm
    handles = [
        block.intermediate.dense.register_forward_pre_hook(keep("fc1")),
        ln.register_forward_pre_hook(keep("ln")),
    ]
    texts = [topics[k][:400] for k in sorted(topics)[:64]]
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    for h in handles:
        h.remove()
    mask = enc["attention_mask"].bool()
    return {
        "model": model,
        "enc": enc,
        "out": out,
        "block": block,
        "calib": captured["fc1"][:32][mask[:32]],
        "held_out": captured["fc1"][32:][mask[32:]],
        "ln_in": captured["ln"][mask],
    }


def test_smoothing_is_exact_in_float(minilm: dict) -> None:
    fc1 = minilm["block"].intermediate.dense
    x, w = minilm["held_out"], fc1.weight.detach()
    s = smoothquant_scales(x.abs().amax(0), input_channel_absmax([w]))
    (w_s,) = apply_input_scales([w], s)
    ref = x.double() @ w.double().T
    got = (x / s) @ w_s.T
    assert torch.allclose(got.double(), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_folding_into_layernorm_preserves_the_output(minilm: dict) -> None:
    """attention.output.LayerNorm -> intermediate.dense with real parameters and inputs.
    (In post-norm BERT the LayerNorm output is also the residual, so the fold is checked on
    this subgraph; the whole-model check below folds into a Linear instead.)"""
    block = minilm["block"]
    ln, fc1 = block.attention.output.LayerNorm, block.intermediate.dense
    h = minilm["ln_in"]
    with torch.no_grad():
        x = ln(h)
        ref = fc1(x)
        s = smoothquant_scales(x.abs().amax(0), input_channel_absmax([fc1.weight]))
        gamma, beta = fold_into_layernorm(ln.weight, ln.bias, s)
        (w_s,) = apply_input_scales([fc1.weight], s)
        x_s = torch.nn.functional.layer_norm(h, ln.normalized_shape, gamma, beta, ln.eps)
        got = torch.nn.functional.linear(x_s, w_s, fc1.bias)
    assert torch.allclose(x_s * s, x, atol=1e-5)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_folding_into_value_rows_preserves_the_model_output(minilm: dict) -> None:
    """Scale attention.output.dense's input by folding 1/s into the value projection's rows:
    attention mixes tokens but never channels, so the whole model output is unchanged."""
    block, model = minilm["block"], minilm["model"]
    v, o = block.attention.self.value, block.attention.output.dense
    saved = {n: p.detach().clone() for n, p in (("vw", v.weight), ("vb", v.bias), ("ow", o.weight))}
    s = torch.rand(o.in_features) * 4 + 0.25  # any positive scales are an equivalence
    try:
        with torch.no_grad():
            vw, vb = fold_into_linear_output(v.weight, v.bias, s)
            v.weight.copy_(vw)
            v.bias.copy_(vb)
            o.weight.copy_(apply_input_scales([o.weight], s)[0])
            out = model(**minilm["enc"]).last_hidden_state
    finally:
        with torch.no_grad():
            v.weight.copy_(saved["vw"])
            v.bias.copy_(saved["vb"])
            o.weight.copy_(saved["ow"])
    ref = minilm["out"]
    assert not torch.equal(out, ref)  # the weights really changed
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act_granularity", [PerTensor(), PerAxis(0)], ids=["tensor", "token"])
def test_smoothing_lowers_w8a8_error_on_outlier_layer(minilm: dict, act_granularity) -> None:
    w = minilm["block"].intermediate.dense.weight.detach()
    obs = ChannelStatsObserver()
    for batch in minilm["calib"].split(700):
        obs.observe(batch)
    am = obs.max_abs
    assert am.max() > 8 * am.median()  # the layer really has activation outliers
    s = smoothquant_scales(am, input_channel_absmax([w]), alpha=0.5)
    (w_s,) = apply_input_scales([w], s)
    x = minilm["held_out"]
    ref = x @ w.T
    w_chan = PerAxis(0)  # per-output-channel int8 weights
    err_plain = (fq8(x, act_granularity) @ fq8(w, w_chan).T - ref).pow(2).mean()
    err_smooth = (fq8(x / s, act_granularity) @ fq8(w_s, w_chan).T - ref).pow(2).mean()
    ratio = float(err_smooth / err_plain)
    print(f"SmoothQuant a=0.5 W8A8 ({act_granularity}) output MSE smooth/plain: {ratio:.3f}")
    assert ratio < 1
