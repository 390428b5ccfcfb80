"""``lowbit inspect FILE.gguf``: a GGUF file's tensors, types and metadata, headers only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.output import print_json, print_table
from lowbit.io.gguf import describe, read_gguf


def inspect(
    path: Annotated[Path, typer.Argument(help="A .gguf file (llama.cpp's format).")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of tables.")
    ] = False,
) -> None:
    """Print a GGUF file's metadata summary, totals by type and every tensor (name, type,
    shape, bits per weight), read from its header without loading the weights."""
    doc = describe(read_gguf(path))
    if json_output:
        print_json(doc)
        return
    s = doc["summary"]
    print_table(
        f"{doc['path']}: GGUF v{doc['version']}, {doc['file_bytes']:,} bytes",
        ["key", "value"],
        [
            [k, "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)]
            for k, v in s.items()
        ],
    )
    print_table(
        "tensors by type",
        ["type", "tensors", "elements", "bytes", "bits/weight"],
        [
            [name, str(r["tensors"]), f"{r['elements']:,}", f"{r['bytes']:,}",
             f"{r['bytes'] * 8 / r['elements']:.3f}"]
            for name, r in doc["by_type"].items()
        ],
    )  # fmt: skip
    print_table(
        "metadata",
        ["key", "value"],
        [[k, v if isinstance(v, str) else json.dumps(v)] for k, v in doc["metadata"].items()],
    )
    print_table(
        "tensors",
        ["name", "type", "shape", "bits/weight"],
        [[t["name"], t["type"], "x".join(map(str, t["shape"])), f"{t['bits_per_weight']:.3f}"]
         for t in doc["tensors"]],
    )  # fmt: skip
