"""``lowbit quantize``: a model file or folder in, a lowbit save folder out.

Every option and the output folder are checked before the model is read, so a mistake
costs a second, not a load and a GPTQ run (issue 11)."""

from __future__ import annotations

import json as json_module
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from lowbit.cli.output import print_json, print_table
from lowbit.errors import InvalidInputError


@dataclass(frozen=True)
class _Checked:
    """What the cheap checks produced: the recipe, the calibration text, the input's size."""

    recipe: Any
    text: str | None
    input_bytes: int | None
    stream_budget: int | None  # bytes: quantize one block at a time within this budget
    mixed: Any = None  # a lowbit.recipes.mixed.Budget: choose a format per layer


@dataclass(frozen=True)
class MixedOptions:
    """The mixed-precision options as given on the command line."""

    target_bpw: float | None = None
    target_size: str | None = None
    max_loss: str | None = None
    candidates: str | None = None  # comma-separated; None: lowbit's default set
    sensitivity_samples: int = 16

    def candidate_names(self) -> tuple[str, ...]:
        from lowbit.recipes.sensitivity import DEFAULT_CANDIDATES

        return DEFAULT_CANDIDATES if self.candidates is None else tuple(self.candidates.split(","))

    def budget(self) -> Any:
        """The Budget they name, or None when none is given (checked: one at most)."""
        from lowbit.recipes.mixed import Budget, parse_loss
        from lowbit.streaming import parse_size

        given = [self.target_bpw, self.target_size, self.max_loss]
        if all(v is None for v in given):
            return None
        return Budget(
            max_bytes=None if self.target_size is None else parse_size(self.target_size),
            bits_per_weight=self.target_bpw,
            max_loss=None if self.max_loss is None else parse_loss(self.max_loss),
        )


MIXED_FILE = "mixed_precision.json"  # the plan and the sensitivities, beside the weights

# The in-memory path holds the float32 model, its copy being quantized and the result.
IN_MEMORY_FACTOR = 2.5


def _check(
    model: str,
    recipe: str,
    out: Path,
    calib: Path | None,
    numbers: dict[str, int],
    embeddings: str | None,
    max_memory: str | None,
    mixed: MixedOptions,
) -> _Checked:
    """Every check that needs no model: raises a LowbitError before anything slow runs."""
    from lowbit.eval.text import calibration_text, read_text
    from lowbit.io.inspect import count_parameters
    from lowbit.io.save import check_output_folder
    from lowbit.recipes import get_recipe

    for name, value in numbers.items():
        if value < 1:
            raise InvalidInputError(f"--{name} must be at least 1, got {value}")
    resolved = get_recipe(recipe)
    if embeddings is not None:
        resolved = resolved.with_embeddings(embeddings)
    check_output_folder(out)
    budget = mixed.budget()
    if budget is not None:
        from lowbit.recipes.mixed import check_mixed_base
        from lowbit.recipes.sensitivity import parse_candidates

        check_mixed_base(resolved)
        parse_candidates(mixed.candidate_names())
        if max_memory is not None:
            raise InvalidInputError(
                "mixed precision measures every layer's sensitivity with the whole model in "
                "memory; drop --max-memory, or give a uniform recipe without --target-*"
            )
    needs_data = resolved.needs_calibration or budget is not None
    text = None
    if needs_data:
        text = read_text(calib) if calib is not None else calibration_text()
    elif calib is not None:
        read_text(calib)  # a wrong path is a mistake even where the recipe does not calibrate
    budget_memory = _stream_budget(model, max_memory, None) if max_memory is not None else None
    info = count_parameters(model) if Path(model).exists() else None
    stream = budget_memory
    if stream is None and budget is None:
        stream = _stream_budget(model, None, info.n_params if info else None)
    return _Checked(resolved, text, info.bytes_on_disk if info else None, stream, budget)


def _stream_budget(model: str, max_memory: str | None, n_params: int | None) -> int | None:
    """The budget to stream within: --max-memory when given (an HF folder only), else the
    machine's default when the model would not fit in it in memory; None: in memory."""
    from lowbit.streaming import default_max_memory, parse_size
    from lowbit.streaming.memory import format_size

    path = Path(model)
    folder = path.is_dir() and (path / "config.json").is_file()
    folder = folder or (path.is_file() and path.suffix == ".gguf")
    if max_memory is not None:
        budget = parse_size(max_memory)
        if not folder:
            raise InvalidInputError(
                f"--max-memory streams weights from a Hugging Face folder (config.json + "
                f"safetensors) or a GGUF file, and {model} is neither; download the model "
                "as such a folder, or drop --max-memory"
            )
        return budget
    budget = default_max_memory()
    if folder and n_params is not None and IN_MEMORY_FACTOR * 4 * n_params > budget:
        typer.echo(
            f"the model needs about {format_size(IN_MEMORY_FACTOR * 4 * n_params)} in memory, "
            f"more than {format_size(budget)} (3/4 of RAM): quantizing one block at a time",
            err=True,
        )
        return budget
    return None


