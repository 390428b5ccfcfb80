"""``lowbit inspect MODEL``: per-layer statistics and sensitivities of a model (a Hugging Face
folder or a GGUF file read as a model), or the per-layer formats of a lowbit save folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from lowbit.cli.output import print_json, print_table
from lowbit.errors import InvalidInputError

SQNR_SHOWN = 3  # candidates whose SQNR the terminal table shows (all are in --json/--html)


def _lowbit_folder(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.json").is_file()


def _saved_rows(path: Path, json_output: bool) -> None:
    """A lowbit save folder: each layer's stored format, and the mixed-precision plan's
    sensitivities when the folder has one."""
    from lowbit.cli.quantize_cmd import MIXED_FILE
    from lowbit.io.hf import load_model
    from lowbit.recipes import describe

    rows = describe(load_model(str(path)).model)
    plan_file = path / MIXED_FILE
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else None
    if json_output:
        print_json({"path": str(path), "layers": rows, "mixed_precision": plan})
        return
    table = [
        [r["module"], r["type"], r["weight"], r["kernel"], r.get("bits_per_weight") or "",
         r.get("reason", "")]
        for r in rows
    ]  # fmt: skip
    head = ["module", "type", "weight", "kernel", "bits/weight", "float because"]
    print_table(str(path), head, table)
    if plan is not None:
        typer.echo(f"mixed precision: the plan and every layer's sensitivity are in {plan_file}")


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.2e}" if abs(value) < 0.01 else f"{value:.3g}"


def _print_report(title: str, doc: dict[str, Any], reference: str) -> None:
    shown = [c for c in doc["candidates"] if c != "float"][:SQNR_SHOWN]
    rows = []
    for layer in doc["layers"]:
        opts = layer["options"]
        ref = opts.get(reference, {})
        rows.append(
            [layer["name"], "x".join(map(str, layer["shape"])), f"{layer['params']:,}",
             f"{layer['outlier_ratio']:.1f}",
             *(_number(opts[c]["sqnr_db"]) if c in opts else "-" for c in shown),
             _number(ref.get("estimate")), _number(ref.get("measured"))]
        )  # fmt: skip
    head = ["layer", "shape", "params", "outliers", *(f"SQNR {c}" for c in shown),
            f"D est. {reference}", f"D meas. {reference}"]  # fmt: skip
    print_table(title, head, rows, min_width=160)
    what = "mean KL per position" if doc["distance"] == "kl" else "relative squared error"
    typer.echo(
        f"D: the model's output change ({what}) with only that layer quantized; estimated from "
        "gradients for every candidate, measured for one. --json has every candidate."
    )


def _digits(samples: int) -> tuple[Any, list[Any]]:
    """The demo CNN (trained, seeded) and ``samples`` batches of 64 training images."""
    from lowbit.demo.digits import load_digits_split, trained_digits_cnn

    split = load_digits_split()
    return trained_digits_cnn(split), list(split.x_train.split(64))[:samples]


def _transformer(path: Path, calib: Path | None, options: dict[str, int]) -> tuple[Any, list]:
    """A Hugging Face folder or GGUF file and its calibration windows."""
    from lowbit.eval.calibration import token_windows
    from lowbit.eval.text import calibration_text, read_text
    from lowbit.io.hf import load_model
    from lowbit.progress import status

    text = read_text(calib) if calib is not None else calibration_text()
    with status(f"loading {path}"):
        loaded = load_model(str(path))
    windows = token_windows(
        loaded.tokenizer, text, samples=options["samples"], seq_len=options["seq_len"]
    )
    return loaded.model, windows


def inspect_model(
    path: Path,
    calib: Path | None,
    candidates: str | None,
    measure: str | None,
    html: Path | None,
    json_output: bool,
    options: dict[str, int],
) -> None:
    """Measure and print (or write) the sensitivity report of the model at ``path``."""
    from lowbit.recipes.sensitivity import DEFAULT_CANDIDATES, parse_candidates

    if not path.exists() and str(path) != "digits":
        raise InvalidInputError(
            f"{path} does not exist; give a model folder, a .gguf file or digits"
        )
    if _lowbit_folder(path):
        _saved_rows(path, json_output)
        return
    names = DEFAULT_CANDIDATES if candidates is None else tuple(candidates.split(","))
    parse_candidates(names)
    if measure is None:
        measure = "w4a16-g128" if "w4a16-g128" in names else names[0]
    measured = None if measure == "none" else measure
    if measured is not None and measured not in names:
        raise InvalidInputError(f"--measure {measure!r} is not one of the candidates {names}")
    import torch

    from lowbit.recipes.sensitivity import layer_weights, measure_sensitivity

    torch.set_num_threads(options["threads"])
    if str(path) == "digits":
        model, batches = _digits(options["samples"])
    else:
        model, batches = _transformer(path, calib, options)
    report = measure_sensitivity(model, batches, names, measure=measured)
    doc = report.to_dict()
    if html is not None:
        from lowbit.atomic import atomic_write_text
        from lowbit.reports.sensitivity import sensitivity_html

        page = sensitivity_html(f"lowbit inspect {path.name}", doc, layer_weights(model))
        atomic_write_text(html, page)
    if json_output:
        print_json({"path": str(path), **doc})
        return
    from lowbit.reports.sensitivity import reference_candidate

    _print_report(f"{path}: per-layer sensitivity", doc, reference_candidate(doc))
    if html is not None:
        typer.echo(f"wrote {html}")
