"""ggml's C reference quantizers (formats/blocks/_ggml_ref.c) against lowbit's torch codecs:
the same bytes on real SmolLM2 weights, for every thread count and row chunking."""

from __future__ import annotations

from functools import cache

import gguf
import numpy as np
import pytest
import torch

from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.formats.blocks import BLOCK_TYPES, native

C_TYPES = sorted(name for name, codec in BLOCK_TYPES.items() if codec.native_rtn)


@cache
def smollm2_rows() -> torch.Tensor:
    """SmolLM2's blk.0.ffn_down (576 x 1536, dequantized from the bundled Q4_1 GGUF)."""
    reader = gguf.GGUFReader(smollm2_gguf_path())
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    return torch.from_numpy(x.reshape(-1, 1536))


def test_the_extension_is_built() -> None:
    # `pip install -e .` compiles it wherever a C compiler is present (CI has gcc); without
    # it every codec still works, on its slower torch path.
    assert native.available(), "formats/blocks/_ggml_ref.c was not built: pip install -e . with gcc"


def test_the_c_path_covers_the_k_quants_and_q5() -> None:
    assert C_TYPES == ["q2_k", "q3_k", "q4_k", "q5_0", "q5_1", "q5_k", "q6_k"]


@pytest.mark.parametrize("name", C_TYPES)
def test_c_equals_torch_on_real_weights(name: str) -> None:
    x = smollm2_rows()[:96]
    codec = BLOCK_TYPES[name]
    c = codec.quantize(x)
    assert torch.equal(c, codec.quantize(x, native=False))
    # a zero block, a constant block and a lone outlier take the searches' edge branches
    edge = x[:3].clone()
    edge[0, :256] = 0
    edge[1, 256:512] = 0.125
    edge[2, 7] = 40.0
    assert torch.equal(codec.quantize(edge), codec.quantize(edge, native=False))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_and_chunks_give_the_same_bytes(threads: int) -> None:
    codec = BLOCK_TYPES["q4_k"]
    x = smollm2_rows()[:101]  # 101 rows: chunks of 42 leave a short last one
    row_bytes = 1536 // 256 * codec.type_size
    ref = native.quantize_rows(codec.ggml_type, x, row_bytes, threads=1)
    assert torch.equal(native.quantize_rows(codec.ggml_type, x, row_bytes, threads=threads), ref)
    wide = x.reshape(1, -1)[:, : 65536 + 512]  # one row wider than a chunk
    assert torch.equal(codec.quantize(wide), codec.quantize(wide, native=False))


@pytest.mark.parametrize("name", C_TYPES)
def test_c_equals_torch_on_skewed_and_heavy_tailed_rows(name: str) -> None:
    """Shapes real weights rarely have: all-positive rows (min clipped to 0), heavy tails
    (the searches pick late candidates), tiny magnitudes (fp16 subnormal scales)."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(8, 512, generator=gen)
    heavy = base * torch.exp(2 * torch.randn(8, 512, generator=gen)) * 0.01
    rows = torch.cat([base.abs() * 0.05, heavy, base * 1e-6])
    codec = BLOCK_TYPES[name]
    assert torch.equal(codec.quantize(rows), codec.quantize(rows, native=False))
