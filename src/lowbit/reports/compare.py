"""Compare recipes on the user's own model and data: each recipe's quantized model measured
by one task (classifier accuracy, perplexity, embedding fidelity), beside the original, with
the size, and the Pareto front of size vs quality marked (no other row is both smaller and
better)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from lowbit.eval.size import model_nbytes
from lowbit.progress import track
from lowbit.recipes import get_recipe, quantize
from lowbit.reports.comparison import Column, ComparisonReport


@dataclass(frozen=True)
class Task:
    """What the comparison measures: ``evaluate(model) -> {metric: value}``; ``metric`` is
    the one the plot and the front use, ``higher_is_better`` its direction."""

    name: str
    metric: str
    higher_is_better: bool
    evaluate: Callable[[nn.Module], dict[str, float]]


def pareto_front(
    rows: Sequence[dict[str, Any]], size: str, metric: str, higher: bool
) -> list[bool]:
    """For each row, whether no other row is at most as large and at least as good, and
    strictly one of them."""

    def better_or_equal(a: dict, b: dict) -> bool:
        return a[metric] >= b[metric] if higher else a[metric] <= b[metric]

    def dominates(a: dict, b: dict) -> bool:
        strictly = a[size] < b[size] or (a[metric] != b[metric] and better_or_equal(a, b))
        return a[size] <= b[size] and better_or_equal(a, b) and strictly

    return [not any(dominates(other, row) for other in rows if other is not row) for row in rows]


def compare(
    model: nn.Module,
    recipes: Iterable[str],
    task: Task,
    calib_data: Iterable[Any] | None = None,
    *,
    title: str = "",
) -> ComparisonReport:
    """The original and each recipe's quantized copy (``model`` is not modified), measured by
    ``task``: metric values, bytes (what lowbit.save stores), size ratio, quantize seconds
    and whether the row is on the size/quality Pareto front."""
    batches = None if calib_data is None else list(calib_data)
    names = [get_recipe(r).name for r in recipes]  # a bad name fails before any work
    rows = [{"recipe": "original", **task.evaluate(model), "bytes": model_nbytes(model),
             "seconds": 0.0}]  # fmt: skip
    for name in track(names, f"comparing on {task.name}", total=len(names)):
        started = time.perf_counter()
        qmodel = quantize(model, name, calib_data=batches)
        seconds = time.perf_counter() - started
        rows.append({"recipe": name, **task.evaluate(qmodel), "bytes": model_nbytes(qmodel),
                     "seconds": seconds})  # fmt: skip
    base = rows[0]
    fronts = pareto_front(rows, "bytes", task.metric, task.higher_is_better)
    for row, front in zip(rows, fronts, strict=True):
        row["size_ratio"] = row["bytes"] / base["bytes"]
        row["change"] = row[task.metric] - base[task.metric]
        row["pareto"] = front
    metric_columns = [Column(k, k, _number) for k in rows[0] if k not in _OWN_KEYS]
    columns = [
        Column("recipe", "recipe"),
        *metric_columns,
        Column("change", f"{task.metric} change", lambda v: f"{v:+.4g}"),
        Column("bytes", "bytes", lambda v: f"{v:,}"),
        Column("size_ratio", "size vs original", lambda v: f"{v:.3f}x"),
        Column("seconds", "quantize s", lambda v: f"{v:.1f}"),
        Column("pareto", "Pareto front", lambda v: "yes" if v else ""),
    ]
    direction = "higher" if task.higher_is_better else "lower"
    notes = [
        f"{task.metric}: {direction} is better. Pareto front: no other row is both smaller "
        "(or as small) and better (or as good).",
        "bytes: every tensor the model needs to run, as lowbit.save stores it.",
    ]
    return ComparisonReport(title or f"lowbit compare ({task.name})", columns, rows, notes)


_OWN_KEYS = ("recipe", "bytes", "seconds", "size_ratio", "change", "pareto")


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def accuracy_task(x: Any, y: Any) -> Task:
    """Classifier accuracy (%) on images ``x`` with labels ``y``."""
    from lowbit.eval.metrics import accuracy

    return Task("accuracy", "accuracy", True, lambda m: {"accuracy": accuracy(m, x, y)})


def perplexity_task(tokenizer: Any, text: str, *, ctx: int = 512, max_tokens: int | None) -> Task:
    """Perplexity of a causal LM on ``text`` (windows of ``ctx`` tokens side by side)."""
    from lowbit.eval.perplexity import perplexity

    def evaluate(model: nn.Module) -> dict[str, float]:
        result = perplexity(model, tokenizer, text, ctx=ctx, stride=ctx, max_tokens=max_tokens)
        return {"perplexity": result.ppl}

    return Task("perplexity", "perplexity", False, evaluate)


def embedding_task(reference: nn.Module, tokenizer: Any, texts: Sequence[str]) -> Task:
    """Embedding fidelity against the original model: mean cosine and top-10 agreement."""
    from lowbit.eval.embedding import embed, embedding_fidelity

    ref = embed(reference, tokenizer, texts)

    def evaluate(model: nn.Module) -> dict[str, float]:
        scores = embedding_fidelity(ref, embed(model, tokenizer, texts))
        return {"cosine_mean": scores["cosine_mean"], "top10_agreement": scores["top10_agreement"]}

    return Task("embedding fidelity", "cosine_mean", True, evaluate)
