"""lowbit.save / lowbit.load: a quantized model as a folder of safetensors + a JSON manifest.

Layout of a save folder:
  manifest.json      format version, lowbit version, recipe, one entry per module that
                     differs from the float architecture (its class and JSON metadata), and
                     every file's sha256 and every tensor's dtype and shape (io/manifest.py)
  model.safetensors  quantized modules' tensors under "q.<module>.<key>", every other tensor
                     of the state dict under "f.<key>"; a tensor shared by two modules (an
                     LM head tied to the embedding) is written once, the manifest's
                     "aliases" (float) and "tied" (quantized) name the other keys

Nothing is pickled. Loading needs the float architecture (an instance of the original
model class, weights irrelevant), because Python code is not data: ``load(folder, model)``.
Load checks the folder before it allocates: sizes against the bytes on disk, the files
against the manifest's checksums, the architecture's shapes against the stored tensors.
Writes are atomic (lowbit.atomic): the folder is written under a temporary name and
swapped into place.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

import lowbit
from lowbit.atomic import atomic_folder, recover
from lowbit.errors import InvalidInputError, LowbitError, UnsupportedFormatError
from lowbit.io.inspect import read_safetensors_header
from lowbit.io.manifest import (
    DIGEST_KEY,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    QUANT_MODULES,
    WEIGHTS,
    check_no_link,
    content_digest,
    file_records,
    read_manifest,
    tensor_records,
    verify_content,
    verify_files,
)
from lowbit.io.safetensors_stream import SafetensorsStreamWriter
from lowbit.nn import cast_model
from lowbit.nn.replace import set_module
from lowbit.tensors.base import storage_key


def _structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Modules lowbit put in place: quantized modules, Identity (fused away), fused pairs;
    the model itself (name "") when it is a bare quantized layer."""
    if type(model).__name__ in QUANT_MODULES:
        return {"": {"class": type(model).__name__}}
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
    with atomic_folder(folder) as tmp:
        writer = SaveWriter(tmp)
        writer.add(model)
        writer.finish(model_fields(model), tokenizer=tokenizer)
    return folder


# A quantized layer stores up to two tensors per float one (codes, scale, zero point for a
# weight; the bias as it is), each header entry ~70 bytes beside its name.
_HEADER_ENTRY_BYTES = 100
_HEADER_FIXED_BYTES = 300  # braces, the __metadata__ entry with the manifest's sha256


def header_allowance(model: nn.Module) -> int:
    """An upper bound of the safetensors header ``save`` writes for a quantized copy of the
    float ``model``: what a size budget sets aside beside the tensors' own bytes."""
    names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}  # tied once
    return _HEADER_FIXED_BYTES + sum(2 * (len(n) + _HEADER_ENTRY_BYTES) for n in names.values())


def model_fields(model: nn.Module) -> dict[str, Any]:
    """The manifest fields a quantized model carries: its recipe, float layers, cast dtype
    and (transformers models) architecture."""
    return {
        "recipe": getattr(model, "lowbit_recipe", None),
        "float_layers": getattr(model, "lowbit_float_layers", None),
        "cast_dtype": getattr(model, "lowbit_cast_dtype", None),
        "transformers": _transformers_architecture(model),
    }


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


