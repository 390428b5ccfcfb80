"""Load real transformer models: a Hugging Face folder, a GGUF file, or a hub id.

transformers does the loading (it knows every architecture); lowbit decides which auto class
to use, refuses pickled checkpoints, and turns transformers' errors into messages that say
what to do. Weights are loaded in float32 by default: the fp32 model is the reference that
quantized models are measured against.

- A folder: ``config.json`` + ``*.safetensors`` (``use_safetensors=True``: a folder that only
  holds ``pytorch_model.bin`` is refused, because unpickling can run arbitrary code).
- A ``.gguf`` file: transformers dequantizes its tensors to float (needs ``gguf`` and
  ``accelerate``); its tokenizer is read from the same file.
- Anything else that looks like ``owner/name``: ``from_pretrained(repo_id)`` on the hub.

transformers, tokenizers and accelerate are optional (``pip install 'lowbit[hf]'``) and are
imported only when a model is loaded.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lowbit.atomic import recover
from lowbit.errors import InvalidInputError, LowbitError, UnsupportedFormatError, require
from lowbit.io.inspect import folder_safetensors, read_safetensors_header

logger = logging.getLogger(__name__)

Task = Literal["auto", "causal-lm", "embedding"]
TASKS = ("auto", "causal-lm", "embedding")
# Architectures whose name ends like this are language models (LlamaForCausalLM,
# GPT2LMHeadModel); anything else loads as a bare encoder through AutoModel.
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to evaluate.

    Attributes:
        model: the ``nn.Module`` in eval mode (a transformers model).
        tokenizer: its tokenizer, or None when the source ships none (token ids still work).
        kind: "causal-lm" (logits over the vocabulary) or "embedding" (hidden states).
        source: where it came from: "hf-folder", "gguf" (transformers, float), "gguf-lowbit"
            (lowbit.load_gguf), "lowbit" or "hub".
    """

    model: nn.Module
    tokenizer: Any
    kind: str
    source: str


def _auto_class(transformers: Any, kind: str) -> Any:
    return transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel


class TaskMismatchError(InvalidInputError):
    """The model cannot do the task asked for (an encoder asked for perplexity)."""


def _kind(architectures: list[str], task: str, source: str) -> str:
    """The task asked for, or for "auto" the kind the config's ``architectures`` name. A
    causal LM task on a model whose architectures name no language model is refused:
    transformers would add a randomly initialised head and every score would be noise."""
    causal = any(str(a).endswith(_CAUSAL_SUFFIXES) for a in architectures)
    if task == "causal-lm" and architectures and not causal:
        raise TaskMismatchError(
            f"{source} is not a causal language model (architectures: "
            f"{', '.join(map(str, architectures))}), so it cannot score perplexity: its "
            "language-model head would be random. Use --task embedding-fidelity for an "
            "encoder, or pass a *ForCausalLM model"
        )
    if task != "auto":
        return task
    return "causal-lm" if causal else "embedding"


def _folder_architectures(folder: Path) -> list[str]:
    config = folder / "config.json"
    try:
        return json.loads(config.read_text()).get("architectures") or []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise InvalidInputError(
            f"{config} is not a readable model config ({exc}); download the model folder again"
        ) from None


# Any of these in a local folder means it ships a tokenizer (fast, sentencepiece or BPE).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model",
    "vocab.json", "vocab.txt", "merges.txt",
)  # fmt: skip


def _load_tokenizer(transformers: Any, source: str, **kwargs: Any) -> Any:
    folder = Path(source)
    ships_none = not any((folder / name).is_file() for name in TOKENIZER_FILES)
    if "gguf_file" not in kwargs and folder.is_dir() and ships_none:
        # transformers 4.x would otherwise try to build one from the config's class and fail
        # on a missing sentencepiece/protobuf instead of saying there is none.
        logger.warning("no tokenizer files in %s; pass token ids instead of text", source)
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        # A folder of weights alone (no tokenizer files) is still usable with token ids;
        # KeyError: transformers' GGUF vocabulary reader on a vocabulary without scores.
        logger.warning(
            "no tokenizer loaded from %s (%s); pass token ids instead of text", source, exc
        )
        return None


def _from_pretrained(cls: Any, source: str, what: str, **kwargs: Any) -> nn.Module:
    """cls.from_pretrained without transformers' weight-loading bars (lowbit reports its own
    progress; a stray bar on stderr would break the one-line error contract). The GGUF
    loader's bar ("Converting and de-quantizing GGUF tensors") is a plain tqdm that the
    progress switch does not reach, so stderr is set aside while a GGUF file loads."""
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    quiet = redirect_stderr(io.StringIO()) if "gguf_file" in kwargs else nullcontext()
    try:
        with quiet:
            model = cls.from_pretrained(source, **kwargs)
    except (ValueError, KeyError) as exc:
        raise UnsupportedFormatError(
            f"transformers cannot load {what} ({type(exc).__name__}: {exc}); check that the "
            "architecture is supported by the installed transformers (pip install -U "
            "transformers) and that task matches the model"
        ) from exc
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return model.eval()


