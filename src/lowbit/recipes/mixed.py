"""Mixed precision: a format per layer chosen from measured sensitivities under a size or
output-distance budget, written as an ordinary Recipe (one rule per layer) so that
quantize, save and load need nothing new.

The allocation is the exact multiple-choice knapsack of ``lowbit.algorithms.allocation`` on
the estimated distances of ``sensitivity``. A distance budget (``max_loss``) is then checked
by quantizing every layer at once with round-to-nearest and measuring D; while the measured D
exceeds the budget the estimate's budget is scaled down by their ratio (at most
SEARCH_ROUNDS times), because the per-layer estimates add up to less than the whole
model's D when errors compound.
"""

from __future__ import annotations

import copy
import glob
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from lowbit.algorithms.allocation import Allocation, Choice, allocate
from lowbit.errors import InvalidSpecError
from lowbit.recipes.batches import collect_batches, run_batch
from lowbit.recipes.layers import split_attention
from lowbit.recipes.presets import get_recipe
from lowbit.recipes.sensitivity import (
    EMBEDDINGS,
    MEASURED_BATCHES,
    Candidate,
    SensitivityReport,
    distance_terms,
    model_output,
)
from lowbit.recipes.spec import Recipe, Rule

SEARCH_ROUNDS = 4


@dataclass(frozen=True)
class Budget:
    """Exactly one of: total bytes of the quantized weights (``max_bytes``), bits per weight
    of the whole model (``bits_per_weight``), or the output distance D (``max_loss``)."""

    max_bytes: int | None = None
    bits_per_weight: float | None = None
    max_loss: float | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.max_bytes, self.bits_per_weight, self.max_loss) if v is not None]
        if len(given) != 1:
            raise InvalidSpecError(
                "give exactly one budget: --target-bpw, --target-size or --max-loss"
            )
        if given[0] <= 0:
            raise InvalidSpecError(f"a budget must be positive, got {given[0]}")

    def total_bytes(self, params: int) -> int | None:
        """The byte budget of a model of ``params`` parameters, or None (a distance budget)."""
        if self.bits_per_weight is not None:
            return math.floor(self.bits_per_weight * params / 8)
        return self.max_bytes


def parse_loss(text: str) -> float:
    """A --max-loss value: "1%" or "0.01". For a model that returns logits, 1% means the mean
    KL per position may reach ln(1.01) nats (exp(KL), a perplexity ratio, within 1.01); for
    other outputs, the relative squared error may reach 0.01."""
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InvalidSpecError(
            f"--max-loss takes a fraction or a percentage (1%), got {text!r}"
        ) from None
    if value <= 0:
        raise InvalidSpecError(f"--max-loss must be positive, got {text!r}")
    return value


def distance_budget(relative: float, distance: str) -> float:
    """The D budget for a relative loss: ln(1 + r) nats of KL, or r of relative MSE."""
    return math.log1p(relative) if distance == "kl" else relative


def _choices(report: SensitivityReport) -> dict[str, list[Choice]]:
    return {
        layer.name: [Choice(name, o.nbytes, o.estimate) for name, o in layer.options.items()]
        for layer in report.layers
    }


def check_mixed_base(base: str | Recipe) -> Recipe:
    """The base recipe of a mixed-precision plan (it gives the algorithm); it must be
    weight-only, as mixed precision chooses weight formats."""
    base = get_recipe(base)
    if base.kind != "ptq" or base.spec is None or base.spec.activation.mode != "weight_only":
        raise InvalidSpecError(
            f"mixed precision chooses weight formats, so its base recipe must be weight-only "
            f"(w4a16-g128, w4a16-g128-gptq, ...), not {base.name!r}"
        )
    return base


def mixed_recipe(
    base: str | Recipe, allocation: Allocation, candidates: tuple[Candidate, ...], name: str
) -> Recipe:
    """A Recipe with ``base``'s algorithm and activations and the allocation's weight format
    for each layer (a rule per layer; "float" leaves it; the embedding tables share one)."""
    base = check_mixed_base(base)
    assert base.spec is not None
    by_name = {c.name: c for c in candidates}
    rules = []
    embeddings = None
    for layer, choice in allocation.choices.items():
        weight = by_name[choice.name].weight
        if layer == EMBEDDINGS:
            embeddings = by_name[choice.name].table_format()
            continue
        spec = None if weight is None else replace(base.spec, weight=weight)
        rules.append(Rule(glob.escape(layer), spec))
    return Recipe(name, "ptq", base.spec, rules=tuple(rules), embeddings=embeddings)


