"""lowbit.save / lowbit.load: a quantized model as a folder of safetensors + a JSON manifest.

Layout of a save folder:
  manifest.json      format version, lowbit version, recipe, and one entry per module that
                     differs from the float architecture (its class and JSON metadata)
  model.safetensors  quantized modules' tensors under "q.<module>.<key>", every other tensor
                     of the state dict under "f.<key>"; a tensor shared by two modules (an
                     LM head tied to the embedding) is written once, the manifest's
                     "aliases" (float) and "tied" (quantized) name the other keys

Nothing is pickled. Loading needs the float architecture (an instance of the original
model class, weights irrelevant), because Python code is not data: ``load(folder, model)``.
Writes are atomic: the folder is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

import lowbit
from lowbit.errors import InvalidInputError, UnsupportedFormatError
from lowbit.nn import QuantAdd, QuantConv2d, QuantEmbedding, QuantLinear, cast_model
from lowbit.recipes.fuse import set_module
from lowbit.tensors.base import storage_key

FORMAT_NAME = "lowbit-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
QUANT_MODULES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (QuantLinear, QuantConv2d, QuantAdd, QuantEmbedding)
}


def _structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Modules lowbit put in place: quantized modules, Identity (fused away), fused pairs."""
    entries: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in entries):
            continue
        if type(module).__name__ in QUANT_MODULES:
            entries[name] = {"class": type(module).__name__}
        elif isinstance(module, nn.Identity):
            entries[name] = {"class": "Identity"}
    return entries


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Raise InvalidInputError unless ``save`` can write ``folder``: it is new or an earlier
    lowbit save (any other folder, the source model say, is refused rather than deleted),
    and its nearest existing parent is a folder this process can create files in (tried
    with an empty temporary folder, removed at once). Cheap: run it before slow work."""
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and (folder / MANIFEST).is_file()):
        raise InvalidInputError(
            f"{folder} exists and is not a lowbit save folder; lowbit replaces only its own "
            "saves: choose a new output folder"
        )
    parent = folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidInputError(
            f"cannot write {folder}: {parent} is a file, not a folder; choose another output folder"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    except OSError as exc:
        raise InvalidInputError(
            f"cannot write {folder}: creating files in {parent} failed ({exc.strerror}); "
            "choose an output folder you can write to"
        ) from None
    return folder


def save(model: nn.Module, folder: str | os.PathLike, *, tokenizer: Any = None) -> Path:
    """Write ``model`` (from lowbit.quantize or lowbit.convert) to ``folder`` atomically,
    with ``tokenizer`` (anything with ``save_pretrained``) beside it.

    An existing ``folder`` is replaced only if it is an earlier lowbit save: any other
    folder (the source model, say) is refused rather than deleted.
    """
    folder = check_output_folder(folder)
    entries = _structure(model)
    quantized: list[tuple[str, torch.Tensor]] = []
    for name, entry in entries.items():
        if entry["class"] == "Identity":
            continue
        module_tensors, metadata = model.get_submodule(name).to_state()
        entry["metadata"] = metadata
        quantized += [(f"q.{name}.{key}", t) for key, t in module_tensors.items()]
    # tied weights (an LM head sharing the embedding table) are stored once
    tensors, tied = _store_once(quantized)
    quant_prefixes = tuple(f"{n}." for n, e in entries.items() if e["class"] != "Identity")
    floats, aliases = _store_once(
        (k, t) for k, t in model.state_dict().items() if not k.startswith(quant_prefixes)
    )
    tensors.update({f"f.{key}": t for key, t in floats.items()})
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "lowbit_version": lowbit.__version__,
        "recipe": getattr(model, "lowbit_recipe", None),
        "float_layers": getattr(model, "lowbit_float_layers", None),
        "cast_dtype": getattr(model, "lowbit_cast_dtype", None),
        "modules": entries,
        "aliases": aliases,
        "tied": tied,
        "transformers": _transformers_architecture(model),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        safetensors.torch.save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT_NAME})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        # the manifest last: a folder with one is complete
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if folder.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, backup / "old")
            os.replace(tmp, folder)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _store_once(
    items: Iterable[tuple[str, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors to write (contiguous) and {key: key of the same tensor written earlier} for
    tensors that share storage, shape, stride and dtype with an earlier one."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_of: dict[tuple, str] = {}
    for key, t in items:
        identity = storage_key(t)
        if t.numel() and identity in first_of:
            aliases[key] = first_of[identity]
            continue
        first_of[identity] = key
        unique[key] = t.contiguous()
    return unique, aliases


def _transformers_architecture(model: nn.Module) -> dict[str, Any] | None:
    """For a transformers model: its class name and config, so load() can rebuild the float
    architecture without the user passing it."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    return {"class": type(model).__name__, "config": config.to_dict()}


