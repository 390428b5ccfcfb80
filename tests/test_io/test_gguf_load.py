"""lowbit.io.gguf.load_gguf: llama GGUF files as torch models with lossless lowbit weights."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from lowbit.io.gguf import read_gguf
from lowbit.io.gguf.load import load_gguf, unpermute_rows
from lowbit.kernels import REFERENCE_NAME
from lowbit.nn import QuantLinear
from lowbit.tensors.integer import IntPackedTensor

Q = gguf.GGMLQuantizationType
HIDDEN, HEADS, KV_HEADS, FF, VOCAB, LAYERS = 64, 4, 2, 128, 96, 2
# Which type each projection is stored in: every lossless kind, a K-quant and F16.
TYPES = {
    "attn_q": Q.Q8_0, "attn_k": Q.Q4_0, "attn_v": Q.Q4_1, "attn_output": Q.Q8_0,
    "ffn_gate": Q.Q4_0, "ffn_up": Q.Q4_1, "ffn_down": Q.F16,
}  # fmt: skip


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tiny_llama_gguf(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    head = HIDDEN // HEADS
    shapes = {
        "attn_q": (HIDDEN, HIDDEN), "attn_k": (KV_HEADS * head, HIDDEN),
        "attn_v": (KV_HEADS * head, HIDDEN), "attn_output": (HIDDEN, HIDDEN),
        "ffn_gate": (FF, HIDDEN), "ffn_up": (FF, HIDDEN), "ffn_down": (HIDDEN, FF),
    }  # fmt: skip
    w.add_tensor("token_embd.weight", rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32))
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
    output = gguf.quants.quantize(
        0.1 * rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), Q.Q8_0
    )
    w.add_tensor("output.weight", output, raw_dtype=Q.Q8_0)
    for i in range(LAYERS):
        for name in ("attn_norm", "ffn_norm"):
            value = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
            w.add_tensor(f"blk.{i}.{name}.weight", value)
        for name, shape in shapes.items():
            value = (0.2 * rng.standard_normal(shape)).astype(np.float32)
            if name in ("attn_q", "attn_k"):
                value = _permute(value, HEADS if name == "attn_q" else KV_HEADS)
            qtype = TYPES[name]
            if qtype == Q.F16:
                w.add_tensor(f"blk.{i}.{name}.weight", value.astype(np.float16))
            else:
                data = gguf.quants.quantize(value, qtype)
                w.add_tensor(f"blk.{i}.{name}.weight", data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def test_unpermute_undoes_llama_cpp_permute() -> None:
    w = np.arange(16 * 3).reshape(16, 3)
    np.testing.assert_array_equal(unpermute_rows(_permute(w, 4), 4), w)


def test_weights_are_lowbit_containers_equal_to_gguf_py_bit_for_bit(tiny: Path) -> None:
    model = load_gguf(tiny)
    f = read_gguf(tiny)
    kinds = {
        "Q8_0": ("int8", "symmetric"),
        "Q4_0": ("int4", "symmetric"),
        "Q4_1": ("uint4", "offset"),
    }
    projections = {
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }  # fmt: skip
    for i in range(LAYERS):
        for gname, hname in projections.items():
            t = f.tensor(f"blk.{i}.{gname}.weight")
            expected = f.dequantize(t)  # gguf-py's dequantize
            if gname in ("attn_q", "attn_k"):
                expected = unpermute_rows(expected, HEADS if gname == "attn_q" else KV_HEADS)
            module = model.get_submodule(f"model.layers.{i}.{hname}")
            if t.type.name in kinds:
                assert isinstance(module, QuantLinear)
                weight = module.weight
                assert isinstance(weight, IntPackedTensor)
                assert (weight.qtype.name, weight.form) == kinds[t.type.name]
                assert weight.scale.dtype == torch.float16
                got = weight.dequantize()
            else:
                assert isinstance(module, torch.nn.Linear)
                got = module.weight.detach()
            assert torch.equal(got, torch.from_numpy(expected)), (i, gname)
    lm_head = model.lm_head
    assert isinstance(lm_head, QuantLinear)
    assert torch.equal(
        lm_head.weight.dequantize(), torch.from_numpy(f.dequantize(f.tensor("output.weight")))
    )


def _transformers_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        return ref(ids).logits


def test_logits_equal_transformers_gguf_loading(tiny: Path) -> None:
    ids = torch.tensor([[1, 5, 17, 33, 60, 2, 90, 41]])
    expected = _transformers_logits(tiny, ids)
    with torch.no_grad():
        exact = load_gguf(tiny, kernel=REFERENCE_NAME)(ids).logits
        fast = load_gguf(tiny)(ids).logits
    torch.testing.assert_close(exact, expected, rtol=1e-5, atol=1e-5)
    # the aten weight-only kernels multiply in bf16
    torch.testing.assert_close(fast, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


def test_loading_a_gguf_with_transformers_draws_no_bar(tiny: Path, capfd) -> None:
    """transformers' GGUF loader draws a tqdm bar its progress switch does not reach; lowbit
    keeps it off stderr (a failing command prints one line)."""
    from lowbit.io.hf import load_model

    load_model(tiny, task="causal-lm")
    assert "Converting" not in capfd.readouterr().err


def test_load_model_parses_a_gguf_once_and_loads_what_transformers_loads(
    tiny: Path, monkeypatch
) -> None:
    """transformers parses the file for the config, the tokenizer and the weights; lowbit
    has it parsed once per load (half of SmolLM2's load time) and puts gguf back after."""
    from lowbit.io.hf import load_model
    from lowbit_testkit.gguf_parses import count_gguf_parses

    parsed = count_gguf_parses(monkeypatch)
    counting_reader = gguf.GGUFReader
    ids = torch.tensor([[1, 5, 17, 33, 60, 2, 90, 41]])
    with torch.no_grad():
        got = load_model(tiny, task="causal-lm").model(ids).logits
    assert len(parsed) == 1
    assert gguf.GGUFReader is counting_reader
    parsed.clear()
    torch.testing.assert_close(got, _transformers_logits(tiny, ids), rtol=0, atol=0)
    assert len(parsed) >= 2  # transformers alone parses it again per part


def test_gguf_loads_in_threads_leave_gguf_as_it_was(tiny: Path) -> None:
    """The parse-once swap of gguf's names is taken in turns, so loads in several threads
    cannot leave one load's memo installed."""
    from concurrent.futures import ThreadPoolExecutor

    from lowbit.io.hf import load_model

    before = (gguf.GGUFReader, gguf.get_tensor_name_map)
    with ThreadPoolExecutor(3) as pool:
        models = list(pool.map(lambda _: load_model(tiny, task="causal-lm"), range(3)))
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == before
    assert all(m.source == "gguf" for m in models)


@pytest.mark.slow
def test_smollm2_logits_equal_transformers_gguf_loading() -> None:
    from lowbit.eval.bundled import smollm2_gguf_path

    path = smollm2_gguf_path()
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 253, 1345]])
    expected = _transformers_logits(path, ids)
    with torch.no_grad():
        exact = load_gguf(path, kernel=REFERENCE_NAME)(ids).logits
    torch.testing.assert_close(exact, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_load_model_keeps_a_llama_gguf_quantized_for_eval() -> None:
    from lowbit.eval.bundled import smollm2_gguf_path
    from lowbit.eval.perplexity import perplexity
    from lowbit.eval.text import evaluation_text
    from lowbit.io.hf import load_model

    text = evaluation_text()
    stored = load_model(smollm2_gguf_path(), task="causal-lm", gguf_weights="lowbit")
    assert stored.source == "gguf-lowbit" and stored.tokenizer is not None
    assert isinstance(stored.model.model.layers[0].mlp.down_proj, QuantLinear)
    floats = load_model(smollm2_gguf_path(), task="causal-lm")
    assert floats.source == "gguf"
    a = perplexity(stored.model, stored.tokenizer, text, ctx=256, stride=256, max_tokens=256)
    b = perplexity(floats.model, floats.tokenizer, text, ctx=256, stride=256, max_tokens=256)
    assert a.ppl == pytest.approx(b.ppl, rel=0.02)  # same weights; bf16 kernels
