"""``lowbit compare``: several recipes on the user's model and data, side by side with the
original: a table, and an HTML report with the quality-vs-size plot and its Pareto front."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lowbit.cli.output import print_json, print_table
from lowbit.errors import InvalidInputError

DIGITS_CALIB = 512  # training images the static recipes calibrate on


def _digits() -> tuple[Any, Any, list[Any]]:
    """The demo CNN (trained, seeded), its accuracy task and calibration batches."""
    from lowbit.demo.digits import load_digits_split, trained_digits_cnn
    from lowbit.reports.compare import accuracy_task

    split = load_digits_split()
    model = trained_digits_cnn(split)
    calib = list(split.x_train[:DIGITS_CALIB].split(64))
    return model, accuracy_task(split.x_test, split.y_test), calib


def _transformer(model: str, data: Path | None, calib: Path | None, options: dict) -> tuple:
    """A Hugging Face folder or GGUF file, its task (perplexity for a causal LM, embedding
    fidelity for an encoder) on ``data`` and its calibration windows."""
    from lowbit.eval.calibration import token_windows
    from lowbit.eval.text import calibration_text, evaluation_text, read_text, text_chunks
    from lowbit.io.hf import load_model
    from lowbit.progress import status
    from lowbit.reports.compare import embedding_task, perplexity_task

    text = read_text(data) if data is not None else evaluation_text()
    with status(f"loading {model}"):
        loaded = load_model(model)
    if loaded.kind == "causal-lm":
        task = perplexity_task(
            loaded.tokenizer, text, ctx=options["ctx"], max_tokens=options["max_tokens"]
        )
    else:
        task = embedding_task(loaded.model, loaded.tokenizer, text_chunks(text, options["texts"]))
    calib_text = read_text(calib) if calib is not None else calibration_text()
    windows = token_windows(loaded.tokenizer, calib_text, samples=options["samples"],
                            seq_len=options["seq_len"])  # fmt: skip
    return loaded.model, task, windows


def compare(
    model: Annotated[
        str,
        typer.Argument(
            help="digits (the demo CNN on sklearn's digits), a Hugging Face folder or a GGUF "
            "file (a causal LM: perplexity; an encoder: embedding fidelity)."
        ),
    ],
    recipes: Annotated[
        str, typer.Option(help="Recipes to compare, comma-separated (presets, e.g. w8a16,nf4).")
    ],
    data: Annotated[
        Path | None,
        typer.Option(help="Text to evaluate on (default: lowbit's evaluation split)."),
    ] = None,
    calib: Annotated[
        Path | None, typer.Option(help="Calibration text (default: lowbit's calibration split).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for report.md, report.json and report.html.")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Calibration windows.")] = 32,
    seq_len: Annotated[int, typer.Option(min=8, help="Tokens per calibration window.")] = 512,
    max_tokens: Annotated[
        int, typer.Option(min=2, help="Perplexity: score the first N tokens of the text.")
    ] = 8192,
    ctx: Annotated[int, typer.Option(min=2, help="Perplexity: tokens per window.")] = 512,
    texts: Annotated[int, typer.Option(min=11, help="Embedding fidelity: texts to embed.")] = 256,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 2,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Quantize MODEL with each recipe and measure every result beside the original: the
    quality metric, the size, the time to quantize, and which rows form the size/quality
    Pareto front; with --out, an HTML report with the plot."""
    from lowbit.recipes import get_recipe

    names = [r.strip() for r in recipes.split(",") if r.strip()]
    if not names:
        raise InvalidInputError("--recipes needs at least one recipe, e.g. w8a16,w4a16-g128")
    for name in names:
        get_recipe(name)
    if out is not None and out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; give a folder for the report")
    import torch

    from lowbit.reports.compare import compare as run_compare

    torch.set_num_threads(threads)
    if model == "digits":
        float_model, task, batches = _digits()
    elif Path(model).exists():
        options = {"samples": samples, "seq_len": seq_len, "max_tokens": max_tokens}
        options.update(texts=texts, ctx=ctx)
        float_model, task, batches = _transformer(model, data, calib, options)
    else:
        raise InvalidInputError(f"{model} does not exist; give digits, a model folder or a .gguf")
    report = run_compare(
        float_model, names, task, batches, title=f"lowbit compare {Path(model).name}"
    )
    written = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot = {"x": "bytes", "y": task.metric, "label": "recipe", "xlabel": "bytes (log scale)",
                "ylabel": task.metric, "front": "pareto"}  # fmt: skip
        written = report.write(out, plot=plot)
    if json:
        print_json({**report.to_json(), "files": [str(p) for p in written]})
        return
    print_table(report.title, [c.header for c in report.columns], report.cells())
    for note in report.notes:
        typer.echo(note)
    if written:
        typer.echo(f"wrote {', '.join(str(p) for p in written)}")