def _transformers_skeleton(spec: dict[str, Any]) -> nn.Module:
    """An untrained instance of the saved transformers architecture (weights are loaded
    over it)."""
    from lowbit.errors import require

    transformers = require("transformers", "hf")
    cls = getattr(transformers, spec["class"], None)
    if cls is None:
        raise UnsupportedFormatError(
            f"this transformers version has no {spec['class']}; upgrade transformers"
        )
    config = cls.config_class.from_dict(spec["config"])
    return cls(config).eval()  # real init: non-persistent buffers (rotary tables) matter


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a save folder, checked for format and version."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise InvalidInputError(
            f"{folder} is not a lowbit save folder (no {MANIFEST}); save one with lowbit.save"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path} is damaged (not valid JSON: {exc}); save again") from exc
    if manifest.get("format") != FORMAT_NAME:
        raise UnsupportedFormatError(f"{path} is not a lowbit model manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{folder} has format version {version!r}; this lowbit reads version "
            f"{FORMAT_VERSION}: upgrade lowbit (pip install -U lowbit) or save it again"
        )
    return manifest


def load(folder: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a saved quantized model on the float architecture ``model`` (not modified:
    a copy is filled); for transformers models the architecture is in the manifest and
    ``model`` may be omitted. Outputs are bit-identical to the model that was saved."""
    manifest = read_manifest(folder)
    if model is None:
        if manifest.get("transformers") is None:
            raise InvalidInputError(
                f"{folder} holds a plain PyTorch model: pass its architecture, "
                "lowbit.load(folder, MyModel())"
            )
        model = _transformers_skeleton(manifest["transformers"])
    try:
        tensors = safetensors.torch.load_file(str(Path(folder) / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise InvalidInputError(
            f"{Path(folder) / WEIGHTS} is damaged or missing ({exc}); save the model again"
        ) from exc
    for key, original in manifest.get("tied", {}).items():
        if original not in tensors:
            raise InvalidInputError(
                f"{Path(folder) / WEIGHTS} lacks {original!r}, which {key!r} shares; save the "
                "model again"
            )
        tensors[key] = tensors[original]
    result = copy.deepcopy(model).eval()
    if manifest.get("cast_dtype"):
        dtype = getattr(torch, manifest["cast_dtype"])
        result = cast_model(result, dtype)
    try:
        _place_modules(result, manifest["modules"], tensors)
    except AttributeError as exc:
        raise InvalidInputError(
            f"the architecture does not match the save ({exc}); pass an instance of the "
            "model class that was quantized"
        ) from exc
    float_state = {k[2:]: v for k, v in tensors.items() if k.startswith("f.")}
    for key, original in manifest.get("aliases", {}).items():
        if original in float_state:
            float_state[key] = float_state[original]
    missing, unexpected = _load_float_state(result, float_state, manifest["modules"])
    if missing or unexpected:
        raise InvalidInputError(
            f"the architecture does not match the save: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; pass an instance of the model class that was quantized"
        )
    if manifest.get("recipe") is not None:
        result.lowbit_recipe = manifest["recipe"]  # type: ignore[assignment]
    if manifest.get("float_layers") is not None:
        result.lowbit_float_layers = manifest["float_layers"]  # type: ignore[assignment]
    return result


def _place_modules(
    result: nn.Module, entries: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    for name, entry in entries.items():
        cls_name = entry["class"]
        if cls_name == "Identity":
            set_module(result, name, nn.Identity())
            continue
        if cls_name not in QUANT_MODULES:
            raise UnsupportedFormatError(f"unknown module class {cls_name!r} in the manifest")
        prefix = f"q.{name}."
        module_tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        module = QUANT_MODULES[cls_name].from_state(module_tensors, entry["metadata"])
        set_module(result, name, module)


def _load_float_state(
    model: nn.Module, state: dict[str, torch.Tensor], entries: dict[str, Any]
) -> tuple[list[str], list[str]]:
    prefixes = tuple(f"{n}." for n, e in entries.items() if e["class"] != "Identity")
    expected = {k for k in model.state_dict() if not k.startswith(prefixes)}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if not missing and not unexpected:
        model.load_state_dict(state, strict=False)
    return missing, unexpected