def _load_folder(folder: Path, task: str, dtype: torch.dtype) -> LoadedModel:
    if (folder / "manifest.json").is_file():
        return _load_lowbit_save(folder, task)
    if not (folder / "config.json").is_file():
        raise InvalidInputError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder; pass a "
            "folder saved with save_pretrained, or a .gguf file"
        )
    # refuses pickle-only and weightless folders with the fix, and damaged or lying headers
    # before transformers allocates what they claim
    for file in folder_safetensors(folder):
        read_safetensors_header(file)
    kind = _kind(_folder_architectures(folder), task, str(folder))
    transformers = require("transformers", "hf")
    model = _from_pretrained(
        _auto_class(transformers, kind), str(folder), str(folder), use_safetensors=True, dtype=dtype
    )
    return LoadedModel(model, _load_tokenizer(transformers, str(folder)), kind, "hf-folder")


def load_skeleton(folder: Path, task: Task = "auto") -> LoadedModel:
    """The model of a Hugging Face folder or a GGUF file with its parameters on the meta
    device (no weight read or allocated; buffers such as rotary tables are real) and its
    tokenizer: the frame that lowbit.streaming fills one block at a time."""
    transformers = require("transformers", "hf")
    accelerate = require("accelerate", "hf")
    gguf = {}
    if folder.suffix == ".gguf" and folder.is_file():
        from lowbit.io.gguf import read_gguf

        read_gguf(folder)  # a damaged header fails here with the fix
        kind = "causal-lm" if task == "auto" else task
        gguf = {"gguf_file": folder.name}
        folder = folder.parent
    elif not (folder / "config.json").is_file():
        raise InvalidInputError(
            f"{folder} has no config.json; streaming needs a Hugging Face model folder "
            "(config.json + safetensors) or a GGUF file"
        )
    else:
        for file in folder_safetensors(folder):
            read_safetensors_header(file)
        kind = _kind(_folder_architectures(folder), task, str(folder))
    with _gguf_parsed_once() if gguf else nullcontext():
        return _skeleton(transformers, accelerate, folder, kind, gguf)


def _skeleton(
    transformers: Any, accelerate: Any, folder: Path, kind: str, gguf: dict[str, str]
) -> LoadedModel:
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), **gguf)
        with accelerate.init_empty_weights(include_buffers=False):
            model = _auto_class(transformers, kind).from_config(config, dtype=torch.float32)
        # from_pretrained ties after loading; inside init_empty_weights a tie would register
        # a new empty parameter instead of sharing
        model.tie_weights()
    except (ValueError, KeyError) as exc:
        raise UnsupportedFormatError(
            f"transformers cannot build the model of {folder} ({type(exc).__name__}: {exc}); "
            "check that the installed transformers supports its architecture"
        ) from exc
    model.config.dtype = torch.float32  # as from_pretrained(dtype=float32) records it
    tokenizer = _load_tokenizer(transformers, str(folder), **gguf)
    return LoadedModel(model.eval(), tokenizer, kind, "gguf" if gguf else "hf-folder")