def _size_line(input_bytes: int | None, output_bytes: int, n_params: int) -> str:
    """ "input 98.4 MB → output 84.0 MB (0.85x), 4.99 bits per weight"."""
    bits = 8 * output_bytes / n_params
    if input_bytes is None:
        return f"output {output_bytes / 1e6:.1f} MB, {bits:.2f} bits per weight"
    return (
        f"input {input_bytes / 1e6:.1f} MB ({8 * input_bytes / n_params:.2f} bits per weight) "
        f"→ output {output_bytes / 1e6:.1f} MB ({bits:.2f} bits per weight), "
        f"{output_bytes / input_bytes:.2f}x the input"
    )


def _mixed_line(plan: Any, folder: Path) -> str:
    """What the mixed-precision search chose and how close it came to its budget."""
    counts: dict[str, int] = {}
    for choice in plan.allocation.choices.values():
        counts[choice.name] = counts.get(choice.name, 0) + 1
    chosen = ", ".join(f"{n} x{k}" for n, k in sorted(counts.items(), key=lambda kv: -kv[1]))
    line = f"mixed precision (knapsack over estimated sensitivities): {chosen}"
    if plan.loss_budget is not None:
        verdict = "within" if plan.measured_loss <= plan.loss_budget else "OVER"
        line += (
            f"; output change measured {plan.measured_loss:.3g} {verdict} the budget "
            f"{plan.loss_budget:.3g} (round-to-nearest, {plan.rounds} round(s))"
        )
    return line + f"; every layer's sensitivity in {folder / MIXED_FILE}"


def _calibration(tokenizer: Any, checked: _Checked, windows: dict[str, int]) -> Any:
    from lowbit.eval.calibration import token_windows

    if checked.text is None:
        return None
    return token_windows(tokenizer, checked.text, **windows)


def _plan_mixed(loaded: Any, batches: list[Any], checked: _Checked, mixed: MixedOptions) -> Any:
    """Measure every layer's sensitivity on the first calibration windows and choose a format
    per layer under the budget (lowbit.recipes.mixed)."""
    from lowbit.io.save import header_allowance
    from lowbit.recipes.mixed import plan_mixed
    from lowbit.recipes.sensitivity import measure_sensitivity

    sample = batches[: mixed.sensitivity_samples]
    report = measure_sensitivity(loaded.model, sample, mixed.candidate_names())
    header = header_allowance(loaded.model)  # the budget is the weights file's size
    plan = plan_mixed(
        loaded.model, report, checked.recipe, checked.mixed, sample, overhead_bytes=header
    )
    return plan, report


def _quantize_in_memory(
    model: str, out: Path, checked: _Checked, windows: dict[str, int], mixed: MixedOptions
) -> tuple[Path, float, list[dict[str, Any]], int, Any] | None:
    """Load, quantize, save: (folder, seconds, layer rows, parameters), or None in a
    process of a torchrun group that does not write."""
    import lowbit
    from lowbit.io.hf import load_model
    from lowbit.observers.processes import join_from_environment, leave, rank
    from lowbit.progress import status
    from lowbit.recipes import describe

    with status(f"loading {model}"):
        loaded = load_model(model)
    started = time.perf_counter()
    batches = _calibration(loaded.tokenizer, checked, windows)
    several = join_from_environment()  # under torchrun: calibration is split over processes
    recipe, plan = checked.recipe, None
    if checked.mixed is not None:
        plan, report = _plan_mixed(loaded, batches, checked, mixed)
        recipe = plan.recipe
    qmodel = lowbit.quantize(loaded.model, recipe, calib_data=batches)
    seconds = time.perf_counter() - started
    if several:
        writer = rank() == 0
        leave()
        if not writer:
            return None  # every process holds the same model; the first one writes it
    folder = lowbit.save(qmodel, out, tokenizer=loaded.tokenizer)
    if plan is not None:
        from lowbit.atomic import atomic_write_text

        document = {"plan": plan.to_dict(), "sensitivity": report.to_dict()}
        atomic_write_text(folder / MIXED_FILE, json_module.dumps(document, indent=1))
    n_params = sum(p.numel() for p in loaded.model.parameters())  # tied tensors once
    return folder, seconds, describe(qmodel), n_params, plan


def _quantize_streamed(
    model: str, out: Path, checked: _Checked, windows: dict[str, int]
) -> tuple[Path, float, list[dict[str, Any]], int, None]:
    """lowbit.streaming.quantize_folder: one block in memory at a time."""
    from lowbit.io.hf import load_skeleton
    from lowbit.recipes import describe
    from lowbit.streaming import quantize_folder

    skeleton = load_skeleton(Path(model))
    started = time.perf_counter()
    batches = _calibration(skeleton.tokenizer, checked, windows)
    folder = quantize_folder(
        model,
        checked.recipe,
        out,
        calib_data=batches,
        max_memory=checked.stream_budget,
        tokenizer=skeleton.tokenizer,
    )
    seconds = time.perf_counter() - started
    n_params = sum(p.numel() for p in skeleton.model.parameters())
    return folder, seconds, describe(skeleton.model, checked.recipe), n_params, None


