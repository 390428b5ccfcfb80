"""GPTQ: equals round-to-nearest when H has no off-diagonal terms, beats it on a real model's
layers and activations, stores exactly through formats/tensors, and rejects bad input."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lowbit.algorithms import gptq_quantize, rtn_quantize
from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.eval.bundled import minilm_path
from lowbit.formats.affine import dequantize
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.qtypes import NF4, IntType
from lowbit.formats.weight_format import WeightFormat
from lowbit.observers import HessianObserver
from lowbit.tensors.integer import IntPackedTensor

INT3, INT4, UINT4 = IntType(3, True), IntType(4, True), IntType(4, False)
LAYERS = (
    "encoder.layer.0.attention.self.query",
    "encoder.layer.0.intermediate.dense",
    "encoder.layer.0.output.dense",
)
MODES = {
    "plain": {},
    "act_order+static": {"act_order": True, "static_groups": True},
    "asym_zero_point": {"symmetric": False, "form": "zero_point", "qtype": UINT4},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """GPTQ's column loop is thousands of tiny ops; on a busy few-core machine OpenMP worker
    threads contend and the loop runs ~20x slower than on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _correlated(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs with correlated, unequal channels (as real activations) and their hessian."""
    x = torch.randn(4 * k, k) @ torch.randn(k, k) * 0.3 + torch.randn(4 * k, k)
    x = x * torch.linspace(0.2, 3.0, k)
    obs = HessianObserver(dtype=torch.float64)
    obs.observe(x)
    return x, obs.hessian()


_FORMAT_OPTIONS = ("qtype", "symmetric", "form")


def _fmt(qtype: IntType = INT4, group_size: int | None = None, **options) -> WeightFormat:
    """The WeightFormat GPTQ and RTN are compared in: per channel (None) or per group."""
    granularity = PerAxis(0) if group_size is None else PerGroup(group_size)
    return WeightFormat(qtype, granularity, **options)


def _split(group_size: int | None, opts: dict) -> tuple[WeightFormat, dict]:
    """(the format, GPTQ's own options) of a test's option dict."""
    fmt = _fmt(group_size=group_size, **{k: v for k, v in opts.items() if k in _FORMAT_OPTIONS})
    return fmt, {k: v for k, v in opts.items() if k not in _FORMAT_OPTIONS}


def _out_err(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    return float(((x @ (w - wq).T).double() ** 2).sum())


# ---------------------------------------------------------------------------------- oracles


@pytest.mark.parametrize(
    ("group_size", "extra"),
    [
        (None, {}),
        (32, {}),
        (24, {"block_size": 16}),  # groups straddle blocks; K = 100 leaves a ragged group
        (32, {"act_order": True, "static_groups": True}),
        (32, {"symmetric": False, "qtype": UINT4}),
        (32, {"symmetric": False, "form": "zero_point", "qtype": UINT4}),
        (None, {"act_order": True}),
    ],
)
def test_diagonal_hessian_gives_round_to_nearest(group_size: int | None, extra: dict) -> None:
    """With no off-diagonal terms no error is fed forward, so GPTQ must be exactly RTN, for
    every mode; a diagonal with distinct values makes act_order's permutation non-trivial."""
    w = torch.randn(12, 100)
    hessian = torch.diag(torch.rand(100) + 0.5)
    opts = {"qtype": INT4, **extra}
    fmt, gptq_opts = _split(group_size, opts)
    codes, qp = gptq_quantize(w, hessian, fmt, **gptq_opts)
    ref_codes, ref_qp = rtn_quantize(w, fmt)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(qp.scale, ref_qp.scale) and qp.granularity == ref_qp.granularity
    for name in ("zero_point", "offset"):
        mine, ref = getattr(qp, name), getattr(ref_qp, name)
        assert (mine is None and ref is None) or torch.equal(mine, ref)


@pytest.mark.parametrize("group_size", [None, 32, 30])
def test_codes_and_qparams_store_exactly(group_size: int | None) -> None:
    """The layout is PerGroup/PerAxis(0) of formats; K = 100 is ragged for both group sizes;
    IntPackedTensor round-trips the codes and dequantizes to the same weight."""
    w = torch.randn(16, 100)
    _, hessian = _correlated(16, 100)
    codes, qp = gptq_quantize(w, hessian, _fmt(INT3, group_size))
    assert codes.shape == w.shape and codes.dtype == torch.int8
    assert int(codes.min()) >= qp.qmin and int(codes.max()) <= qp.qmax
    if group_size is None:
        assert qp.granularity == PerAxis(0) and qp.scale.shape == (16,)
    else:
        assert qp.granularity == PerGroup(group_size)
        assert qp.scale.shape == (16, -(-100 // group_size))
    packed = IntPackedTensor.from_codes(codes, qp)
    assert torch.equal(packed.codes(), codes)
    assert torch.equal(packed.dequantize(), dequantize(codes, qp))


def test_block_size_only_changes_speed() -> None:
    w = torch.randn(24, 96)
    _, hessian = _correlated(24, 96)
    ref = gptq_quantize(w, hessian, _fmt(INT4, 32), block_size=128)
    for block_size in (1, 20, 32):
        codes, qp = gptq_quantize(w, hessian, _fmt(INT4, 32), block_size=block_size)
        # Float summation order may flip a code sitting on a rounding boundary; allow 0.5%.
        assert (codes != ref[0]).float().mean() < 0.005, block_size
        torch.testing.assert_close(qp.scale, ref[1].scale, rtol=1e-4, atol=1e-6)


def test_deterministic_and_inputs_untouched() -> None:
    w = torch.randn(20, 64)
    _, hessian = _correlated(20, 64)
    hessian[5, :] = hessian[:, 5] = 0.0  # a dead input
    w0, h0 = w.clone(), hessian.clone()
    opts = {"act_order": True, "static_groups": True}
    first = gptq_quantize(w, hessian, _fmt(INT4, 16), **opts)
    second = gptq_quantize(w, hessian, _fmt(INT4, 16), **opts)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1].scale, second[1].scale)
    assert torch.equal(w, w0) and torch.equal(hessian, h0)
    assert torch.all(dequantize(*first)[:, 5] == 0)  # dead input: its weights become 0


def test_beats_rtn_on_synthetic_correlated_inputs_in_float32_and_float64() -> None:
    w = torch.randn(32, 128)
    x, hessian = _correlated(32, 128)
    rtn = _out_err(x, w, dequantize(*rtn_quantize(w, WeightFormat(INT3, PerGroup(32)))))
    for h in (hessian, hessian.float()):
        err = _out_err(x, w, dequantize(*gptq_quantize(w, h, _fmt(INT3, 32))))
        assert err < 0.9 * rtn, f"GPTQ/RTN output error {err / rtn:.3f}"


# ----------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors() -> None:
    w, h = torch.randn(4, 8), torch.eye(8)
    with pytest.raises(InvalidInputError, match=r"\(8, 8\)"):
        gptq_quantize(w, torch.eye(7), _fmt(INT4, None))
    with pytest.raises(InvalidInputError, match="2-D"):
        gptq_quantize(torch.randn(8), h, _fmt(INT4, None))
    with pytest.raises(InvalidInputError, match="NaN"):
        gptq_quantize(w, h * float("nan"), _fmt(INT4, None))
    with pytest.raises(InvalidInputError, match="negative diagonal"):
        gptq_quantize(w, -h, _fmt(INT4, None))
    with pytest.raises(InvalidSpecError, match="static_groups=True"):
        gptq_quantize(w, h, _fmt(INT4, 4), act_order=True)
    with pytest.raises(InvalidSpecError, match="group size"):
        gptq_quantize(w, h, _fmt(INT4, 0))
    with pytest.raises(InvalidSpecError, match="per group along the input"):
        gptq_quantize(w, h, WeightFormat(INT4, PerTensor()))
    with pytest.raises(InvalidSpecError, match="integer formats"):
        gptq_quantize(w, h, WeightFormat(NF4, PerGroup(4)))
    with pytest.raises(InvalidSpecError, match="damp"):
        gptq_quantize(w, h, _fmt(INT4, None), damp=-0.1)
    with pytest.raises(InvalidSpecError, match="block_size"):
        gptq_quantize(w, h, _fmt(INT4, None), block_size=0)
    with pytest.raises(InvalidSpecError, match="signed"):
        gptq_quantize(w, h, _fmt(UINT4, None))


def test_not_positive_definite_retries_damping_then_fails() -> None:
    w = torch.randn(3, 2)
    # Eigenvalues 2.001 and -0.001: damp 1e-4 is too small, the retry (1e-2) suffices.
    almost = torch.tensor([[1.0, 1.001], [1.001, 1.0]], dtype=torch.float64)
    codes, _ = gptq_quantize(w, almost, _fmt(INT4, None), damp=1e-4)
    assert codes.shape == (3, 2)
    # Eigenvalues 6 and -4: even damp = 1 (λ = 1) leaves it indefinite.
    with pytest.raises(InvalidInputError, match="not positive definite"):
        gptq_quantize(w, torch.tensor([[1.0, 5.0], [5.0, 1.0]]), _fmt(INT4, None))


# ------------------------------------------------------------------- real weights and inputs


def _sentences(count: int) -> list[str]:
    from pydoc_data.topics import topics

    found = []
    for key in sorted(topics):
        sentences = re.split(r"(?<=\.)\s+", " ".join(topics[key].split()))
        found += [s for s in sentences if 40 <= len(s) <= 300 and s[0].isupper()][:2]
    if len(found) < count:
        pytest.fail(f"pydoc_data.topics gave only {len(found)} sentences")
    return found[:count]


@pytest.fixture(scope="module")
def minilm() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For each layer in LAYERS: (weight, hessian from 64 calibration sentences, calibration
    inputs, held-out inputs from 32 other sentences), padding tokens dropped."""
    import transformers

    folder = minilm_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    del model.encoder.layer[1:]  # every layer in LAYERS is in block 0: skip computing the rest
    modules = dict(model.named_modules())
    texts = _sentences(96)

    def capture(batch: list[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=64, return_tensors="pt")
        seen: dict[str, torch.Tensor] = {}
        handles = [
            modules[name].register_forward_pre_hook(
                lambda _m, args, name=name: seen.__setitem__(name, args[0].detach())
            )
            for name in LAYERS
        ]
        try:
            with torch.no_grad():
                model(**enc)
        finally:
            for handle in handles:
                handle.remove()
        keep = enc["attention_mask"].bool()
        return {name: x[keep] for name, x in seen.items()}

    calib, held = capture(texts[:64]), capture(texts[64:])
    out = {}
    for name in LAYERS:
        obs = HessianObserver(dtype=torch.float64)
        for chunk in calib[name].split(256):
            obs.observe(chunk)
        out[name] = (modules[name].weight.detach().clone(), obs.hessian(), calib[name], held[name])
    return out


@pytest.mark.parametrize(
    ("bits", "mode"),
    [
        (4, "plain"),
        (3, "plain"),
        (4, "act_order+static"),
        (3, "act_order+static"),
        (4, "asym_zero_point"),
    ],
)
def test_beats_rtn_on_minilm_layers(minilm: dict, bits: int, mode: str) -> None:
    """Layer-output error ‖XWᵀ − XŴᵀ‖² on held-out sentences: GPTQ below RTN at g128."""
    opts = {"qtype": IntType(bits, True), **MODES[mode]}
    if "qtype" in MODES[mode]:
        opts["qtype"] = IntType(bits, False)
    fmt, gptq_opts = _split(128, opts)
    ratios = {}
    for name, (w, hessian, _, held) in minilm.items():
        gptq = dequantize(*gptq_quantize(w, hessian, fmt, **gptq_opts))
        rtn = dequantize(*rtn_quantize(w, fmt))
        ratios[name.split("layer.0.")[1]] = _out_err(held, w, gptq) / _out_err(held, w, rtn)
    summary = ", ".join(f"{n}: {r:.3f}" for n, r in ratios.items())
    print(f"int{bits} g128 {mode}: GPTQ/RTN held-out output error {summary}")
    assert all(r < 1.0 for r in ratios.values()), f"GPTQ/RTN error ratio {summary}"


_THREADS_SCRIPT = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from lowbit.algorithms import gptq_quantize
from lowbit.formats.granularity import PerGroup
from lowbit.formats.qtypes import IntType
from lowbit.formats.weight_format import WeightFormat
from lowbit.observers import HessianObserver
g = torch.Generator().manual_seed(0)
for n, k, rows in ((64, 64, 65536), (256, 256, 4096), (96, 576, 32768)):
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    x = torch.randn(rows, k, generator=g) @ mix
    obs = HessianObserver(k)
    obs.observe(x)
    w = torch.randn(n, k, generator=g)
    fmt = WeightFormat(IntType(4, True), PerGroup(32))
    codes, qp = gptq_quantize(w, obs.hessian(), fmt)
    torch.save({"h": obs.hessian(), "codes": codes, "scale": qp.scale}, f"{sys.argv[2]}.{k}.pt")
"""


def test_same_codes_with_one_and_two_threads(tmp_path: Path) -> None:
    """The Hessian sum and the Cholesky factorisation do not depend on torch's thread count
    (issue 11: --threads 1 and --threads 2 gave different GPTQ codes)."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(_THREADS_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    for threads in (1, 2):
        subprocess.run(
            [sys.executable, str(script), str(threads), str(tmp_path / f"t{threads}")],
            check=True,
            env=env,
        )
    for k in (64, 256, 576):
        one, two = (torch.load(tmp_path / f"t{t}.{k}.pt") for t in (1, 2))
        assert torch.equal(one["h"], two["h"]), k
        assert torch.equal(one["codes"], two["codes"]), k
        assert torch.equal(one["scale"], two["scale"]), k
