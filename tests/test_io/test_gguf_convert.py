"""lowbit.io.gguf.convert: Hugging Face folders as the GGUF file llama.cpp's converter writes,
and `lowbit export HF_FOLDER --format gguf` (float types: the converter's file; other types:
llama-quantize's rules on the converter's F32 file)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lowbit.errors import InvalidInputError, UnsupportedFormatError
from lowbit.eval.bundled import minilm_path, smollm2_gguf_path
from lowbit.io.gguf.convert import convert_hf_folder, hf_as_gguf
from lowbit.io.gguf.pre_tokenizers import CHKTXT, PRE_TOKENIZERS
from lowbit_testkit.llama_cpp import source_dir, tool
from lowbit_testkit.models import tiny_llama_folder

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _reference_convert(tmp_path, folder, outtype: str):
    """llama.cpp 0c1e570's own convert_hf_to_gguf.py on ``folder`` (its gguf-py first on the
    path, as the script itself arranges). The script imports sentencepiece before it checks
    that tokenizer.model exists; where sentencepiece is not installed, an empty stand-in module
    lets it reach that check (these folders have no tokenizer.model, so the class is unused)."""
    src = source_dir()
    paths = [str(src / "gguf-py")]
    if importlib.util.find_spec("sentencepiece") is None:
        shim = tmp_path / "shim" / "sentencepiece"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text("SentencePieceProcessor = None\n")
        paths.append(str(shim.parent))
    out = tmp_path / f"reference-{outtype}.gguf"
    env = {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join(paths)}
    run = subprocess.run(
        [sys.executable, str(src / "convert_hf_to_gguf.py"), str(folder), "--outtype", outtype,
         "--outfile", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def _assert_same_gguf(mine, ref) -> None:
    """Same KV keys in the same order with the same values, same tensors (names, order,
    types, bytes), then the whole file byte for byte."""
    gguf = pytest.importorskip("gguf")
    a, b = gguf.GGUFReader(mine), gguf.GGUFReader(ref)
    assert list(a.fields) == list(b.fields)
    for key, field in a.fields.items():
        assert field.contents() == b.fields[key].contents(), key
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert ta.tensor_type == tb.tensor_type, ta.name
        assert np.asarray(ta.data).tobytes() == np.asarray(tb.data).tobytes(), ta.name
    assert mine.read_bytes() == ref.read_bytes()


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory):
    """A llama Hugging Face folder with SmolLM2's tokenizer, chat template and config (heads,
    widths, RoPE, tied embeddings), cut to 2 blocks of seeded random weights: the converters'
    output depends on the weights' shapes, not their values, and transformers' GGUF model
    loader takes ~40 s on 2 cores (the full 30-block SmolLM2 folder with its own weights was
    checked byte-identical by hand, docs/decisions.md)."""
    import transformers

    from lowbit_testkit.models import tiny_llama

    gguf_file = smollm2_gguf_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name
    )
    model = tiny_llama(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("smollm2-hf")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_smollm2_folder_exports_as_llama_cpps_converter_writes_it(smollm2_folder, tmp_path):
    from lowbit.export import export_gguf

    # f32: the converter's file, also the temporary file every quantized export starts from
    # (that those give llama-quantize's bytes is the writer's own tested property)
    mine = export_gguf(smollm2_folder, tmp_path / "mine.gguf", "f32").path
    reference = _reference_convert(tmp_path, smollm2_folder, "f32")
    _assert_same_gguf(mine, reference)
    gguf = pytest.importorskip("gguf")
    fields = gguf.GGUFReader(mine).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert "im_start" in fields["tokenizer.chat_template"].contents()
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False


def _llama_embeddings(model_file, texts: list[str], tmp_path):
    """llama-embedding's mean-pooled, L2-normalised embeddings, one per line of input."""
    import torch

    prompts = tmp_path / "texts.txt"
    prompts.write_text("\n".join(texts) + "\n")
    run = subprocess.run(
        [str(tool("llama-embedding")), "-m", str(model_file), "-f", str(prompts),
         "--pooling", "mean", "--embd-normalize", "2", "--embd-output-format", "json",
         "-t", "2", "-b", "512", "-ub", "512", "-c", "512"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_WAIT_POLICY": "passive"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads(run.stdout)["data"]
    assert [d["index"] for d in data] == list(range(len(texts)))
    return torch.tensor([d["embedding"] for d in data], dtype=torch.float32)


@pytest.mark.slow
def test_minilm_export_runs_in_llama_embedding_close_to_fp32(tmp_path):
    """The issue's acceptance: all-MiniLM-L6-v2 exported as f16 and q8_0 runs in
    llama-embedding with mean cosine >= 0.99 against the fp32 model on 256 sentences; the f16
    file is the converter's own, byte for byte."""
    import torch

    from lowbit.eval.embedding import embed, embedding_fidelity
    from lowbit.eval.text import evaluation_text, text_chunks
    from lowbit.export import export_gguf
    from lowbit.io.hf import load_model

    torch.set_num_threads(2)
    texts = text_chunks(evaluation_text(), 256, words=12)
    loaded = load_model(minilm_path(), task="embedding")
    reference = embed(loaded.model, loaded.tokenizer, texts, max_length=512)
    for file_type in ("f16", "q8_0"):
        result = export_gguf(minilm_path(), tmp_path / f"{file_type}.gguf", file_type)
        if file_type == "f16":
            _assert_same_gguf(result.path, _reference_convert(tmp_path, minilm_path(), "f16"))
        fidelity = embedding_fidelity(reference, _llama_embeddings(result.path, texts, tmp_path))
        print(file_type, fidelity)
        assert fidelity["cosine_mean"] >= 0.99, (file_type, fidelity)


@pytest.mark.slow
def test_pre_tokenizer_table_is_the_pinned_converters():
    source = (source_dir() / "conversion" / "base.py").read_text(encoding="utf-8")
    body = source.split("# Marker: Start get_vocab_base_pre")[1].split("# Marker: End")[0]
    pairs = re.findall(r'if chkhsh == "([0-9a-f]{64})":\n(?:\s*#[^\n]*\n)*\s*res = "([^"]+)"', body)
    assert len(pairs) == body.count("if chkhsh ==") > 90
    assert dict(pairs) == PRE_TOKENIZERS  # a hash listed twice: the later name, as the if-chain
    assert repr(CHKTXT) in body or json.dumps(CHKTXT, ensure_ascii=False)[1:-1] in body


def _folder(tmp_path, config: dict, files: dict[str, bytes] | None = None):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    for name, data in (files or {}).items():
        (folder / name).write_bytes(data)
    return folder


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    folder = _folder(tmp_path, {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    with pytest.raises(UnsupportedFormatError, match="LlamaForCausalLM, BertModel"):
        convert_hf_folder(folder, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_pickled_weights_are_refused_without_being_read(tmp_path):
    config = {"architectures": ["BertModel"], "model_type": "bert"}
    folder = _folder(tmp_path, config, {"pytorch_model.bin": b"not read: never unpickled"})
    with pytest.raises(UnsupportedFormatError, match="safetensors only"):
        convert_hf_folder(folder, tmp_path / "out.gguf")


def test_damaged_safetensors_is_one_clear_error(tmp_path):
    config = {"architectures": ["BertModel"], "model_type": "bert"}
    folder = _folder(tmp_path, config, {"model.safetensors": b"\xff" * 8 + b"{"})
    with pytest.raises(InvalidInputError, match="not a readable safetensors file"):
        convert_hf_folder(folder, tmp_path / "out.gguf")


def test_temporary_conversion_is_removed_after_an_error(tmp_path):
    folder = _folder(tmp_path, {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(UnsupportedFormatError), hf_as_gguf(folder, near=out_dir / "m.gguf"):
        pass
    assert list(out_dir.iterdir()) == []


def test_temporary_conversion_is_removed_after_use(tmp_path):
    """A small BertModel folder (random weights, MiniLM's tokenizer and pooling files)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "bert"
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)  # fmt: skip
    transformers.BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "modules.json",
                 "special_tokens_map.json", "1_Pooling"):  # fmt: skip
        copy = shutil.copytree if (minilm_path() / name).is_dir() else shutil.copy
        copy(minilm_path() / name, folder / name)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with hf_as_gguf(folder, near=out_dir / "m.gguf") as path:
        from lowbit.io.gguf.reader import read_gguf

        gguf_file = read_gguf(path)
        assert gguf_file.metadata["bert.pooling_type"] == 1  # mean, from 1_Pooling/config.json
        types = {t.name: t.type.name for t in gguf_file.tensors}
        assert types["token_types.weight"] == "F32" and types["blk.0.attn_q.bias"] == "F32"
        tokens = list(gguf_file.metadata["tokenizer.ggml.tokens"])
        assert tokens[0] == "[PAD]" and "\u2581the" in tokens  # WordPiece in phantom-space form
    assert list(out_dir.iterdir()) == []


def test_scratch_folder_of_a_killed_export_is_removed_by_the_next(tmp_path):
    from lowbit import atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".m.gguf.lowbit-tmp-{atomic._HOST}-{dead.pid}-0a1b2c3d"
    stale.mkdir()
    (stale / "f32.gguf").write_bytes(b"half")
    with atomic.scratch_folder(tmp_path / "m.gguf") as scratch:
        assert scratch.is_dir() and not stale.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_llama_hf_tokenizer_and_llama3_rope_convert_as_llama_cpps_converter(tmp_path):
    folder = tiny_llama_folder(tmp_path / "llama")
    mine = convert_hf_folder(folder, tmp_path / "mine.gguf", "f16")
    _assert_same_gguf(mine, _reference_convert(tmp_path, folder, "f16"))
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(mine)
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    assert reader.tensors[0].name == "rope_freqs.weight"


def test_a_cut_safetensors_file_is_one_clear_error(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "bert"
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32)  # fmt: skip
    transformers.BertModel(config).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InvalidInputError, match="damaged or cut"):
        convert_hf_folder(folder, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_a_lowbit_save_folder_is_refused_naming_the_fix(tmp_path):
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    folder = _folder(tmp_path, config, {"manifest.json": b"{}"})
    with pytest.raises(UnsupportedFormatError, match="lowbit save folder"):
        convert_hf_folder(folder, tmp_path / "out.gguf")
