"""L5: the only layer that walks a model: specs and recipes, presets, fusion, calibration,
quantize / describe / prepare_qat / convert."""

from lowbit.recipes.presets import PRESETS, get_recipe
from lowbit.recipes.qat import convert, prepare_qat
from lowbit.recipes.quantize import describe, quantize
from lowbit.recipes.spec import ActivationSpec, QuantSpec, Recipe, Rule, WeightSpec

__all__ = [
    "PRESETS",
    "ActivationSpec",
    "QuantSpec",
    "Recipe",
    "Rule",
    "WeightSpec",
    "convert",
    "describe",
    "get_recipe",
    "prepare_qat",
    "quantize",
]
