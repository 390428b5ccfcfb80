"""``lowbit export --format tflite``: an int8-static CNN as a LiteRT flatbuffer.

MODEL is ``digits``, the built-in demo CNN (``lowbit demo``): trained with seed 0, quantized
with --recipe (default int8-static) on the demo's 512 calibration images, exported, and
checked on the 360 test images (SQNR and accuracy, PyTorch and LiteRT side by side). A
lowbit save folder cannot be MODEL: lowbit rebuilds only transformers architectures from a
folder, not a user's CNN class, so a CNN of your own is exported from Python with
``lowbit.export_tflite(model, example_inputs, path)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lowbit.cli.output import print_json, print_table
from lowbit.errors import InvalidInputError

MODELS = ("digits",)
DEFAULT_RECIPE = "int8-static"


def _quantized_digits(recipe: str) -> tuple[Any, Any]:
    """(the demo CNN quantized with ``recipe`` on the demo's calibration images, the split)."""
    import torch

    from lowbit.demo.digits import load_digits_split, trained_digits_cnn
    from lowbit.demo.run import CALIB_SAMPLES
    from lowbit.recipes import quantize

    split = load_digits_split()
    fp32 = trained_digits_cnn(split, seed=0)
    picks = torch.randperm(len(split.x_train), generator=torch.Generator().manual_seed(0))
    calib = list(split.x_train[picks[:CALIB_SAMPLES]].split(64))
    return quantize(fp32, recipe, calib_data=calib), split


def export_tflite_command(
    model: str, out: Path, *, recipe: str | None, verify: bool, json: bool
) -> None:
    """Build MODEL (``digits``), export it as .tflite, print the result."""
    if model not in MODELS:
        raise InvalidInputError(
            f"--format tflite takes MODEL 'digits' (the built-in demo CNN), got {model!r}; "
            "lowbit save folders rebuild transformers models only, so export a CNN of your own "
            "from Python: lowbit.export_tflite(model, example_inputs, 'model.tflite')"
        )
    if out.suffix != ".tflite":
        raise InvalidInputError(f"--out must name a .tflite file, got {str(out)!r}")
    from lowbit.eval.metrics import accuracy
    from lowbit.export.tflite import export_tflite, run_tflite

    recipe = recipe or DEFAULT_RECIPE
    quantized, split = _quantized_digits(recipe)
    result = export_tflite(quantized, split.x_test, out, verify=verify)
    doc: dict[str, Any] = {
        "model": model,
        "recipe": recipe,
        "out": str(result.path),
        "output_bytes": result.output_bytes,
        "op_counts": result.op_counts,
    }
    if result.verification is not None:
        litert_acc = accuracy(lambda x: run_tflite(result.path, x), split.x_test, split.y_test)
        doc.update(
            sqnr_db=round(result.verification.sqnr_db, 2),
            max_abs_error=result.verification.max_abs_error,
            accuracy_lowbit=accuracy(quantized, split.x_test, split.y_test),
            accuracy_litert=litert_acc,
        )
    if json:
        print_json(doc)
        return
    rows = [[op, n] for op, n in sorted(result.op_counts.items())]
    print_table(f"{result.path.name} ({model}, {recipe})", ["TFLite op", "count"], rows)
    typer.echo(f"{result.output_bytes:,} bytes")
    if result.verification is not None:
        typer.echo(result.verification.detail)
        typer.echo(
            f"test accuracy ({len(split.y_test)} images): lowbit PyTorch "
            f"{doc['accuracy_lowbit']:.2f}%, LiteRT {doc['accuracy_litert']:.2f}%"
        )
