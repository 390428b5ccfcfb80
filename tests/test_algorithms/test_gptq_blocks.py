"""GPTQ inside ggml's block grids (lowbit.algorithms.gptq_blocks)."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.gptq_blocks import gptq_blocks
from lowbit.errors import InvalidInputError, InvalidSpecError, UnsupportedFormatError
from lowbit.formats.blocks import get_block_codec

K, N, M = 512, 48, 1024


@pytest.fixture(scope="module")
def layer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer whose inputs are correlated and of uneven energy, as in a transformer."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(K, K, generator=g) / K**0.5 + torch.eye(K)
    x = (torch.randn(M, K, generator=g) @ mix) * (torch.rand(K, generator=g) * 3 + 0.1)
    w = torch.randn(N, K, generator=g) * 0.05
    return x, w, 2 / M * x.T @ x


def _output_error(x, w, codec, raw) -> float:
    return float((x @ codec.dequantize(raw, K).T - x @ w.T).norm())


@pytest.mark.parametrize("name", ["q4_0", "q4_k", "q3_k", "q2_k", "iq4_nl"])
def test_gptq_output_error_is_below_rtn_and_imatrix(layer, name) -> None:
    x, w, h = layer
    codec = get_block_codec(name)
    raw = gptq_blocks(w, h, codec)
    assert raw.dtype == torch.uint8 and raw.shape == (N, codec.nbytes((1, K)))
    gptq = _output_error(x, w, codec, raw)
    assert gptq < 0.9 * _output_error(x, w, codec, codec.quantize(w))
    assert gptq < _output_error(x, w, codec, codec.quantize(w, torch.diagonal(h)))


@pytest.mark.parametrize("name", ["q4_0", "q4_k", "q2_k"])
def test_output_is_valid_blocks_on_the_codec_grid(layer, name) -> None:
    _, w, h = layer
    codec = get_block_codec(name)
    raw = gptq_blocks(w, h, codec).view(N, -1, codec.type_size)
    codes = codec.decode(raw)[0]
    assert torch.equal(codec.with_codes(raw, codes), raw)
    grid = codec.grid(raw)
    deq = codec.dequantize(raw.reshape(N, -1), K).view(codes.shape)
    assert torch.equal(deq, grid.values(codes))
    assert int(codes.min()) >= grid.code_min
    assert int(codes.max()) < grid.code_min + grid.levels.numel()


@pytest.mark.parametrize("name", ["q4_0", "q8_0"])
def test_uncorrelated_inputs_give_round_to_nearest(layer, name) -> None:
    """With H = I no error reaches another column and the parameters come from the weights
    themselves: GPTQ is ggml's round to nearest, with the same block parameters. Its codes are
    nearest to the stored (fp16) scale where ggml rounds with the fp32 one, so a few codes
    near a tie differ, each at least as close to the weight."""
    _, w, _ = layer
    codec = get_block_codec(name)
    raw = gptq_blocks(w, torch.eye(K), codec, importance="none").view(N, -1, codec.type_size)
    rtn = codec.quantize(w).view(raw.shape)
    assert torch.equal(codec.grid(raw).scale, codec.grid(rtn).scale)
    same = codec.decode(raw)[0] == codec.decode(rtn)[0]
    assert float(same.float().mean()) > 0.99
    err = (codec.dequantize(raw.view(N, -1), K) - w).abs()
    assert bool((err <= (codec.dequantize(rtn.view(N, -1), K) - w).abs()).all())


def test_hessian_importance_beats_unweighted_parameters(layer) -> None:
    x, w, h = layer
    codec = get_block_codec("q2_k")
    weighted = _output_error(x, w, codec, gptq_blocks(w, h, codec))
    plain = _output_error(x, w, codec, gptq_blocks(w, h, codec, importance="none"))
    assert weighted < plain


def test_bad_inputs_are_refused(layer) -> None:
    _, w, h = layer
    codec = get_block_codec("q4_k")
    with pytest.raises(UnsupportedFormatError, match="multiple of the block size"):
        gptq_blocks(w[:, :320], h[:320, :320], codec)
    with pytest.raises(InvalidInputError, match="hessian has shape"):
        gptq_blocks(w, h[:256, :256], codec)
    with pytest.raises(InvalidSpecError, match="importance"):
        gptq_blocks(w, h, codec, importance="imatrix")


@pytest.mark.parametrize("name", ["q4_0", "q4_k", "q3_k"])
def test_block_parameters_are_llama_cpps_imatrix_parameters(layer, name) -> None:
    """GPTQ's static groups: the scales and mins are ggml's importance-weighted search on the
    original weights (what llama-quantize --imatrix writes); only the codes are GPTQ's."""
    _, w, h = layer
    codec = get_block_codec(name)
    raw = gptq_blocks(w, h, codec).view(N, -1, codec.type_size)
    ggml = codec.quantize(w, torch.diagonal(h)).view(raw.shape)
    assert torch.equal(codec.grid(raw).scale, codec.grid(ggml).scale)
    assert torch.equal(codec.grid(raw).offset, codec.grid(ggml).offset)
    assert not torch.equal(raw, ggml)


@pytest.mark.parametrize("name", ["q4_0", "q3_k"])
def test_act_order_lowers_the_output_error(layer, name) -> None:
    x, w, h = layer
    codec = get_block_codec(name)
    ordered = _output_error(x, w, codec, gptq_blocks(w, h, codec))
    natural = _output_error(x, w, codec, gptq_blocks(w, h, codec, act_order=False))
    assert ordered < natural
