"""Streaming quantization (lowbit.streaming): a model folder quantized one block at a time
gives the save folder lowbit.quantize + lowbit.save give in memory, byte for byte."""

from __future__ import annotations

import hashlib
import json

import pytest
import safetensors.torch
import torch
import transformers

import lowbit
from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.io.hf import load_model
from lowbit.io.manifest import MANIFEST, WEIGHTS
from lowbit.streaming import parse_size, quantize_folder
from lowbit.streaming import quantize as streaming
from lowbit_testkit.models import tiny_llama_folder

pytestmark = pytest.mark.filterwarnings("ignore:calibration data holds only")


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def bf16_folder(request, tmp_path_factory):
    """A llama folder in bfloat16, in several safetensors shards."""
    src = tiny_llama_folder(
        tmp_path_factory.mktemp("src"),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        tie_word_embeddings=request.param,
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    folder = tmp_path_factory.mktemp("bf16")
    model.save_pretrained(folder, max_shard_size="60KB")
    transformers.AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    assert len(list(folder.glob("*.safetensors"))) > 2
    return folder


def _batches(n: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 280, (1, 16), generator=g) for _ in range(n)]


def _digests(folder) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("recipe", "spill"),
    [
        ("w4a16-g32", False),
        ("w4a16-g32-gptq", True),
        ("w4a16-g32-awq", False),
        ("w8a8-smoothquant", True),
    ],
    ids=["rtn", "gptq-spilled", "awq", "smoothquant-spilled"],
)
def test_streamed_folder_equals_the_in_memory_one(
    bf16_folder, tmp_path, monkeypatch, recipe, spill
) -> None:
    calibrated = recipe != "w4a16-g32"
    batches = _batches() if calibrated else None
    loaded = load_model(bf16_folder)
    qmodel = lowbit.quantize(loaded.model, recipe, calib_data=batches)
    lowbit.save(qmodel, tmp_path / "memory", tokenizer=loaded.tokenizer)
    budget = 2 * 10**5 if spill else None  # a tiny budget spills every activation to disk
    if spill:  # the blocks are larger than that budget
        monkeypatch.setattr(streaming, "_check_budget", lambda *a: None)
    quantize_folder(bf16_folder, recipe, tmp_path / "stream", calib_data=batches, max_memory=budget)
    assert _digests(tmp_path / "stream") == _digests(tmp_path / "memory")
    assert not list(tmp_path.glob(".*"))  # no temporary folder or activation file left
    reloaded = lowbit.load(tmp_path / "stream")
    ids = batches[0] if batches else _batches(1)[0]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, qmodel(ids).logits)


@pytest.mark.parametrize("recipe", ["w4a16-g32", "w4a16-g32-gptq"])
def test_a_gguf_file_streams_to_the_in_memory_folder(bf16_folder, tmp_path, recipe) -> None:
    """A llama GGUF file (transformers dequantizes it in memory; streaming dequantizes one
    tensor at a time with gguf-py and lowbit's q/k un-permutation): the same folder."""
    from lowbit.io.gguf.convert import convert_hf_folder

    gguf = convert_hf_folder(bf16_folder, tmp_path / "m.gguf", "f16")
    batches = _batches() if recipe.endswith("gptq") else None
    loaded = load_model(gguf)
    qmodel = lowbit.quantize(loaded.model, recipe, calib_data=batches)
    lowbit.save(qmodel, tmp_path / "memory", tokenizer=loaded.tokenizer)
    quantize_folder(gguf, recipe, tmp_path / "stream", calib_data=batches, max_memory=10**9)
    stream, memory = (
        safetensors.torch.load_file(tmp_path / f / WEIGHTS) for f in ("stream", "memory")
    )
    assert stream.keys() == memory.keys()
    assert all(torch.equal(stream[k], memory[k]) for k in stream)
    # transformers' GGUF loader records quantization_config={"quant_method": "gguf", ...} in
    # the config it loads; the streamed skeleton, built from the GGUF metadata, does not.
    manifests = [json.loads((tmp_path / f / MANIFEST).read_text()) for f in ("stream", "memory")]
    for m in manifests:
        m["transformers"]["config"].pop("quantization_config", None)
        del m["files"]  # their sha256 cover the safetensors metadata, the manifest's digest
    assert manifests[0] == manifests[1]


