"""lowbit.io.gguf.types: llama-quantize's per-tensor type choice, and (slow) every TYPE's
whole file byte-identical to llama-quantize's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from lowbit.errors import UnsupportedFormatError
from lowbit.io.gguf.types import FILE_TYPES, TensorInfo, allows_quantization, choose_tensor_types
from lowbit.io.gguf.writer import llama_quantize_order


def _model(n_layer: int, width: int) -> list[TensorInfo]:
    names = ["token_embd.weight", "output_norm.weight", "output.weight"]
    for i in range(n_layer):
        names += [f"blk.{i}.{p}.weight" for p in ("attn_norm", "attn_q", "attn_k", "attn_v",
                                                  "attn_output", "ffn_norm", "ffn_gate",
                                                  "ffn_up", "ffn_down")]  # fmt: skip
    return [
        TensorInfo(
            n, (width,) if "norm" in n else (width, width), "F16" if "norm" not in n else "F32"
        )
        for n in llama_quantize_order(names)
    ]


def test_norms_and_1d_keep_their_type():
    assert not allows_quantization(TensorInfo("blk.0.attn_norm.weight", (576,), "F32"))
    assert not allows_quantization(TensorInfo("blk.0.attn_q.bias", (576, 576), "F32"))
    assert not allows_quantization(TensorInfo("position_embd.weight", (384, 512), "F32"))
    assert allows_quantization(TensorInfo("blk.0.attn_q.weight", (576, 576), "F16"))


def test_q4_k_m_mix_on_a_width_256_model():
    tensors = _model(8, 512)
    types = dict(zip([t.name for t in tensors], choose_tensor_types(
        "q4_k_m", tensors, n_layer=8, n_head=8, n_head_kv=8), strict=True))  # fmt: skip
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q4_K"  # untied: the default type
    assert types["output_norm.weight"] == "F32"
    # use_more_bits(i, 8): i < 1, i >= 7, (i - 1) % 3 == 2 -> layers 0, 3, 6, 7
    assert [types[f"blk.{i}.ffn_down.weight"] for i in range(8)] == [
        "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"]  # fmt: skip
    assert [types[f"blk.{i}.attn_v.weight"] for i in range(8)] == [
        "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"]  # fmt: skip
    assert types["blk.0.attn_q.weight"] == "Q4_K"


def test_fallbacks_when_the_row_is_not_a_multiple_of_256():
    tensors = _model(2, 576)  # SmolLM2's width
    types = choose_tensor_types("q4_k_s", tensors, n_layer=2, n_head=9, n_head_kv=3)
    by = dict(zip([t.name for t in tensors], types, strict=True))
    assert by["blk.1.attn_q.weight"] == "Q5_0"  # Q4_K -> Q5_0
    assert by["output.weight"] == "Q8_0"  # 576 % 256 != 0
    assert choose_tensor_types("q6_k", tensors, n_layer=2, n_head=9, n_head_kv=3)[-1] == "Q8_0"
    odd = [TensorInfo("blk.0.attn_q.weight", (100, 64), "F32")]
    assert choose_tensor_types("q4_0", odd, n_layer=1, n_head=1, n_head_kv=1) == ["F16"]


def test_order_is_llama_quantizes():
    names = [
        "blk.10.a.weight",
        "blk.2.b.weight",
        "output.weight",
        "blk.2.a.weight",
        "token_embd.weight",
    ]
    expected = ["output.weight", "token_embd.weight"]
    assert llama_quantize_order(names) == [*expected, *names[3:4], names[1], names[0]]


def test_unknown_type_names_the_choices():
    with pytest.raises(UnsupportedFormatError, match="q4_k_m"):
        choose_tensor_types("q9", [], n_layer=1, n_head=1, n_head_kv=1)


@pytest.fixture(scope="module")
def smollm2_source():
    """SmolLM2's path and one gguf-py reader of it for every type (parsing its vocabulary
    takes seconds, more than writing most types)."""
    pytest.importorskip("gguf")
    from lowbit.eval.bundled import smollm2_gguf_path
    from lowbit.io.gguf.writer import open_source

    src = smollm2_gguf_path()
    return src, open_source(src)


def _first_difference(mine: Path, ref: Path) -> str:
    """Where two GGUF files differ: KV keys, then the first tensor's name, type or bytes."""
    import gguf

    ours, theirs = gguf.GGUFReader(mine), gguf.GGUFReader(ref)
    if list(ours.fields) != list(theirs.fields):
        return f"KV keys differ: {list(ours.fields)} vs {list(theirs.fields)}"
    for ta, tb in zip(ours.tensors, theirs.tensors, strict=True):
        if (ta.name, ta.tensor_type) != (tb.name, tb.tensor_type):
            return f"tensor {ta.name} {ta.tensor_type.name} vs {tb.name} {tb.tensor_type.name}"
        if np.asarray(ta.data).tobytes() != np.asarray(tb.data).tobytes():
            return f"bytes of {ta.name} ({ta.tensor_type.name}) differ"
    return "the tensors are equal; the header or padding differs"


@pytest.mark.slow
@pytest.mark.parametrize("file_type", list(FILE_TYPES))
def test_smollm2_rtn_export_is_llama_quantizes_file(file_type, smollm2_source, tmp_path):
    """Every TYPE: the whole file identical to llama-quantize's (no imatrix), byte for byte:
    the same KV pairs, per-tensor types and tensor bytes. The files are parsed only to say
    where they differ."""
    from lowbit.io.gguf.writer import write_gguf
    from lowbit_testkit.llama_cpp import tool

    src, reader = smollm2_source
    ref, mine = tmp_path / "ref.gguf", tmp_path / "mine.gguf"
    subprocess.run([str(tool("llama-quantize")), "--allow-requantize", str(src), str(ref),
                    file_type.upper(), "2"], check=True, capture_output=True)  # fmt: skip
    result = write_gguf(src, mine, file_type, reader=reader)
    if mine.read_bytes() != ref.read_bytes():
        pytest.fail(f"{file_type}: {_first_difference(mine, ref)}")
    assert result.output_bytes == ref.stat().st_size


def test_an_imatrix_changes_the_first_ffn_down_types():
    # llama_tensor_get_type: with an imatrix, ffn_down of layers < n_layer/8 goes to Q4_1 (q4_0)
    # or Q5_1 (q5_0), and iq4_nl no longer sends them to Q5_K
    tensors = _model(16, 512)
    names = [t.name for t in tensors]

    def down(file_type: str, has_imatrix: bool) -> list[str]:
        types = choose_tensor_types(file_type, tensors, n_layer=16, n_head=8, n_head_kv=8,
                                    has_imatrix=has_imatrix)  # fmt: skip
        by = dict(zip(names, types, strict=True))
        return [by[f"blk.{i}.ffn_down.weight"] for i in range(3)]

    assert down("q4_0", False) == ["Q4_0", "Q4_0", "Q4_0"]
    assert down("q4_0", True) == ["Q4_1", "Q4_1", "Q4_0"]
    assert down("q5_0", True) == ["Q5_1", "Q5_1", "Q5_0"]
    assert down("iq4_nl", False) == ["Q5_K", "Q5_K", "IQ4_NL"]
    assert down("iq4_nl", True) == ["IQ4_NL", "IQ4_NL", "IQ4_NL"]
    assert down("q4_k_m", True) == down("q4_k_m", False)
