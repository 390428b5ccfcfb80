"""The manifest.json of a lowbit save folder: what it records, and the checks that make
lowbit.load refuse a folder that was changed or damaged instead of loading it silently.

Format version 2 records, beside the model's structure, every file's sha256 and size
(``files``) and every stored tensor's safetensors dtype and shape (``tensors``); the
weights file's metadata holds the sha256 of the rest of the manifest (``content_digest``),
so a hand edit of a value that still parses (a scale, a shape, the recipe) is refused too. Version 1
folders (no such records) still load, with a LowbitWarning that says to save them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from lowbit.errors import InvalidInputError, LowbitWarning, UnsupportedFormatError
from lowbit.nn import QuantAdd, QuantConv2d, QuantEmbedding, QuantLinear

FORMAT_NAME = "lowbit-model"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
QUANT_MODULES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (QuantLinear, QuantConv2d, QuantAdd, QuantEmbedding)
}
_SAVE_AGAIN = "restore the folder or save the model again"


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in ``folder`` but the manifest, by relative path."""
    return {
        path.relative_to(folder).as_posix(): {"sha256": _sha256(path), "bytes": path.stat().st_size}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_records(header: list[tuple[str, str, tuple[int, ...]]]) -> dict[str, dict[str, Any]]:
    """The ``tensors`` record from a safetensors header: dtype name and shape by tensor name."""
    return {name: {"dtype": dtype, "shape": list(shape)} for name, dtype, shape in header}


def _damaged(path: Path, problem: str) -> InvalidInputError:
    return InvalidInputError(f"{path} is damaged: {problem}; {_SAVE_AGAIN}")


def _check_fields(path: Path, manifest: Any) -> None:
    """The fields load() reads have the types it expects (a hand-edited manifest)."""
    if not isinstance(manifest, dict):
        raise _damaged(path, "not a JSON object")
    modules = manifest.get("modules")
    if not isinstance(modules, dict) or not all(isinstance(e, dict) for e in modules.values()):
        raise _damaged(path, "'modules' is not an object of module entries")
    for name, entry in modules.items():
        cls = entry.get("class")
        if not isinstance(cls, str) or (cls != "Identity" and cls not in QUANT_MODULES):
            raise UnsupportedFormatError(
                f"{path} names an unknown module class {cls!r} for {name!r} (this lowbit knows "
                f"{', '.join(['Identity', *QUANT_MODULES])}); {_SAVE_AGAIN}"
            )
        if cls != "Identity" and not isinstance(entry.get("metadata"), dict):
            raise _damaged(path, f"module {name!r} has no 'metadata' object")
    for field in ("aliases", "tied"):
        names = manifest.get(field, {})
        if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
            raise _damaged(path, f"{field!r} is not an object of tensor names")
    cast = manifest.get("cast_dtype")
    if cast is not None and not (
        isinstance(cast, str)
        and isinstance(getattr(torch, cast, None), torch.dtype)
        and getattr(torch, cast).is_floating_point
    ):
        raise _damaged(path, f"'cast_dtype' {cast!r} is not a torch floating-point type")
    arch = manifest.get("transformers")
    if arch is not None and not (
        isinstance(arch, dict) and isinstance(arch.get("class"), str)
        and isinstance(arch.get("config"), dict)
    ):  # fmt: skip
        raise _damaged(path, "'transformers' is not an object with 'class' and 'config'")


def _check_records(path: Path, manifest: dict[str, Any]) -> None:
    files, tensors = manifest.get("files"), manifest.get("tensors")
    if not isinstance(files, dict) or not all(
        isinstance(r, dict) and isinstance(r.get("sha256"), str) and type(r.get("bytes")) is int
        for r in files.values()
    ):
        raise _damaged(path, "'files' is not an object of sha256 and byte counts")
    for name in files:
        parts = PurePosixPath(name).parts
        if not name or "\\" in name or PurePosixPath(name).is_absolute() or ".." in parts:
            raise InvalidInputError(
                f"{path} names the file {name!r}, which is not inside the save folder (an "
                f"absolute path or '..'); lowbit reads nothing outside it: {_SAVE_AGAIN}"
            )
    if not isinstance(tensors, dict) or not all(
        isinstance(r, dict) and isinstance(r.get("dtype"), str) and isinstance(r.get("shape"), list)
        for r in tensors.values()
    ):
        raise _damaged(path, "'tensors' is not an object of dtypes and shapes")


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a save folder, checked for format, version and field types.

    Raises:
        InvalidInputError: no manifest, or a damaged one.
        UnsupportedFormatError: another format, a version this lowbit cannot read, or an
            unknown module class.
    """
    path = Path(folder) / MANIFEST
    check_no_link(Path(folder), path)
    if not path.is_file():
        raise InvalidInputError(
            f"{folder} is not a lowbit save folder (no {MANIFEST}); save one with lowbit.save"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise UnsupportedFormatError(f"{path} is not a lowbit model manifest")
    version = manifest.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise UnsupportedFormatError(
            f"{folder} has format version {version!r}; this lowbit reads versions 1 and "
            f"{FORMAT_VERSION}: upgrade lowbit (pip install -U lowbit) or save it again"
        )
    _check_fields(path, manifest)
    if version == FORMAT_VERSION:
        _check_records(path, manifest)
    else:
        warnings.warn(
            f"{folder} was saved by an earlier lowbit (format version 1) without checksums, so "
            "changes to its files cannot be detected; save it again to add them: "
            "lowbit.save(lowbit.load(folder), folder)",
            LowbitWarning,
            stacklevel=3,
        )
    return manifest


def verify_files(
    folder: Path, manifest: dict[str, Any], header: list[tuple[str, str, tuple[int, ...]]]
) -> None:
    """The weights' tensor table and every file's size and sha256 are what the manifest
    recorded (format version 2; version 1 records nothing to compare)."""
    if manifest["format_version"] == 1:
        return
    stored, recorded = tensor_records(header), manifest["tensors"]
    for name in sorted(set(recorded) | set(stored)):
        if stored.get(name) != recorded.get(name):
            raise InvalidInputError(
                f"{folder / WEIGHTS} does not match {MANIFEST}: tensor {name!r} is "
                f"{_describe(stored.get(name))} in the file but {_describe(recorded.get(name))} "
                f"in the manifest; the folder was changed after saving: {_SAVE_AGAIN}"
            )
    for name, record in manifest["files"].items():
        path = folder / name
        check_no_link(folder, path)
        if not path.is_file():
            raise InvalidInputError(f"{path} is missing from the save folder; {_SAVE_AGAIN}")
        if path.stat().st_size != record["bytes"] or _sha256(path) != record["sha256"]:
            raise InvalidInputError(
                f"{path} has changed since it was saved (its size or sha256 differs from "
                f"{MANIFEST}); {_SAVE_AGAIN}"
            )


def check_no_link(folder: Path, path: Path) -> None:
    """Refuse ``path`` (inside ``folder``) when it or a folder between them is a symbolic
    link: a save folder holds its own files, and lowbit reads nothing a link points to."""
    at = path
    while at != folder and at != at.parent:
        if at.is_symlink():
            raise InvalidInputError(
                f"{path} is a symbolic link (or lies under one); a save folder holds its own "
                f"files and lowbit follows no link out of it: {_SAVE_AGAIN}"
            )
        at = at.parent


DIGEST_KEY = "lowbit_manifest_sha256"  # in the weights file's safetensors metadata
_RECORDS = ("files", "tensors")  # written after the weights, so not part of the digest


def content_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its file and tensor records, in canonical JSON (the
    same before saving and after a JSON round trip)."""
    content = json.loads(json.dumps({k: v for k, v in manifest.items() if k not in _RECORDS}))
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def verify_content(folder: Path, manifest: dict[str, Any], metadata: dict[str, str]) -> None:
    """The manifest's content is what was saved beside these weights (format version 2)."""
    if manifest["format_version"] == 1:
        return
    if metadata.get(DIGEST_KEY) != content_digest(manifest):
        raise InvalidInputError(
            f"{folder / MANIFEST} was changed after saving: its content no longer matches the "
            f"digest stored in {WEIGHTS}; {_SAVE_AGAIN}"
        )


def _describe(record: dict[str, Any] | None) -> str:
    return "absent" if record is None else f"{record['dtype']} {tuple(record['shape'])}"