def test_a_block_larger_than_the_budget_is_refused_before_any_work(bf16_folder, tmp_path) -> None:
    with pytest.raises(InvalidInputError, match=r"needs about .* more than --max-memory"):
        quantize_folder(bf16_folder, "w4a16-g32", tmp_path / "out", max_memory=10_000)
    assert not (tmp_path / "out").exists()


def test_static_recipes_are_refused(bf16_folder, tmp_path) -> None:
    with pytest.raises(InvalidSpecError, match="static"):
        quantize_folder(bf16_folder, "int8-static", tmp_path / "out", calib_data=_batches())


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GB", 2 * 10**9), ("1.5 GiB", int(1.5 * 2**30)), ("800mb", 8 * 10**8), ("123", 123)],
)
def test_sizes_read_as_users_write_them(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "2XB", "-1GB", "0", "GB"])
def test_unreadable_sizes_name_the_form(text) -> None:
    with pytest.raises(InvalidInputError, match="2GB"):
        parse_size(text)


def _lowbit_quantize(*args: str) -> dict:
    import json
    import subprocess
    import sys

    cli = [sys.executable, "-m", "lowbit.cli.main", "quantize", *args, "--json"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_peak_memory_stays_within_the_budget_above_the_baseline(tmp_path) -> None:
    """A 62M-parameter llama (250 MB in float32) quantized under --max-memory 200MB: the peak
    resident memory exceeds that of the same command on a 2-block toy model (the
    Python/torch/transformers baseline) by less than the budget."""
    from lowbit_testkit.synthetic import synthetic_llama_folder

    shape = {"heads": 8, "kv_heads": 2}
    toy = synthetic_llama_folder(
        tmp_path / "toy", hidden=64, intermediate=128, layers=2, vocab=512, **shape
    )
    big = synthetic_llama_folder(
        tmp_path / "big", hidden=512, intermediate=1536, layers=16, vocab=8192, **shape
    )
    args = ["--recipe", "w4a16-g128", "--max-memory", "200MB"]
    baseline = _lowbit_quantize(str(toy), *args, "--out", str(tmp_path / "toy-q"))
    streamed = _lowbit_quantize(str(big), *args, "--out", str(tmp_path / "big-q"))
    assert streamed["max_memory_bytes"] == 200 * 10**6
    assert streamed["bits_per_weight"] < 4.5
    above = streamed["peak_rss_mb"] - baseline["peak_rss_mb"]
    assert above < 200, (streamed["peak_rss_mb"], baseline["peak_rss_mb"])


def test_max_memory_needs_a_folder_or_a_gguf_file(tmp_path) -> None:
    import subprocess
    import sys

    pt = tmp_path / "m.pt"
    pt.write_bytes(b"not a model")
    cli = [sys.executable, "-m", "lowbit.cli.main", "quantize", str(pt), "--recipe"]
    for extra, message in [
        (["w4a16-g128", "--max-memory", "2GB"], "Hugging Face folder"),
        (["w4a16-g128", "--max-memory", "lots"], "2GB"),
    ]:
        done = subprocess.run(
            [*cli, *extra, "--out", str(tmp_path / "o")], capture_output=True, text=True
        )
        assert done.returncode != 0 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_model_too_big_for_memory_streams_without_being_asked(
    bf16_folder, tmp_path, monkeypatch, capsys
):
    """No --max-memory, and the model would not fit in the machine's default budget:
    lowbit quantize streams it within that budget (here a default shrunk to 1 MB)."""
    import lowbit.streaming
    from lowbit.cli.main import main

    monkeypatch.setattr(lowbit.streaming, "default_max_memory", lambda: 10**6)
    monkeypatch.setattr(streaming, "_check_budget", lambda *a: None)
    before = torch.get_num_threads()
    try:
        main(["quantize", str(bf16_folder), "--recipe", "w4a16-g32", "--json", "--out",
              str(tmp_path / "auto")])  # fmt: skip
    finally:
        torch.set_num_threads(before)
    captured = capsys.readouterr()
    assert json.loads(captured.out)["max_memory_bytes"] == 10**6
    assert "quantizing one block at a time" in captured.err
