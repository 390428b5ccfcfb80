"""`lowbit eval` as a user runs it: embedding fidelity of the real MiniLM against itself,
perplexity of a small saved causal LM, and the errors a user can make."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import transformers
from typer.testing import CliRunner

from lowbit.cli.main import app, main
from lowbit.errors import LowbitWarning
from lowbit.eval.bundled import minilm_path

runner = CliRunner()


def _minilm() -> str:
    return str(minilm_path())


def test_embedding_fidelity_of_minilm_with_itself_is_one() -> None:
    model = _minilm()
    args = ["eval", model, "--task", "embedding-fidelity", "--reference", model]
    result = runner.invoke(app, [*args, "--chunks", "24", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["cosine_mean"] == doc["cosine_min"] == doc["top10_agreement"] == 1.0
    assert doc["n_texts"] == 24
    assert doc["text"] == "pydoc_data.topics evaluation split"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A tiny random Llama folder with the MiniLM tokenizer (any tokenizer suits a random
    model): config.json, model.safetensors and tokenizer files, as save_pretrained writes."""
    folder = tmp_path_factory.mktemp("lm")
    tokenizer = transformers.AutoTokenizer.from_pretrained(_minilm())
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_perplexity_of_a_saved_model_on_a_text_file(tiny_lm: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("Quantization maps real numbers to a small set of levels. " * 20)
    args = ["eval", str(tiny_lm), "--task", "perplexity", "--text", str(text)]
    result = runner.invoke(app, [*args, "--ctx", "64", "--stride", "32", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_lm)
    assert doc["n_tokens"] == len(tokenizer(text.read_text())["input_ids"]) - 1
    assert doc["perplexity"] == pytest.approx(math.exp(doc["nll"]))
    assert (doc["ctx"], doc["stride"], doc["text"]) == (64, 32, str(text))


def test_perplexity_table_on_the_default_text(tiny_lm: Path) -> None:
    args = ["eval", str(tiny_lm), "--task", "perplexity", "--max-tokens", "300"]
    result = runner.invoke(app, [*args, "--ctx", "128", "--stride", "128"])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.stdout
    assert "pydoc_data.topics evaluation split" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "embedding-fidelity"], "needs --reference"),
        (["--task", "perplexity", "--text", "absent.txt"], "no such text file"),
        (["--task", "perplexity", "--scoring", "best"], "unknown --scoring 'best'"),
    ],
)
def test_user_errors_are_one_line_messages(capsys, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", _minilm(), *args])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_help_names_the_default_text() -> None:
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0
    assert "pydoc_data.topics" in result.stdout


def test_quantize_then_eval_from_the_command_line(tmp_path, tiny_lm) -> None:
    model = _minilm()
    out = tmp_path / "minilm-w8a8"
    result = runner.invoke(
        app,
        [
            "quantize",
            model,
            "--recipe",
            "w8a8-dynamic",
            "--out",
            str(out),
            "--embeddings",
            "int8",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["recipe"] == "w8a8-dynamic" and doc["weights_bytes"] < 30e6  # fp32: 90.9 MB
    assert (out / "tokenizer.json").exists() and (out / "manifest.json").exists()
    args = ["eval", str(out), "--task", "embedding-fidelity", "--reference", model]
    fidelity = json.loads(runner.invoke(app, [*args, "--chunks", "24", "--json"]).stdout)
    assert 0.99 < fidelity["cosine_mean"] < 1.0

    gptq = tmp_path / "lm-gptq"
    with pytest.warns(LowbitWarning, match="only 4 samples"):
        result = runner.invoke(
            app,
            [
                "quantize",
                str(tiny_lm),
                "--recipe",
                "w4a16-g32-gptq",
                "--out",
                str(gptq),
                "--samples",
                "4",
                "--seq-len",
                "32",
                "--json",
            ],
        )
    assert result.exit_code == 0, result.output
    layers = {row["module"]: row for row in json.loads(result.stdout)["layers"]}
    assert layers["model.layers.0.self_attn.q_proj"]["weight"].startswith("int4")
    assert layers["model.embed_tokens"]["weight"].startswith("int8")  # the LLM default


def test_quantize_refuses_to_overwrite_its_input(tiny_lm) -> None:
    result = runner.invoke(
        app, ["quantize", str(tiny_lm), "--recipe", "w8a16", "--out", str(tiny_lm)]
    )
    assert result.exit_code != 0
    assert (tiny_lm / "config.json").exists() and (tiny_lm / "model.safetensors").exists()


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """A tiny random BERT-like encoder folder with the MiniLM tokenizer."""
    folder = tmp_path_factory.mktemp("encoder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(_minilm())
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=128,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("recipe", ["fp16", "bf16"])
def test_cast_presets_evaluate_from_the_command_line(tmp_path, tiny_lm, tiny_encoder, recipe):
    lm, encoder = tmp_path / "lm", tmp_path / "encoder"
    for source, out in ((tiny_lm, lm), (tiny_encoder, encoder)):
        args = ["quantize", str(source), "--recipe", recipe, "--out", str(out), "--json"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    args = ["eval", str(lm), "--task", "perplexity", "--max-tokens", "200", "--ctx", "64"]
    result = runner.invoke(app, [*args, "--stride", "64", "--json"])
    assert result.exit_code == 0, result.output
    assert math.isfinite(json.loads(result.stdout)["perplexity"])
    args = ["eval", str(encoder), "--task", "embedding-fidelity", "--reference", str(tiny_encoder)]
    result = runner.invoke(app, [*args, "--chunks", "24", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cosine_mean"] > 0.99


def test_perplexity_of_an_encoder_is_refused(capsys, tmp_path, tiny_encoder) -> None:
    saved = tmp_path / "encoder-int8"
    result = runner.invoke(
        app, ["quantize", str(tiny_encoder), "--recipe", "int8-dynamic", "--out", str(saved)]
    )
    assert result.exit_code == 0, result.output
    for model in (_minilm(), str(saved)):
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", model, "--task", "perplexity", "--max-tokens", "64"])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert "not a causal language model (architectures: BertModel)" in err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in err  # the other line: "loading ..."


def test_quantize_prints_sizes_and_warns_when_the_output_is_not_smaller(
    tiny_lm: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["quantize", str(tiny_lm), "--recipe", "w8a16", "--out", str(tmp_path / "q")]
    )
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("input ") and "(32.0" in line and "x the input" in line, line
    assert "warning" not in result.output
    bf16 = tmp_path / "bf16"  # a bf16 model cast to fp16 gains nothing
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm, dtype="bfloat16")
    model.save_pretrained(bf16)
    transformers.AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(bf16)
    args = ["quantize", str(bf16), "--recipe", "fp16", "--out", str(tmp_path / "f"), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        "warning: the output" in result.stderr and "is not smaller than the input" in result.stderr
    )
    doc = json.loads(result.stdout)
    assert doc["weights_bytes"] >= doc["input_bytes"] and 15 < doc["bits_per_weight"] < 17