def _load_lowbit_save(folder: Path, task: str) -> LoadedModel:
    """A folder written by ``lowbit quantize`` / ``lowbit.save`` of a transformers model (its
    tokenizer saved beside it)."""
    from lowbit.io.manifest import read_manifest
    from lowbit.io.save import load

    architecture = read_manifest(folder).get("transformers")
    if architecture is None:
        raise UnsupportedFormatError(
            f"{folder} is a lowbit save of a plain PyTorch model; load it in Python with "
            "lowbit.load(folder, MyModel())"
        )
    transformers = require("transformers", "hf")
    kind = _kind([architecture["class"]], task, str(folder))
    return LoadedModel(load(folder), _load_tokenizer(transformers, str(folder)), kind, "lowbit")


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within one load, each GGUF file is parsed once and gguf's tensor-name map built once.

    transformers' GGUF loader parses the whole file (every vocabulary string) for the config,
    again for the tokenizer and again for the weights, and builds gguf's TensorNameMap once
    per submodule: 397 times for SmolLM2. Measured on SmolLM2-135M: 23 s per load, of which
    these repeats were about half. transformers imports both names from the gguf module at
    call time, so swapping them there for the duration of the load reaches every call. GGUF
    loads in several threads take turns (a lock): interleaved swaps could leave one load's
    memo installed for good. Each parse runs over a plain ndarray (``gguf_py``: 3x faster).
    """
    import gguf

    from lowbit.io.gguf.gguf_py import plain_array_reader

    with _GGUF_SWAP:
        reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
        readers: dict[tuple[str, str], Any] = {}

        def read_once(path: str | os.PathLike[str], mode: str = "r") -> Any:
            key = (os.path.realpath(path), mode)
            if key not in readers:
                readers[key] = plain_array_reader(reader_class)(path, mode)
            return readers[key]

        gguf.GGUFReader = read_once
        gguf.get_tensor_name_map = functools.cache(name_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


_GGUF_SWAP = threading.Lock()


def _load_gguf(path: Path, task: str, dtype: torch.dtype, gguf_weights: str) -> LoadedModel:
    require("gguf", "gguf")
    with _gguf_parsed_once():
        return _load_gguf_parsed_once(path, task, dtype, gguf_weights)


def _load_gguf_parsed_once(
    path: Path, task: str, dtype: torch.dtype, gguf_weights: str
) -> LoadedModel:
    transformers = require("transformers", "hf")
    from lowbit.io.gguf import load_gguf, read_gguf
    from lowbit.io.gguf.load import ARCHITECTURES

    # A cut or inflated header fails here with the fix, not in transformers.
    arch = read_gguf(path).metadata.get("general.architecture")
    # GGUF files of llama.cpp are language models; "embedding" loads the bare decoder.
    kind = "causal-lm" if task == "auto" else task
    folder, name = str(path.parent), path.name
    if gguf_weights == "lowbit" and kind == "causal-lm" and arch in ARCHITECTURES:
        model = load_gguf(path, dtype=dtype)
        tokenizer = _load_tokenizer(transformers, folder, gguf_file=name)
        return LoadedModel(model, tokenizer, kind, "gguf-lowbit")
    require("accelerate", "hf")  # transformers' GGUF loader needs it
    model = _from_pretrained(
        _auto_class(transformers, kind), folder, str(path), gguf_file=name, dtype=dtype
    )
    return LoadedModel(model, _load_tokenizer(transformers, folder, gguf_file=name), kind, "gguf")


def _load_hub(repo_id: str, task: str, dtype: torch.dtype) -> LoadedModel:
    transformers = require("transformers", "hf")
    try:
        config = transformers.AutoConfig.from_pretrained(repo_id)
        kind = _kind(getattr(config, "architectures", None) or [], task, repo_id)
        model = _from_pretrained(
            _auto_class(transformers, kind), repo_id, repo_id, use_safetensors=True, dtype=dtype
        )
        tokenizer = _load_tokenizer(transformers, repo_id)
    except OSError as exc:
        raise LowbitError(
            f"{repo_id!r} is not a local file or folder, and loading it from the Hugging Face "
            "Hub failed: the hub is unreachable or the repository does not exist "
            f"({' '.join(str(exc).split())}). "
            "Download the model and pass its local folder (or .gguf file) instead"
        ) from exc
    return LoadedModel(model, tokenizer, kind, "hub")


def load_model(
    path: str | Path,
    *,
    task: Task = "auto",
    dtype: torch.dtype = torch.float32,
    gguf_weights: Literal["float", "lowbit"] = "float",
) -> LoadedModel:
    """Load a transformer model and its tokenizer for evaluation.

    Args:
        path: a Hugging Face model folder (config.json + safetensors), a ``.gguf`` file, or a
            hub id such as ``"HuggingFaceTB/SmolLM2-135M"`` (needs network access).
        task: "causal-lm" (AutoModelForCausalLM), "embedding" (AutoModel: hidden states), or
            "auto": causal-lm when config.json's architectures name a language model
            (``*ForCausalLM``, ``*LMHeadModel``) or the file is GGUF, else embedding.
        dtype: the floating-point type of the loaded weights (float32: the reference).
        gguf_weights: for a llama-family ``.gguf`` language model, "lowbit" loads it with
            ``lowbit.load_gguf`` (Q8_0/Q4_0/Q4_1 linear weights stay quantized, run on
            lowbit's kernels: the model as stored); "float" (default) lets transformers
            dequantize every tensor (a float model, e.g. to quantize with a recipe).

    Raises:
        InvalidInputError: the path does not exist, or the folder is not a model folder.
        UnsupportedFormatError: pickled weights only, a lowbit save folder, an unknown file
            type, or an architecture transformers cannot load.
        MissingDependencyError: transformers (or gguf/accelerate for GGUF) is not installed.
        LowbitError: a hub id that cannot be fetched (offline, or no such repository).
    """
    if task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    local = Path(path)
    recover(local)  # a lowbit save folder whose replacement a crash interrupted
    if local.is_dir():
        loaded = _load_folder(local, task, dtype)
    elif local.is_file():
        if local.suffix != ".gguf":
            raise UnsupportedFormatError(
                f"{local} is not a model lowbit can load ({local.suffix or 'no extension'}); "
                "pass a Hugging Face model folder or a .gguf file"
            )
        loaded = _load_gguf(local, task, dtype, gguf_weights)
    elif isinstance(path, str) and _HUB_ID.match(path) and not path.endswith(".gguf"):
        loaded = _load_hub(path, task, dtype)
    else:
        raise InvalidInputError(f"no such file or folder: {path}; check the path")
    logger.info("loaded %s model from %s (%s)", loaded.kind, path, loaded.source)
    return loaded
