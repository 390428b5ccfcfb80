"""export.onnx.decoder: llama causal LMs as ONNX decoder graphs with past key/values, run in
ONNX Runtime against lowbit's PyTorch model (padded batches, KV cache, greedy tokens)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import lowbit
from lowbit.errors import InvalidInputError, UnsupportedFormatError
from lowbit.eval.perplexity import perplexity
from lowbit.export.onnx import decoder as decoder_mod
from lowbit.export.onnx.decoder import export_decoder
from lowbit.export.onnx.decoder_session import DecoderSession, generate_greedy, ort_perplexity
from lowbit.formats.sqnr import sqnr_db
from lowbit_testkit.models import tiny_llama

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

PRESETS = [None, "w4a16-g128", "w4a16-g128-asym", "w4a16-g32", "w8a16"]


def _padded_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    lengths = (5, 11, 8)
    ids = torch.zeros(3, 11, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, 11 - n :] = torch.randint(0, 96, (n,), generator=gen)
        mask[row, 11 - n :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _quantized(preset: str | None, **overrides):
    model = tiny_llama(**overrides)
    return model if preset is None else lowbit.quantize(copy.deepcopy(model), preset)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


@pytest.mark.parametrize("preset", PRESETS)
def test_padded_batch_logits_and_greedy_tokens_match_lowbit(preset, tmp_path) -> None:
    model = _quantized(preset)
    batch = _padded_batch()
    result = export_decoder(model, batch, tmp_path / "m.onnx")
    assert result.kind == "decoder" and result.path.is_file()
    assert result.verification.same_tokens is True
    assert result.verification.sqnr_db >= 30
    if preset is None:
        assert "MatMulNBits" not in result.op_counts
        assert "model.layers.0.mlp.up_proj" in result.float_layers
    else:
        # 2 layers x 7 projections + lm_head; 8-bit ones are Cast+MatMul where ORT's fast
        # 8-bit MatMulNBits (int8 inputs) disagreed with lowbit
        written = result.op_counts.get("MatMulNBits", 0) + result.op_counts.get("Cast", 0)
        assert written == 15 + 1  # + the attention mask's Cast
        assert result.op_counts["GatherBlockQuantized"] == 1
        assert result.float_layers == {}
    # The bar, measured here independently: ORT vs lowbit's model as it runs
    # (fast bf16 kernels), on the real tokens of a left-padded batch.
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits, _ = DecoderSession(result.path).run(ids.numpy(), mask.numpy())
    with torch.inference_mode():
        ref = model(ids, attention_mask=mask, position_ids=_positions(mask)).logits
    real = mask.bool()
    assert sqnr_db(ref[real], torch.from_numpy(logits)[real]) >= 30


@pytest.mark.parametrize("preset", ["w4a16-g32", "w4a16-g128-asym"])
def test_matmulnbits_holds_lowbits_codes_and_scales_bit_for_bit(preset, tmp_path) -> None:
    model = _quantized(preset)
    path = export_decoder(model, None, tmp_path / "m.onnx", verify=False).path
    init = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    weight = model.model.layers[1].mlp.down_proj.weight  # [32, 64]
    packed = init["model.layers.1.mlp.down_proj.qweight"]  # [N, k_blocks, blob]
    nibbles = np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    shift = 8 if weight.qtype.qmin < 0 else 0
    codes = weight.codes().to(torch.int16).numpy() + shift
    np.testing.assert_array_equal(nibbles[:, : codes.shape[1]], codes)
    scales = init["model.layers.1.mlp.down_proj.scales"]
    np.testing.assert_array_equal(scales, weight.scale.float().numpy())
    if weight.zero_point is not None:
        zeros = init["model.layers.1.mlp.down_proj.qzeros"]
        unpacked = np.stack([zeros & 15, zeros >> 4], axis=-1).reshape(zeros.shape[0], -1)
        k_blocks = scales.shape[1]
        np.testing.assert_array_equal(unpacked[:, :k_blocks], weight.zero_point.numpy())


def test_kv_cache_decode_equals_full_recompute_on_a_padded_batch(tmp_path) -> None:
    model = _quantized("w4a16-g32")
    path = export_decoder(model, None, tmp_path / "m.onnx", verify=False).path
    session = DecoderSession(path)
    batch = _padded_batch()
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    gen = torch.Generator().manual_seed(2)
    more = torch.randint(0, 96, (3, 4), generator=gen).numpy()
    full_ids = np.concatenate([ids, more], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(more)], axis=1)
    full, _ = session.run(full_ids, full_mask)
    _, past = session.run(ids, mask)
    for step in range(more.shape[1]):
        width = ids.shape[1] + step + 1
        logits, past = session.run(more[:, step : step + 1], full_mask[:, :width], past)
        np.testing.assert_allclose(logits[:, 0], full[:, width - 1], rtol=1e-4, atol=1e-4)
    assert past["past_key_values.0.key"].shape == (3, 2, full_ids.shape[1], 8)


def test_left_padded_generation_equals_each_prompt_alone(tmp_path) -> None:
    model = _quantized("w4a16-g128")
    path = export_decoder(model, None, tmp_path / "m.onnx", verify=False).path
    session = DecoderSession(path)
    batch = _padded_batch()
    together = generate_greedy(
        session, batch["input_ids"], 12, attention_mask=batch["attention_mask"]
    )
    for row in range(3):
        prompt = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        alone = generate_greedy(session, prompt.unsqueeze(0), 12)[0]
        assert torch.equal(together[row, -12:], alone[-12:])


def test_opset21_writes_standard_dequantize_linear(tmp_path) -> None:
    model = _quantized("w4a16-g128-asym")
    result = export_decoder(model, _padded_batch(), tmp_path / "m.onnx", opset=21)
    assert result.verification.same_tokens is True
    assert "MatMulNBits" not in result.op_counts
    assert "GatherBlockQuantized" not in result.op_counts
    assert result.op_counts["DequantizeLinear"] == 16
    proto = onnx.load(result.path)
    assert {o.domain for o in proto.opset_import} == {""}
    assert {n.domain for n in proto.graph.node} == {""}
    qweight = next(t for t in proto.graph.initializer if t.name.endswith("q_proj.qweight"))
    assert qweight.data_type == onnx.TensorProto.UINT4


def test_tied_int8_head_and_external_data(tmp_path, monkeypatch) -> None:
    model = _quantized("w4a16-g128", tie_word_embeddings=True)
    monkeypatch.setattr(decoder_mod, "EXTERNAL_DATA_BYTES", 0)
    result = export_decoder(model, None, tmp_path / "m.onnx")
    data = tmp_path / "m.onnx.data"
    assert (
        data.is_file() and result.output_bytes == data.stat().st_size + result.path.stat().st_size
    )
    assert result.path.stat().st_size < data.stat().st_size
    assert result.verification.same_tokens is True
    head = next(n for n in onnx.load(result.path, load_external_data=False).graph.node
                if n.name.startswith("lm_head"))  # fmt: skip
    if "disagreed" in result.verification.detail:
        assert head.op_type == "Cast"  # int8 codes cast in the graph (exact)
    else:
        assert {a.name: a.i for a in head.attribute} == {
            "K": 32, "N": 96, "bits": 8, "block_size": 32, "accuracy_level": 4
        }  # fmt: skip


def test_ort_perplexity_is_lowbits_perplexity(tmp_path) -> None:
    model = _quantized(None)
    path = export_decoder(model, None, tmp_path / "m.onnx", verify=False).path
    ids = torch.randint(0, 96, (150,), generator=torch.Generator().manual_seed(3))
    want = perplexity(model, ids, ctx=64, stride=32)
    got = ort_perplexity(path, ids, ctx=64, stride=32)
    assert got.n_tokens == want.n_tokens
    assert got.ppl == pytest.approx(want.ppl, rel=1e-5)


def test_export_onnx_dispatches_causal_lms_here(tmp_path) -> None:
    result = lowbit.export_onnx(_quantized("w4a16-g32"), None, tmp_path / "m.onnx", verify=False)
    assert result.kind == "decoder" and result.verification is None


def test_bad_inputs_give_clear_errors(tmp_path) -> None:
    model = _quantized("w4a16-g32")
    with pytest.raises(InvalidInputError, match="token ids"):
        export_decoder(model, torch.rand(2, 5), tmp_path / "a.onnx")
    with pytest.raises(InvalidInputError, match="vocabulary"):
        export_decoder(model, torch.full((1, 4), 500), tmp_path / "a.onnx")
    with pytest.raises(InvalidInputError, match="input_ids"):
        export_decoder(model, {"ids": torch.ones(1, 3, dtype=torch.long)}, tmp_path / "a.onnx")
    with pytest.raises(InvalidInputError, match="opset"):
        export_decoder(model, None, tmp_path / "a.onnx", opset=17)
    with pytest.raises(InvalidInputError, match="folder"):
        export_decoder(model, None, tmp_path)
    dynamic = lowbit.quantize(tiny_llama(), "w8a8-dynamic")
    with pytest.raises(UnsupportedFormatError, match=r"q_proj.*weight-only"):
        export_decoder(dynamic, None, tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()
    path = export_decoder(model, None, tmp_path / "m.onnx", verify=False).path
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        generate_greedy(path, torch.ones(1, 3, dtype=torch.long), 0)
    with pytest.raises(InvalidInputError, match="input_ids"):
        generate_greedy(path, torch.ones(3, dtype=torch.long), 2)


def test_a_failed_check_writes_nothing_and_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    model = _quantized("w4a16-g32")
    path = tmp_path / "m.onnx"
    path.write_bytes(b"the user's earlier file")
    monkeypatch.setattr(decoder_mod, "MIN_SQNR_DB", 1000.0)  # no real graph reaches it
    with pytest.raises(decoder_mod.DecoderVerificationError, match="--no-verify"):
        export_decoder(model, None, path)
    assert path.read_bytes() == b"the user's earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.slow
def test_smollm2_w4a16_g128_decoder_agrees_with_lowbit(tmp_path) -> None:
    from lowbit.eval.bundled import smollm2_gguf_path
    from lowbit.eval.text import evaluation_text
    from lowbit.io import load_model
    from lowbit.recipes import get_recipe

    loaded = load_model(smollm2_gguf_path())
    tok = loaded.tokenizer
    # float embeddings and head: no 8-bit layer, so one verification pass (CI time)
    model = lowbit.quantize(loaded.model, get_recipe("w4a16-g128").with_embeddings(None))
    prompts = ["The capital of France is", "def fibonacci(n):"]  # 2: CI time
    ids, mask = decoder_mod._left_pad([torch.tensor(tok(p)["input_ids"]) for p in prompts])
    batch = {"input_ids": ids, "attention_mask": mask}
    result = export_decoder(model, batch, tmp_path / "smollm2.onnx")
    assert result.verification.same_tokens is True  # 32 greedy steps on each prompt
    assert result.op_counts["MatMulNBits"] == 30 * 7  # the tied head stays a float MatMul
    ids = tok(evaluation_text(), return_tensors="pt").input_ids[0][:512]
    want = perplexity(model, ids)  # lowbit's model as it runs (fast bf16 kernels)
    got = ort_perplexity(result.path, ids)
    assert got.n_tokens == want.n_tokens
    assert got.ppl == pytest.approx(want.ppl, rel=0.01)
