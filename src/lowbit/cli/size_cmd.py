"""``lowbit size``: the size of a model in every storage format, from a count or its files."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer

from lowbit.cli.output import print_json, print_table
from lowbit.formats.size import size_table
from lowbit.io.inspect import ModelFileInfo, count_parameters

# Suffixes people write parameter counts with ("7B", "350M"); decimal, like the sizes.
_COUNT_SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
# Far above any model (the largest have ~2e12); larger counts are typos such as 1e400.
MAX_PARAMS = 10**15
_UNITS = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3))


def parse_count(text: str) -> int:
    """A positive whole parameter count, at most MAX_PARAMS, from "176e9", "7000000000",
    "1.5e9", "7B" or "350M"."""
    s = text.strip().replace("_", "").replace(",", "")
    scale = _COUNT_SUFFIXES.get(s[-1:].upper(), 1)
    if scale != 1:
        s = s[:-1]
    try:
        value = Decimal(s) * scale
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value < 1 or value != value.to_integral_value():
        raise typer.BadParameter(
            f"{text!r} is not a positive whole number of parameters; write e.g. 176e9, "
            "7000000000 or 7B",
            param_hint="--params",
        )
    if value > MAX_PARAMS:
        raise typer.BadParameter(
            f"{text!r} is more parameters than any model has; write a count of at most "
            f"{MAX_PARAMS:.0e}, e.g. 176e9 or 7B",
            param_hint="--params",
        )
    return int(value)


def human_size(nbytes: int) -> str:
    """Bytes in decimal units with 3 significant digits: 704 GB, 90.8 GB, 250 MB."""
    for unit, scale in _UNITS:
        if nbytes >= scale:
            value = nbytes / scale
            decimals = max(0, 2 - int(math.log10(value)))
            return f"{value:.{decimals}f} {unit}"
    return f"{nbytes} B"


def _file_document(info: ModelFileInfo) -> dict[str, Any]:
    return {
        "path": str(info.path),
        "format": info.format,
        "bytes_on_disk": info.bytes_on_disk,
        "n_tensors": info.n_tensors,
        "bits_per_weight": info.bits_per_weight,
        "files": [str(f) for f in info.files],
        "dtypes": info.dtypes,
    }


def size(
    path: Annotated[
        Path | None,
        typer.Argument(help="A .safetensors file, a .gguf file or a Hugging Face model folder."),
    ] = None,
    params: Annotated[
        str | None,
        typer.Option("--params", help="A parameter count instead of a path: 176e9, 7B, ..."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of a table.")
    ] = False,
) -> None:
    """Print the size of a model in every format (fp32 ... 1-bit), scales included.

    Give a parameter count (--params 176e9) or a model file or folder:
    its parameters are counted from headers, and its size on disk is added.
    """
    if (path is None) == (params is None):
        raise typer.BadParameter(
            "give exactly one of a model PATH or --params COUNT, e.g. `lowbit size --params 7e9` "
            "or `lowbit size model.safetensors`"
        )
    info = count_parameters(path) if path is not None else None
    n_params = info.n_params if info is not None else parse_count(params)
    rows = size_table(n_params)
    if json_output:
        document: dict[str, Any] = {
            "n_params": n_params,
            "formats": [
                {
                    "name": r.name,
                    "bits_per_weight": r.bits_per_weight,
                    "bytes": r.bytes,
                    "note": r.note,
                }
                for r in rows
            ],
        }
        if info is not None:
            document["file"] = _file_document(info)
        print_json(document)
        return
    table = [
        [r.name, f"{r.bits_per_weight:g}", f"{r.bytes:,}", human_size(r.bytes), r.note]
        for r in rows
    ]
    title = f"{n_params:,} parameters in every format (sizes in decimal units: 1 GB = 1e9 bytes)"
    if info is not None:
        dtypes = ", ".join(f"{k} {v / info.n_params:.0%}" for k, v in info.dtypes.items())
        table.append(
            [
                f"on disk ({info.format})",
                f"{info.bits_per_weight:.3f}",
                f"{info.bytes_on_disk:,}",
                human_size(info.bytes_on_disk),
                f"{info.n_tensors} tensors in {len(info.files)} file(s): {dtypes}",
            ]
        )
        title = f"{info.path}: {title}"
    print_table(title, ["format", "bits/weight", "bytes", "size", "note"], table)
