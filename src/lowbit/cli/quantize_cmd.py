"""``lowbit quantize``: a model file or folder in, a lowbit save folder out."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.output import print_json, print_table


def quantize_model(
    model: Annotated[str, typer.Argument(help="Hugging Face folder, GGUF file or hub id.")],
    recipe: Annotated[str, typer.Option(help="Preset, e.g. w4a16-g128-gptq, w8a8-dynamic.")],
    out: Annotated[Path, typer.Option(help="Folder to write (replaced atomically).")],
    calib: Annotated[
        Path | None,
        typer.Option(
            help="Calibration text file (default: lowbit's fixed calibration split of Python's "
            "documentation, disjoint from the evaluation split)."
        ),
    ] = None,
    samples: Annotated[int, typer.Option(help="Calibration windows.")] = 128,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 512,
    embeddings: Annotated[
        str | None, typer.Option(help="Also quantize embedding tables per row, e.g. int8.")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads (at least 1).")] = 2,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Quantize MODEL with RECIPE (calibrating on text where the recipe needs it) and save
    it with its tokenizer; `lowbit eval OUT` evaluates the result."""
    import os

    import torch

    import lowbit
    from lowbit.eval.calibration import token_windows
    from lowbit.eval.text import calibration_text, read_text
    from lowbit.export.hf import load_model
    from lowbit.recipes import describe, get_recipe

    if not json:
        os.environ.setdefault("LOWBIT_PROGRESS", "1")
    torch.set_num_threads(threads)
    resolved = get_recipe(recipe)
    if embeddings:
        resolved = resolved.with_embeddings(embeddings)
    loaded = load_model(model)
    started = time.perf_counter()
    needs_data = resolved.spec is not None and (
        resolved.spec.algorithm != "rtn" or resolved.spec.activation.mode == "static"
    )
    batches = None
    if needs_data:
        text = read_text(calib) if calib is not None else calibration_text()
        batches = token_windows(loaded.tokenizer, text, samples=samples, seq_len=seq_len)
    qmodel = lowbit.quantize(loaded.model, resolved, calib_data=batches)
    seconds = time.perf_counter() - started
    folder = lowbit.save(qmodel, out, tokenizer=loaded.tokenizer)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")
    doc = {
        "model": model,
        "recipe": resolved.name,
        "out": str(folder),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_mb),
        "weights_bytes": size,
        "layers": describe(qmodel),
    }
    if json:
        print_json(doc)
        return
    rows = [
        [
            r["module"],
            r.get("weight", r.get("spec", "")),
            r.get("kernel", ""),
            r.get("bits_per_weight", ""),
        ]
        for r in doc["layers"]
    ]
    print_table(
        f"{model} → {folder} ({resolved.name})", ["module", "weight", "kernel", "bits/weight"], rows
    )
    typer.echo(
        f"quantized in {seconds:.1f} s, peak memory {peak_mb:.0f} MB, weights {size / 1e6:.1f} MB"
    )