class SaveWriter:
    """A save folder written part by part into ``tmp`` (an atomic folder's temporary
    folder): ``add`` the model, or its parts one at a time (lowbit.streaming adds a
    transformer block, then frees it), then ``finish`` once. Only the tensors' offsets are
    kept, so the memory is one part's, and the folder is the same whatever the parts."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.weights = SafetensorsStreamWriter(tmp / WEIGHTS)
        self.modules: dict[str, dict[str, Any]] = {}
        self.aliases: dict[str, str] = {}
        self.tied: dict[str, str] = {}

    def add(self, model: nn.Module, prefix: str = "") -> None:
        """Write the tensors of ``model``, which is called ``prefix`` in the whole model
        ("" for the whole model). A tensor shared inside ``model`` is written once; sharing
        between two ``add`` calls is not seen (lowbit.streaming refuses such models)."""
        entries = _structure(model)
        quantized: list[tuple[str, torch.Tensor]] = []
        for name, entry in entries.items():
            if entry["class"] == "Identity":
                continue
            module_tensors, metadata = model.get_submodule(name).to_state()
            entry["metadata"] = metadata
            full = _join(prefix, name)
            quantized += [(f"q.{full}.{key}", t) for key, t in module_tensors.items()]
        # tied weights (an LM head sharing the embedding table) are stored once
        tensors, tied = _store_once(quantized)
        quantized_names = [n for n, e in entries.items() if e["class"] != "Identity"]
        floats, aliases = _store_once(
            (_join(prefix, k), t)
            for k, t in model.state_dict().items()
            if not _inside(k, quantized_names)
        )
        tensors.update({f"f.{key}": t for key, t in floats.items()})
        for key, tensor in tensors.items():
            self.weights.add(key, tensor)
        self.modules.update({_join(prefix, n): e for n, e in entries.items()})
        self.aliases.update(aliases)
        self.tied.update(tied)

    def finish(
        self, fields: dict[str, Any], *, tokenizer: Any = None, order: list[str] | None = None
    ) -> None:
        """Write model.safetensors, the tokenizer and, last, the manifest (a folder with one
        is complete). ``fields``: model_fields(); ``order``: the whole model's module names,
        the order of the manifest's entries when parts were added out of order."""
        modules = self.modules
        if order is not None:
            rank = {name: i for i, name in enumerate(order)}
            modules = dict(sorted(modules.items(), key=lambda kv: rank.get(kv[0], len(rank))))
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "lowbit_version": lowbit.__version__,
            "recipe": fields["recipe"],
            "float_layers": fields["float_layers"],
            "cast_dtype": fields["cast_dtype"],
            "modules": modules,
            "aliases": self.aliases,
            "tied": self.tied,
            "transformers": fields["transformers"],
        }
        # one metadata key: safetensors writes several in a varying order, and the same
        # model must give the same bytes on every save
        self.weights.close({DIGEST_KEY: content_digest(manifest)})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(self.tmp))
        manifest["files"] = file_records(self.tmp)
        manifest["tensors"] = tensor_records(read_safetensors_header(self.tmp / WEIGHTS))
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))


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


