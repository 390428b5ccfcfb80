"""``lowbit export --format onnx``: a lowbit save folder or Hugging Face folder as ONNX."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from lowbit.cli.output import print_json, print_table
from lowbit.errors import InvalidInputError

# The example batch text models are traced and verified on: padded (lengths differ), so the
# graph is checked on the padded-attention path every real batch takes.
EXAMPLE_SENTENCES = (
    "Quantized models run where the runtimes are.",
    "ONNX Runtime, OpenVINO and TensorRT read QDQ graphs.",
    "A short one.",
    "The exporter writes the integer values lowbit chose, and checks the file in ONNX "
    "Runtime against the PyTorch model before putting it in place.",
    "Padding tokens must not change the result.",
    "Hi.",
    "Every batch size and sequence length runs.",
    "Calibration picks the activation ranges of a static model.",
)


@dataclass(frozen=True)
class TextCalibration:
    """--calib (default: lowbit's bundled calibration text), --calib-windows, --seq-len: the
    token windows a calibrated --recipe (GPTQ, AWQ, SmoothQuant, int8-dynamic-smooth,
    static activations) sees, as ``lowbit quantize`` takes them."""

    path: Path | None = None
    windows: int = 128
    seq_len: int = 512

    def batches(self, tokenizer: Any) -> list[Any]:
        from lowbit.eval.calibration import token_windows
        from lowbit.eval.text import calibration_text, read_text

        if tokenizer is None:
            raise InvalidInputError(
                "this recipe calibrates on text and the model has no tokenizer: quantize it "
                "with lowbit.quantize(model, recipe, calib_data=...), lowbit.save it, and "
                "export the saved folder"
            )
        text = read_text(self.path) if self.path is not None else calibration_text()
        return token_windows(tokenizer, text, samples=self.windows, seq_len=self.seq_len)


def _load(model: str, recipe: str | None, calibration: TextCalibration) -> tuple[Any, Any]:
    """(model, tokenizer or None): a lowbit save folder as saved, or a Hugging Face folder,
    quantized with ``recipe`` when given (on ``calibration``'s windows if it calibrates)."""
    from lowbit.io import load, load_model
    from lowbit.io.manifest import MANIFEST

    folder = Path(model)
    if not folder.exists():
        raise InvalidInputError(f"no such file or folder: {model}; check the path")
    if (folder / MANIFEST).is_file():
        if recipe is not None:
            raise InvalidInputError(
                f"{model} is a lowbit save folder, already quantized; drop --recipe (it "
                "quantizes a float Hugging Face folder)"
            )
        return load(folder), _tokenizer(folder)
    loaded = load_model(folder)
    if recipe is None:
        return loaded.model, loaded.tokenizer
    from lowbit.recipes import get_recipe, quantize

    resolved = get_recipe(recipe)
    batches = calibration.batches(loaded.tokenizer) if resolved.needs_calibration else None
    return quantize(loaded.model, resolved, batches), loaded.tokenizer


def _tokenizer(folder: Path) -> Any:
    if not (folder / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _example_inputs(model: Any, tokenizer: Any) -> Any:
    """The tokenizer on the fixed padded batch, keeping the inputs ``model`` takes."""
    from lowbit.export.onnx.api import is_causal_lm

    if is_causal_lm(model):
        return None  # the decoder exporter uses its built-in prompts
    if tokenizer is None:
        raise InvalidInputError(
            "this model has no tokenizer to build example inputs from; export it with the "
            "Python API: lowbit.export_onnx(model, example_inputs, path)"
        )
    batch = tokenizer(list(EXAMPLE_SENTENCES), padding=True, return_tensors="pt")
    params = inspect.signature(model.forward).parameters
    return {k: v for k, v in batch.items() if k in params}


def export_onnx_command(
    model: str, out: Path, *, target: str, opset: int | None, recipe: str | None,
    verify: bool, json: bool, skip: tuple[str, ...] = (),
    calibration: TextCalibration = TextCalibration(),
) -> None:  # fmt: skip
    """Load MODEL (quantizing it with ``recipe`` first if given), export, print the result."""
    from lowbit.export.onnx.api import TARGETS
    from lowbit.export.onnx.runtime import require_onnx, require_onnxruntime

    if out.suffix != ".onnx":
        raise InvalidInputError(f"--out must name a .onnx file, got {out}")
    if target not in TARGETS:
        raise InvalidInputError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    if recipe is not None:
        from lowbit.recipes import get_recipe

        get_recipe(recipe)  # an unknown preset fails before the model is loaded
    require_onnx()
    require_onnxruntime()
    from lowbit.export.onnx import export_onnx
    from lowbit.progress import status

    with status(f"loading {model}"):
        loaded, tokenizer = _load(model, recipe, calibration)
    inputs = _example_inputs(loaded, tokenizer)
    with status(f"exporting to {out}"):
        result = export_onnx(
            loaded, inputs, out, target=target, opset=opset, verify=verify, skip=skip
        )
    check = result.verification
    doc = {
        "model": model,
        "out": str(result.path),
        "kind": result.kind,
        "target": target,
        "recipe": recipe,
        "output_bytes": result.output_bytes,
        "op_counts": result.op_counts,
        "sqnr_db": None if check is None else check.sqnr_db,
        "max_abs_error": None if check is None else check.max_abs_error,
        "same_tokens": None if check is None else check.same_tokens,
        "float_layers": result.float_layers,
    }
    if json:
        print_json(doc)
        return
    rows = [[op, n] for op, n in result.op_counts.items()]
    print_table(f"{result.path.name} ({target})", ["op", "count"], rows)
    typer.echo(f"output {result.output_bytes / 1e6:.2f} MB")
    typer.echo(check.detail if check is not None else "not verified (--no-verify)")
