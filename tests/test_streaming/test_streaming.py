"""Streaming quantization (lowbit.streaming): a model folder quantized one block at a time
gives the save folder lowbit.quantize + lowbit.save give in memory, byte for byte."""

from __future__ import annotations

import hashlib

import pytest
import torch
import transformers

import lowbit
from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.io.hf import load_model
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
    "recipe", ["w4a16-g32", "w4a16-g32-gptq", "w4a16-g32-awq", "w8a8-smoothquant"]
)
@pytest.mark.parametrize("spill", [False, True], ids=["in-memory", "spilled"])
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
