"""export.gguf_calibrated.CodecLayers: recipes' block-wise pipeline storing ggml bytes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.export.gguf_calibrated import CodecLayers
from lowbit.formats.blocks import get_block_codec
from lowbit.recipes.blockwise import quantize_blockwise
from lowbit.recipes.spec import QuantSpec
from lowbit_testkit.models import tiny_llama


def _run(algorithm: str):
    model = tiny_llama()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 96, (1, 24), generator=gen) for _ in range(4)]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]
    codecs = {n: get_block_codec("q8_0" if n.endswith("v_proj") else "q4_0") for n in names}
    store = CodecLayers(codecs)
    norms = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n}
    embed = model.get_input_embeddings().weight.detach().clone()
    quantize_blockwise(model, {n: QuantSpec(algorithm=algorithm) for n in names}, batches, store)
    return model, names, codecs, store, norms, embed


@pytest.mark.parametrize("algorithm", ["gptq", "awq"])
def test_every_block_linear_is_stored_as_its_types_bytes(algorithm) -> None:
    model, names, codecs, store, norms, embed = _run(algorithm)
    modules = dict(model.named_modules())
    assert set(store.encoded) == set(names)
    for name in names:
        codec, raw = codecs[name], store.encoded[name]
        w = modules[name].weight
        assert isinstance(modules[name], nn.Linear)  # still float, for the next blocks
        assert raw.dtype == torch.uint8 and raw.shape[1] == codec.nbytes((1, w.shape[1]))
        assert torch.equal(w, codec.dequantize(raw, w.shape[1]))  # the decoded bytes
    after = {n: p for n, p in model.named_parameters() if "norm" in n}
    changed = {n for n in norms if not torch.equal(norms[n], after[n])}
    if algorithm == "awq":  # scales folded into the pre-norms of every block
        assert any("input_layernorm" in n for n in changed)
        assert any("post_attention_layernorm" in n for n in changed)
    else:
        assert not changed
    assert "model.norm.weight" not in changed  # nothing outside the blocks changes
    assert torch.equal(model.get_input_embeddings().weight, embed)


def _head_error(weight: torch.Tensor, reference: torch.Tensor, hessian: torch.Tensor) -> float:
    diff = (weight - reference).double()
    return torch.einsum("ij,jk,ik->", diff, hessian.double(), diff).item()


@pytest.mark.parametrize("tied", [True, False])
def test_gptq_stores_the_output_head_with_less_output_error_than_rounding(tied) -> None:
    """The head (token_embd where tied, else output.weight) is stored in its planned type
    with less output error (H from the head's inputs) than ggml's rounding of it."""
    from types import SimpleNamespace

    from lowbit.export.gguf_calibrated import _quantize_head, head_hessian

    model = tiny_llama(tie_word_embeddings=tied)
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    before_head, before_embedding = head.weight.detach().clone(), embedding.weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 96, (1, 24), generator=gen)} for _ in range(4)]
    name = "token_embd.weight" if tied else "output.weight"
    codec = get_block_codec("q4_0")
    job = SimpleNamespace(plan={"token_embd.weight": "Q4_0", "output.weight": "Q4_0"})
    hessian = head_hessian(model, head, batches)

    encoded = _quantize_head(job, model, batches, CodecLayers({}))

    assert set(encoded) == {name}
    gptq = codec.dequantize(torch.from_numpy(encoded[name]), 32)
    assert torch.equal(head.weight, gptq)  # the model holds the stored values
    assert torch.equal(embedding.weight, gptq if tied else before_embedding)
    rtn = codec.dequantize(codec.quantize(before_head), 32)
    assert _head_error(gptq, before_head, hessian) < 0.8 * _head_error(rtn, before_head, hessian)


def test_a_head_planned_as_float_or_already_on_its_grid_is_left_to_the_writer() -> None:
    """No block type, or a head whose round to nearest is exact (a Q8_0 source kept Q8_0):
    nothing to calibrate, and no calibration pass run (no batches given)."""
    from types import SimpleNamespace

    from lowbit.export.gguf_calibrated import _quantize_head

    model = tiny_llama(tie_word_embeddings=True)
    job = SimpleNamespace(plan={"token_embd.weight": "F16"})
    assert _quantize_head(job, model, [], CodecLayers({})) == {}
    codec, weight = get_block_codec("q8_0"), model.get_output_embeddings().weight
    with torch.no_grad():
        weight.copy_(codec.dequantize(codec.quantize(weight), weight.shape[1]))
    job = SimpleNamespace(plan={"token_embd.weight": "Q8_0"})
    assert _quantize_head(job, model, [], CodecLayers({})) == {}


@pytest.mark.parametrize(("seq_len", "windows"), [(512, 0), (4, 16)])
def test_export_refuses_empty_calibration_before_reading_the_model(
    tmp_path, seq_len, windows
) -> None:
    from lowbit.errors import InvalidInputError
    from lowbit.eval.bundled import smollm2_gguf_path
    from lowbit.export import export_gguf

    with pytest.raises(InvalidInputError, match="--calib-windows >= 1"):
        export_gguf(
            smollm2_gguf_path(), tmp_path / "m.gguf", "q4_0", method="gptq",
            seq_len=seq_len, calib_windows=windows,
        )  # fmt: skip
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("method", ["gptq", "awq", "imatrix"])
def test_a_hugging_face_folder_exports_with_a_calibrated_method(tmp_path, method) -> None:
    """HF folder in, calibrated q4_0 out: block Linear tensors hold the method's values (not
    the rtn file's), every other tensor is the rtn file's, and the file reads back."""
    pytest.importorskip("transformers")
    from lowbit.export import export_gguf
    from lowbit.io.gguf.reader import read_gguf
    from lowbit_testkit.models import tiny_llama_folder

    folder = tiny_llama_folder(tmp_path / "llama")
    calib = tmp_path / "calib.txt"
    calib.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    rtn = read_gguf(export_gguf(folder, tmp_path / "rtn.gguf", "q4_0").path)
    result = export_gguf(folder, tmp_path / f"{method}.gguf", "q4_0", method=method,
                         calib=calib, seq_len=16, calib_windows=4)  # fmt: skip
    mine = read_gguf(result.path)
    assert [t.name for t in mine.tensors] == [t.name for t in rtn.tensors]
    changed = {t.name for t, r in zip(mine.tensors, rtn.tensors, strict=True)
               if bytes(mine.raw(t)) != bytes(rtn.raw(r))}  # fmt: skip
    assert {t.type.name for t in mine.tensors if t.name.endswith("attn_q.weight")} == {"Q4_0"}
    assert any(n.startswith("blk.") and n.endswith("ffn_down.weight") for n in changed)
    outside = {n for n in changed if not n.startswith("blk.")}
    # GPTQ also quantizes the (untied) output head; token_embd and output_norm are rounded
    # as llama-quantize rounds them
    assert outside == ({"output.weight"} if method == "gptq" else set())
    if method != "awq":  # AWQ folds its scales into the norms (float replacements)
        assert all(n.endswith(".weight") and "norm" not in n for n in changed)


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq", "imatrix"])
def test_calibrated_methods_plan_types_as_llama_quantize_with_an_imatrix(tmp_path, method) -> None:
    """llama-quantize given an imatrix stores ffn_down of the first n_layer/8 layers as Q4_1 in
    a q4_0 file; every calibrated method takes that plan, rtn the one without an imatrix."""
    pytest.importorskip("transformers")
    from lowbit.export import export_gguf
    from lowbit.io.gguf.reader import read_gguf
    from lowbit_testkit.models import tiny_llama_folder

    folder = tiny_llama_folder(tmp_path / "llama", num_hidden_layers=8)
    calib = tmp_path / "calib.txt"
    calib.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    result = export_gguf(folder, tmp_path / "m.gguf", "q4_0", method=method, calib=calib,
                         seq_len=16, calib_windows=2)  # fmt: skip
    types = {t.name: t.type.name for t in read_gguf(result.path).tensors}
    assert types["blk.0.ffn_down.weight"] == ("Q4_0" if method == "rtn" else "Q4_1")
    assert types["blk.1.ffn_down.weight"] == "Q4_0"


def test_a_calibrated_export_parses_its_source_once(tmp_path, monkeypatch) -> None:
    """Planning and writing share one gguf-py reader of the source (SmolLM2's header and
    vocabulary take seconds to parse)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from lowbit.export import export_gguf
    from lowbit_testkit.gguf_parses import count_gguf_parses
    from lowbit_testkit.models import tiny_llama_folder

    folder = tiny_llama_folder(tmp_path / "llama", num_hidden_layers=2)
    calib = tmp_path / "calib.txt"
    calib.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    parsed = count_gguf_parses(monkeypatch)
    export_gguf(folder, tmp_path / "m.gguf", "q4_0", method="gptq", calib=calib, seq_len=16,
                calib_windows=2)  # fmt: skip
    assert len(parsed) == 1, parsed