def quantize_model(
    model: Annotated[str, typer.Argument(help="Hugging Face folder, GGUF file or hub id.")],
    recipe: Annotated[
        str,
        typer.Option("--recipe", "--preset", help="Preset, e.g. w4a16-g128-gptq, w8a8-dynamic."),
    ],
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
        str | None,
        typer.Option(
            help="Embedding tables (and an LM head tied to them): a per-row format such as "
            "int8 or int4, or float to keep them float. Default: the recipe's (int8 for "
            "weight-only presets, float for the others)."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads (at least 1).")] = 2,
    max_memory: Annotated[
        str | None,
        typer.Option(
            help="Memory budget, e.g. 2GB: read, quantize and write one transformer block at "
            "a time (an HF folder or a llama GGUF file; calibration activations spill to disk "
            "beyond a quarter of it). Default: done when the model would not fit in 3/4 of RAM."
        ),
    ] = None,
    target_bpw: Annotated[
        float | None,
        typer.Option(
            help="Mixed precision: choose a format per layer (from --candidates) so that the "
            "whole model takes at most this many bits per weight, with the least estimated "
            "output change. RECIPE (weight-only) gives the algorithm."
        ),
    ] = None,
    target_size: Annotated[
        str | None,
        typer.Option(help="Mixed precision within a size, e.g. 60MB (weights and float rest)."),
    ] = None,
    max_loss: Annotated[
        str | None,
        typer.Option(
            help="Mixed precision: the smallest model whose output changes at most this much, "
            "e.g. 1% (logits: mean KL within ln 1.01; other outputs: relative squared error)."
        ),
    ] = None,
    candidates: Annotated[
        str | None,
        typer.Option(
            help="Mixed precision: the formats a layer may take, weight-only presets and float, "
            "comma-separated (default: w8a16,w4a16-g32,w4a16-g128,w3a16-g128,w2a16-g64,float)."
        ),
    ] = None,
    sensitivity_samples: Annotated[
        int, typer.Option(help="Mixed precision: calibration windows for the sensitivities.")
    ] = 16,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Quantize MODEL with RECIPE (calibrating on text where the recipe needs it) and save
    it with its tokenizer; `lowbit eval OUT` evaluates the result."""
    numbers = {
        "samples": samples,
        "seq-len": seq_len,
        "threads": threads,
        "sensitivity-samples": sensitivity_samples,
    }
    mixed = MixedOptions(target_bpw, target_size, max_loss, candidates, sensitivity_samples)
    checked = _check(model, recipe, out, calib, numbers, embeddings, max_memory, mixed)

    import torch

    if not json:
        os.environ.setdefault("LOWBIT_PROGRESS", "1")
    torch.set_num_threads(threads)
    windows = {"samples": samples, "seq_len": seq_len}
    if checked.stream_budget is not None:
        result = _quantize_streamed(model, out, checked, windows)
    else:
        result = _quantize_in_memory(model, out, checked, windows, mixed)
    if result is None:
        return  # another process writes the model
    from lowbit.streaming.memory import peak_rss_bytes

    folder, seconds, layers, n_params, plan = result
    peak_mb = peak_rss_bytes() / 2**20
    size = sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")
    doc = {
        "model": model,
        "recipe": checked.recipe.name,
        "out": str(folder),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_mb),
        "max_memory_bytes": checked.stream_budget,
        "input_bytes": checked.input_bytes,
        "weights_bytes": size,
        "bits_per_weight": round(8 * size / n_params, 3),
        "layers": layers,
        "mixed_precision": None if plan is None else plan.to_dict(),
    }
    not_smaller = checked.input_bytes is not None and size >= checked.input_bytes
    if not_smaller:
        typer.secho(
            f"warning: the output ({size / 1e6:.1f} MB) is not smaller than the input "
            f"({checked.input_bytes / 1e6:.1f} MB); check --embeddings and the recipe",
            err=True,
            fg="yellow",
        )
    if json:
        print_json(doc)
        return
    rows = [
        [
            r["module"],
            r.get("weight", r.get("spec", "")),
            r.get("kernel", ""),
            r.get("bits_per_weight", ""),
            r.get("reason", ""),
        ]
        for r in doc["layers"]
    ]
    title = f"{model} → {folder} ({checked.recipe.name})"
    print_table(title, ["module", "weight", "kernel", "bits/weight", "float because"], rows)
    streamed = ""
    if checked.stream_budget is not None:
        streamed = f", one block at a time within --max-memory {checked.stream_budget / 1e6:.0f} MB"
    typer.echo(f"quantized in {seconds:.1f} s, peak memory {peak_mb:.0f} MB{streamed}")
    typer.echo(_size_line(checked.input_bytes, size, n_params))
    if plan is not None:
        typer.echo(_mixed_line(plan, folder))
