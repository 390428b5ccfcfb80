"""lowbit.save / lowbit.load: bit-identical round trips, atomic writes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.errors import InvalidInputError, UnsupportedFormatError
from lowbit.io import load, save
from lowbit.recipes import quantize
from lowbit_testkit.models import tiny_llama
from lowbit_testkit.saves import write_consistent_manifest


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    ).eval()


CALIB = [torch.randn(32, 1, 6, 6, generator=torch.Generator().manual_seed(2)) for _ in range(4)]


@pytest.mark.parametrize(
    "preset", ["int8-static", "int8-dynamic", "w4a16-g32", "nf4", "ternary", "bf16"]
)
def test_round_trip_is_bit_identical(tmp_path, preset) -> None:
    qmodel = quantize(_model(), preset, calib_data=CALIB)
    folder = save(qmodel, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.safetensors"]
    loaded = load(folder, _model())
    x = torch.randn(5, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(qmodel(x), loaded(x))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == preset


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path) -> None:
    qmodel = quantize(_model(), "int8-dynamic")
    save(qmodel, tmp_path / "m")
    save(qmodel, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_damaged_or_foreign_folders(tmp_path) -> None:
    qmodel = quantize(_model(), "int8-dynamic")
    folder = save(qmodel, tmp_path / "m")
    with pytest.raises(InvalidInputError, match="not a lowbit save folder"):
        load(tmp_path, _model())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 7
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedFormatError, match="format version 7"):
        load(folder, _model())
    manifest["format_version"] = 2
    (folder / "manifest.json").write_text(json.dumps(manifest))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match="truncated"):
        load(folder, _model())
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load(folder, _model())


def test_wrong_architecture_is_refused(tmp_path) -> None:
    folder = save(quantize(_model(), "int8-dynamic"), tmp_path / "m")
    other = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Linear(3, 3))
    with pytest.raises(InvalidInputError, match="architecture does not match"):
        load(folder, other)


def test_transformers_model_reloads_without_passing_the_architecture(tmp_path) -> None:
    model = tiny_llama()
    qmodel = quantize(model, "w4a16-g32")
    folder = save(qmodel, tmp_path / "llama")
    loaded = load(folder)
    ids = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        assert torch.equal(qmodel(ids).logits, loaded(ids).logits)
    with pytest.raises(InvalidInputError, match="pass its architecture"):
        load(save(quantize(_model(), "int8-dynamic"), tmp_path / "plain"))


def test_tied_weights_are_stored_once(tmp_path) -> None:
    from lowbit.recipes import get_recipe

    model = tiny_llama(num_hidden_layers=1, tie_word_embeddings=True)
    qmodel = quantize(model, get_recipe("w8a16").with_embeddings(None))  # table, head float
    folder = save(qmodel, tmp_path / "tied")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    loaded = load(folder)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.randint(0, 96, (1, 6))
    with torch.no_grad():
        assert torch.equal(qmodel(ids).logits, loaded(ids).logits)


def test_a_quantized_tied_table_is_stored_once_and_stays_tied(tmp_path) -> None:
    """Issue 11: the tied LM head was quantized apart from its (fp32) table and stored twice."""
    import safetensors

    model = tiny_llama(num_hidden_layers=1, tie_word_embeddings=True, vocab_size=4096)
    qmodel = quantize(model, "w4a16-g32")  # embeddings int8 per row, the head with them
    assert qmodel.lm_head.weight is qmodel.model.embed_tokens.weight
    folder = save(qmodel, tmp_path / "tied")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["tied"] == {
        "q.lm_head.weight.packed": "q.model.embed_tokens.weight.packed",
        "q.lm_head.weight.scale": "q.model.embed_tokens.weight.scale",
    }
    with safetensors.safe_open(folder / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lm_head" in k]  # noqa: SIM118 (no __iter__)
    table = 4096 * 32  # int8 codes of the table, once
    assert (folder / "model.safetensors").stat().st_size < table * 1.5
    loaded = load(folder)
    head, embed = loaded.lm_head.weight.tensors(), loaded.model.embed_tokens.weight.tensors()
    assert all(head[k].data_ptr() == embed[k].data_ptr() for k in embed)
    ids = torch.randint(0, 4096, (1, 6))
    with torch.no_grad():
        assert torch.equal(qmodel(ids).logits, loaded(ids).logits)
    again = save(loaded, tmp_path / "again")
    assert json.loads((again / "manifest.json").read_text())["tied"] == manifest["tied"]


def test_a_tie_to_a_tensor_that_is_not_stored_is_refused(tmp_path) -> None:
    model = tiny_llama(num_hidden_layers=1, tie_word_embeddings=True)
    folder = save(quantize(model, "w4a16-g32"), tmp_path / "tied")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tied"] = {k: "q.nowhere" for k in manifest["tied"]}
    write_consistent_manifest(folder, manifest)  # past the digest: the tie check must catch it
    with pytest.raises(InvalidInputError, match=r"'q\.nowhere', which .* shares, is not in"):
        load(folder)


def test_a_folder_that_is_not_a_lowbit_save_is_never_replaced(tmp_path) -> None:
    source = tmp_path / "my-model"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"precious")
    with pytest.raises(InvalidInputError, match="not a lowbit save folder"):
        save(quantize(_model(), "int8-dynamic"), source)
    assert (source / "model.safetensors").read_bytes() == b"precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="not a lowbit save folder"):
        save(quantize(_model(), "int8-dynamic"), tmp_path / "file")


def test_tokenizer_is_written_inside_the_atomic_save(tmp_path) -> None:
    class Tokenizer:
        def save_pretrained(self, folder: str) -> None:
            assert not (Path(folder) / "manifest.json").exists()  # written before the manifest
            (Path(folder) / "tokenizer.json").write_text("{}")

    folder = save(quantize(_model(), "int8-dynamic"), tmp_path / "m", tokenizer=Tokenizer())
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "tokenizer.json",
    ]


def test_a_quantized_embedding_keeps_its_padding_idx(tmp_path) -> None:
    """Issue 12: save/load of a QuantEmbedding lost padding_idx."""
    from lowbit.recipes import get_recipe

    model = nn.Sequential(nn.Embedding(100, 16, padding_idx=0), nn.Linear(16, 4)).eval()
    qmodel = quantize(model, get_recipe("w8a16").with_embeddings("int8"))
    assert qmodel[0].padding_idx == 0
    loaded = load(
        save(qmodel, tmp_path / "m"), model=nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 4))
    )
    assert loaded[0].padding_idx == 0


def test_the_same_model_saves_to_the_same_bytes(tmp_path) -> None:
    """Determinism: two saves of one model are byte-identical (the weights' header included)."""
    qmodel = quantize(tiny_llama(num_hidden_layers=1), "w4a16-g32")
    files = [save(qmodel, tmp_path / f"run{i}") / "model.safetensors" for i in range(4)]
    assert len({f.read_bytes() for f in files}) == 1
