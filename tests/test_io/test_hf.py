"""load_model: real Hugging Face folders (all-MiniLM-L6-v2, a tiny saved Llama), what it
refuses (pickles, lowbit saves, unknown files), and hub ids that cannot be reached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowbit.errors import InvalidInputError, LowbitError, UnsupportedFormatError
from lowbit.eval.bundled import minilm_path as _minilm
from lowbit.io.hf import LoadedModel, load_model
from lowbit_testkit.models import tiny_llama


def _tiny_llama(folder: Path) -> torch.nn.Module:
    model = tiny_llama(vocab_size=64, num_attention_heads=2)
    model.save_pretrained(folder)
    return model


def test_minilm_folder_loads_as_an_embedding_model() -> None:
    loaded = load_model(_minilm())
    assert isinstance(loaded, LoadedModel)
    assert (loaded.kind, loaded.source) == ("embedding", "hf-folder")
    assert type(loaded.model).__name__ == "BertModel"
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    ids = loaded.tokenizer(["a sentence"], return_tensors="pt")
    hidden = loaded.model(**ids).last_hidden_state
    assert hidden.shape[-1] == 384


def test_saved_causal_lm_folder_loads_as_causal_lm_with_same_weights(tmp_path: Path) -> None:
    original = _tiny_llama(tmp_path)
    loaded = load_model(tmp_path)
    assert (loaded.kind, loaded.source) == ("causal-lm", "hf-folder")
    assert loaded.tokenizer is None  # the folder holds weights only
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, original(ids).logits)


def test_task_overrides_the_config(tmp_path: Path) -> None:
    _tiny_llama(tmp_path)
    loaded = load_model(tmp_path, task="embedding")
    assert loaded.kind == "embedding"
    assert type(loaded.model).__name__ == "LlamaModel"


def test_pickle_only_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(UnsupportedFormatError, match="safetensors"):
        load_model(tmp_path)


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidInputError, match=r"config\.json"):
        load_model(tmp_path)


def test_lowbit_save_folders_load_or_say_why(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(UnsupportedFormatError, match="not a lowbit model manifest"):
        load_model(tmp_path)


def test_quantized_save_of_a_transformers_model_loads(tmp_path: Path) -> None:

    import lowbit

    qmodel = lowbit.quantize(tiny_llama(architectures=["LlamaForCausalLM"]), "w8a16")
    folder = lowbit.save(qmodel, tmp_path / "q")
    loaded = load_model(folder)
    assert (loaded.kind, loaded.source, loaded.tokenizer) == ("causal-lm", "lowbit", None)
    ids = torch.randint(0, 96, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, qmodel(ids).logits)


@pytest.mark.parametrize("name", ["model.pt", "weights.safetensors", "notes.txt"])
def test_files_other_than_gguf_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(UnsupportedFormatError, match=r"folder or a \.gguf"):
        load_model(tmp_path / name)


def test_missing_path_and_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        load_model(tmp_path / "absent.gguf")
    with pytest.raises(InvalidInputError, match="unknown task"):
        load_model(tmp_path, task="classification")  # type: ignore[arg-type]


def test_unreachable_hub_id_says_to_pass_a_local_folder(monkeypatch) -> None:
    # Offline mode makes the real hub call fail at once (without it: DNS retries).
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(LowbitError, match=r"hub is unreachable.*local folder") as info:
        load_model("lowbit-tests/no-such-model")
    assert isinstance(info.value.__cause__, OSError)


def test_an_encoder_loaded_as_a_causal_lm_is_refused() -> None:
    from lowbit.io.hf import TaskMismatchError

    with pytest.raises(TaskMismatchError, match="random"):
        load_model(_minilm(), task="causal-lm")
