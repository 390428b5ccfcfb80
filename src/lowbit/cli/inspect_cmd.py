"""``lowbit inspect``: a GGUF file's tensors, types and metadata (headers only), or a model's
per-layer statistics and sensitivity to each candidate format, as a table, JSON or an HTML
page with plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.output import print_json, print_table
from lowbit.errors import InvalidInputError
from lowbit.io.gguf import describe, read_gguf


def inspect(
    path: Annotated[
        Path,
        typer.Argument(
            help="A .gguf or .onnx file, or a model: a Hugging Face folder, a lowbit save "
            "folder, or digits (the demo CNN)."
        ),
    ],
    calib: Annotated[
        Path | None,
        typer.Option(
            help="Text to measure sensitivities on (default: lowbit's calibration split). A "
            ".gguf file with --calib is inspected as a model too."
        ),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Calibration windows.")] = 8,
    seq_len: Annotated[int, typer.Option(min=8, help="Tokens per window.")] = 512,
    candidates: Annotated[
        str | None,
        typer.Option(help="Formats to score, comma-separated (as lowbit quantize --candidates)."),
    ] = None,
    measure: Annotated[
        str | None,
        typer.Option(
            help="The candidate measured by quantizing each layer alone (one model run per "
            "layer), or none. Default: w4a16-g128, or the first candidate without it."
        ),
    ] = None,
    html: Annotated[
        Path | None, typer.Option(help="Write an HTML page with plots to this file.")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 2,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of tables.")
    ] = False,
) -> None:
    """Print a GGUF file's metadata summary, totals by type and every tensor (read from its
    header without loading the weights); or, for a model, every layer's shape, weight range,
    outlier channels, input range, SQNR in each candidate format and sensitivity."""
    if path.suffix == ".onnx":
        from lowbit.cli.inspect_onnx import inspect_onnx
        from lowbit.recipes.sensitivity import DEFAULT_CANDIDATES

        names = DEFAULT_CANDIDATES if candidates is None else tuple(candidates.split(","))
        inspect_onnx(path, names, json_output)
        return
    if path.suffix != ".gguf" or calib is not None:  # a model, not a file's header
        from lowbit.cli.inspect_model import inspect_model

        options = {"samples": samples, "seq_len": seq_len, "threads": threads}
        inspect_model(path, calib, candidates, measure, html, json_output, options)
        return
    if html is not None:
        raise InvalidInputError(
            "--html draws a model's sensitivities: give --calib TEXT to inspect the GGUF file "
            "as a model, or drop --html"
        )
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
