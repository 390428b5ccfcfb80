"""Named recipes: ``w{bits}a{bits}[-g{group}][-asym]`` plus the classic names.

``int8-static:entropy`` picks the calibration observer after the colon; options of the
percentile observer go after a second colon (``int8-static:percentile:99.9``).
"""

from __future__ import annotations

from collections.abc import Callable

from lowbit.errors import InvalidSpecError
from lowbit.formats.granularity import PerAxis, PerGroup
from lowbit.observers.registry import OBSERVERS
from lowbit.recipes.spec import ActivationSpec, QuantSpec, Recipe, WeightSpec


def _ptq(
    name: str,
    weight: WeightSpec,
    mode: str = "weight_only",
    observer: str = "minmax",
    options: tuple = (),
) -> Recipe:
    return Recipe(name, "ptq", QuantSpec(weight, ActivationSpec(mode, observer, options)))  # type: ignore[arg-type]


INT8_CHANNEL = WeightSpec("int8", PerAxis(0))

PRESETS: dict[str, Callable[[], Recipe]] = {
    "fp16": lambda: Recipe("fp16", "cast", cast_dtype="float16"),
    "bf16": lambda: Recipe("bf16", "cast", cast_dtype="bfloat16"),
    "int8-dynamic": lambda: _ptq("int8-dynamic", INT8_CHANNEL, "dynamic"),
    "int8-static": lambda: _ptq("int8-static", INT8_CHANNEL, "static"),
    "int8-qat": lambda: Recipe(
        "int8-qat", "qat", QuantSpec(INT8_CHANNEL, ActivationSpec("static", "moving_average"))
    ),
    "w8a16": lambda: _ptq("w8a16", INT8_CHANNEL),
    "w4a16-g32": lambda: _ptq("w4a16-g32", WeightSpec("int4", PerGroup(32))),
    "w4a16-g128": lambda: _ptq("w4a16-g128", WeightSpec("int4", PerGroup(128))),
    "nf4": lambda: _ptq("nf4", WeightSpec("nf4", PerGroup(64))),
    "ternary": lambda: _ptq("ternary", WeightSpec("ternary", PerAxis(0))),
    "binary": lambda: _ptq("binary", WeightSpec("binary", PerAxis(0))),
}


def get_recipe(recipe: str | Recipe) -> Recipe:
    """A Recipe object, or the preset of that name (see ``PRESETS``)."""
    if isinstance(recipe, Recipe):
        return recipe
    if not isinstance(recipe, str):
        raise InvalidSpecError(
            f"recipe must be a preset name or a lowbit Recipe, got {type(recipe).__name__}"
        )
    base, _, observer_part = recipe.partition(":")
    if base not in PRESETS:
        raise InvalidSpecError(
            f"unknown preset {recipe!r}; known presets: {', '.join(PRESETS)} "
            "(static presets take an observer: int8-static:entropy)"
        )
    result = PRESETS[base]()
    if not observer_part:
        return result
    if result.spec is None or result.spec.activation.mode != "static":
        raise InvalidSpecError(f"preset {base!r} does not calibrate; drop ':{observer_part}'")
    observer, _, value = observer_part.partition(":")
    if observer not in OBSERVERS:
        raise InvalidSpecError(
            f"unknown observer {observer!r} in {recipe!r}; known observers: {', '.join(OBSERVERS)}"
        )
    options: tuple = ()
    if value:
        if observer != "percentile":
            raise InvalidSpecError(f"only the percentile observer takes a value ({recipe!r})")
        options = (("percentile", float(value)),)
    activation = ActivationSpec("static", observer, options)
    return Recipe(recipe, result.kind, QuantSpec(result.spec.weight, activation))