def _transformers_skeleton(spec: dict[str, Any], device: str) -> nn.Module:
    """An untrained instance of the saved transformers architecture (weights are loaded
    over it); on the "meta" device it allocates nothing."""
    from lowbit.errors import require

    transformers = require("transformers", "hf")
    cls = getattr(transformers, spec["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise UnsupportedFormatError(
            f"the manifest names {spec['class']!r}, which is not a model class of this "
            "transformers version; upgrade transformers, or restore the folder or save the "
            "model again"
        )
    try:
        config = cls.config_class.from_dict(spec["config"])
        with torch.device(device):
            return cls(config).eval()  # real init: non-persistent buffers (rotary tables) matter
    except Exception as exc:  # transformers validates configs with many exception types
        problem = " ".join(str(exc).split())
        raise InvalidInputError(
            f"the manifest's config cannot build {spec['class']} ({type(exc).__name__}: "
            f"{problem}); "
            "restore the folder or save the model again"
        ) from exc


def _architecture(manifest: dict[str, Any], model: nn.Module | None, device: str) -> nn.Module:
    """The float architecture to fill: a copy of ``model``, or the manifest's transformers
    class, cast like the saved model was."""
    if model is None:
        result = _transformers_skeleton(manifest["transformers"], device)
    else:
        result = copy.deepcopy(model).eval()
    if manifest.get("cast_dtype"):
        dtype = getattr(torch, manifest["cast_dtype"])
        result = cast_model(result, dtype)
    return result


def _mismatch(folder: Path, problem: str) -> InvalidInputError:
    return InvalidInputError(
        f"the architecture does not match the save in {folder}: {problem}; pass an instance "
        "of the model class that was quantized (for a transformers model, restore the folder "
        "or save the model again)"
    )


def _check_architecture(
    folder: Path,
    model: nn.Module,
    manifest: dict[str, Any],
    header: list[tuple[str, str, tuple[int, ...]]],
) -> None:
    """Every tensor the architecture expects is stored, with its shape, before anything is
    allocated for it (``model`` may live on the meta device)."""
    shapes = {name: shape for name, _, shape in header}
    for key, original in manifest.get("tied", {}).items():  # stored once, under `original`
        if original not in shapes:
            problem = f"tensor {original!r}, which {key!r} shares, is not in {WEIGHTS}"
            raise _mismatch(folder, problem)
        shapes[key] = shapes[original]
    quantized = {n: e for n, e in manifest["modules"].items() if e["class"] != "Identity"}
    for name, entry in quantized.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise _mismatch(folder, f"it has no module {name!r}") from None
        weight = getattr(module, "weight", None)
        saved = entry["metadata"].get("weight") or {}
        if not isinstance(saved, dict):
            raise _mismatch(folder, f"the manifest's weight entry of {name!r} is not an object")
        if isinstance(weight, torch.Tensor) and list(weight.shape) != saved.get("shape"):
            raise _mismatch(
                folder, f"{name}.weight is {tuple(weight.shape)}, saved {saved.get('shape')}"
            )
        if getattr(module, "bias", None) is not None and f"q.{name}.bias" not in shapes:
            raise _mismatch(folder, f"tensor 'q.{name}.bias' is not in {WEIGHTS}")
    replaced = list(manifest["modules"])  # their state is lowbit's
    expected = {k: v for k, v in model.state_dict().items() if not _inside(k, replaced)}
    aliases = manifest.get("aliases", {})
    for key, tensor in expected.items():
        stored = shapes.get(f"f.{aliases.get(key, key)}")
        if stored is None:
            raise _mismatch(folder, f"tensor 'f.{key}' is not in {WEIGHTS}")
        if stored != tuple(tensor.shape):
            raise _mismatch(folder, f"{key} is {tuple(tensor.shape)}, {stored} in {WEIGHTS}")
    unexpected = sorted(k for k in shapes if k.startswith("f.") and k[2:] not in expected)
    if unexpected:
        raise _mismatch(folder, f"{WEIGHTS} holds {unexpected[:5]}, which it has no place for")


def load(folder: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a saved quantized model on the float architecture ``model`` (not modified:
    a copy is filled); for transformers models the architecture is in the manifest and
    ``model`` may be omitted. Outputs are bit-identical to the model that was saved.

    Raises:
        InvalidInputError: not a save folder, a damaged or changed one (sizes, checksums,
            tensor table), or an architecture that does not match it.
        UnsupportedFormatError: a format version or a class this lowbit cannot read.
    """
    folder = Path(folder)
    recover(folder)  # a replacement a crash interrupted
    manifest = read_manifest(folder)
    if model is None and manifest.get("transformers") is None:
        raise InvalidInputError(
            f"{folder} holds a plain PyTorch model: pass its architecture, "
            "lowbit.load(folder, MyModel())"
        )
    weights = folder / WEIGHTS
    check_no_link(folder, weights)
    if not weights.is_file():
        raise InvalidInputError(f"{weights} is missing; restore the folder or save the model again")
    header = read_safetensors_header(weights)  # sizes checked against the bytes on disk
    verify_files(folder, manifest, header)
    with safetensors.safe_open(str(weights), "pt") as f:  # a header read; sha256 checked above
        verify_content(folder, manifest, f.metadata() or {})
    if model is None:  # the skeleton is checked on the meta device before it allocates
        _check_architecture(folder, _architecture(manifest, None, "meta"), manifest, header)
    result = _architecture(manifest, model, "cpu")
    _check_architecture(folder, result, manifest, header)
    tensors = safetensors.torch.load_file(str(weights))
    for key, original in manifest.get("tied", {}).items():
        tensors[key] = tensors[original]  # presence checked by _check_architecture
    result = _place_modules(result, manifest["modules"], tensors)
    float_state = {k[2:]: v for k, v in tensors.items() if k.startswith("f.")}
    for key, original in manifest.get("aliases", {}).items():
        if original in float_state:
            float_state[key] = float_state[original]
    result.load_state_dict(float_state, strict=False)
    if manifest.get("recipe") is not None:
        result.lowbit_recipe = manifest["recipe"]  # type: ignore[assignment]
    if manifest.get("float_layers") is not None:
        result.lowbit_float_layers = manifest["float_layers"]  # type: ignore[assignment]
    return result


def _inside(key: str, module_names: list[str]) -> bool:
    """Whether state key ``key`` belongs to one of the named modules ("" is the model)."""
    return any(not name or key.startswith(f"{name}.") for name in module_names)


def _place_modules(
    result: nn.Module, entries: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> nn.Module:
    """``result`` with the saved modules in place (a new object for a bare quantized layer)."""
    for name, entry in entries.items():
        if entry["class"] == "Identity":
            result = set_module(result, name, nn.Identity())
            continue
        prefix = f"q.{name}."
        module_tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module = QUANT_MODULES[entry["class"]].from_state(module_tensors, entry["metadata"])
        except LowbitError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidInputError(
                f"the manifest entry of module {name!r} is damaged ({type(exc).__name__}: "
                f"{exc}); restore the folder or save the model again"
            ) from exc
        result = set_module(result, name, module)
    return result