@torch.no_grad()
def _measured_distance(model: nn.Module, recipe: Recipe, batches: list[Any]) -> float:
    """D of the whole model quantized by ``recipe`` with round-to-nearest."""
    from lowbit.recipes.quantize import quantize

    if recipe.embeddings is None and all(r.spec is None for r in recipe.rules):
        return 0.0  # every layer stays float
    rtn = replace(recipe, spec=replace(recipe.spec, algorithm="rtn")) if recipe.spec else recipe
    rtn = replace(
        rtn,
        rules=tuple(
            Rule(r.pattern, r.spec and replace(r.spec, algorithm="rtn")) for r in rtn.rules
        ),
    )
    quantized = quantize(model, rtn)
    num = den = 0.0
    for i, batch in enumerate(batches):
        kind, ref = model_output(run_batch(model, batch, i))
        terms = distance_terms(kind, ref, model_output(run_batch(quantized, batch, i))[1])
        num, den = num + terms[0], den + terms[1]
    return num / max(den, 1e-30)


@dataclass(frozen=True)
class MixedPlan:
    """The chosen recipe, its allocation, the total bytes it implies (weights + the float
    rest) and, for a distance budget, the D measured with round-to-nearest."""

    recipe: Recipe
    allocation: Allocation
    total_bytes: int
    measured_loss: float | None
    loss_budget: float | None
    rounds: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.name,
            "total_bytes": self.total_bytes,
            "estimated_loss": self.allocation.loss,
            "measured_loss": self.measured_loss,
            "loss_budget": self.loss_budget,
            "search_rounds": self.rounds,
            "allocation": "multiple-choice knapsack (dynamic programming over byte units)",
            "layers": {k: c.name for k, c in self.allocation.choices.items()},
        }


def plan_mixed(
    model: nn.Module,
    report: SensitivityReport,
    base: str | Recipe,
    budget: Budget,
    calib_data: Iterable[Any] | None = None,
    *,
    overhead_bytes: int = 0,
) -> MixedPlan:
    """Choose a format per layer of ``model`` under ``budget`` from ``report`` (measured on
    the same model); a distance budget needs ``calib_data`` to check the choice. A size
    budget sets ``overhead_bytes`` aside (a file's header: lowbit.io.save.header_allowance)."""
    choices = _choices(report)
    name = f"mixed-{get_recipe(base).name}"
    total = budget.total_bytes(report.params)
    if total is not None:
        total -= overhead_bytes
        smallest = report.fixed_bytes + sum(
            min(o.nbytes for o in layer.options.values()) for layer in report.layers
        )
        if total < smallest:
            raise InvalidSpecError(
                f"the target of {total:,} bytes ({8 * total / report.params:.2f} bits per weight) "
                f"is below the smallest model these candidates make: {smallest:,} bytes "
                f"({8 * smallest / report.params:.2f} bits per weight, float parts included); "
                "raise the target or add smaller candidates (w2a16-g64)"
            )
        allocation = allocate(choices, max_bytes=total - report.fixed_bytes)
        recipe = mixed_recipe(base, allocation, report.candidates, name)
        return MixedPlan(recipe, allocation, allocation.nbytes + report.fixed_bytes, None, None, 0)
    assert budget.max_loss is not None
    target = distance_budget(budget.max_loss, report.distance)
    batches = collect_batches(calib_data, "mixed-precision", warn=False)[:MEASURED_BATCHES]
    model = split_attention(copy.deepcopy(model)).eval()
    estimate_budget = target
    for rounds in range(1, SEARCH_ROUNDS + 1):
        allocation = allocate(choices, max_loss=estimate_budget)
        recipe = mixed_recipe(base, allocation, report.candidates, name)
        measured = _measured_distance(model, recipe, batches)
        if measured <= target or rounds == SEARCH_ROUNDS:
            break
        estimate_budget *= target / measured
    return MixedPlan(
        recipe, allocation, allocation.nbytes + report.fixed_bytes, measured, target, rounds
    )
