"""Named recipes: the classic names (``PRESETS``) and the weight-only grammar
``w{bits}a16[-g{group}][-asym][-gptq|-awq]`` (``nf4-g{group}`` likewise).

``int8-static:entropy`` picks the calibration observer after the colon; options of the
percentile observer go after a second colon (``int8-static:percentile:99.9``);
``w8a8-smoothquant:0.8`` sets SmoothQuant's alpha. Weight-only presets quantize embedding
tables int8 per row (``LLM_EMBEDDINGS``).
"""

from __future__ import annotations

import re
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
    embeddings: str | None = None,
) -> Recipe:
    spec = QuantSpec(weight, ActivationSpec(mode, observer, options))  # type: ignore[arg-type]
    return Recipe(name, "ptq", spec, embeddings=embeddings)


INT8_CHANNEL = WeightSpec("int8", PerAxis(0))
# Weight-only (LLM) presets store embedding tables int8 per row, as llama.cpp stores them
# in 8 bits or near it: left fp32, SmolLM2's table alone (113 MB) outweighed its 4-bit
# Linear layers (Recipe.with_embeddings(None) keeps them float; docs/decisions.md).
LLM_EMBEDDINGS = "int8"
# A scale and zero point per token: outlier tokens do not blur the others, and one-sided
# rows (GELU outputs) use all 256 codes (docs/decisions.md, "Per-token W8A8").
PER_TOKEN = ActivationSpec("dynamic", per_token=True, token_zero_point=True)
PER_TOKEN_SYMMETRIC = ActivationSpec("dynamic", per_token=True)

PRESETS: dict[str, Callable[[], Recipe]] = {
    "fp16": lambda: Recipe("fp16", "cast", cast_dtype="float16"),
    "bf16": lambda: Recipe("bf16", "cast", cast_dtype="bfloat16"),
    "int8-dynamic": lambda: _ptq("int8-dynamic", INT8_CHANNEL, "dynamic"),
    "int8-static": lambda: _ptq("int8-static", INT8_CHANNEL, "static"),
    "int8-qat": lambda: Recipe(
        "int8-qat", "qat", QuantSpec(INT8_CHANNEL, ActivationSpec("static", "moving_average"))
    ),
    "w8a8-dynamic": lambda: Recipe("w8a8-dynamic", "ptq", QuantSpec(INT8_CHANNEL, PER_TOKEN)),
    "w8a8-dynamic-sym": lambda: Recipe(
        "w8a8-dynamic-sym", "ptq", QuantSpec(INT8_CHANNEL, PER_TOKEN_SYMMETRIC)
    ),
    # Per-batch activations (ORT's DynamicQuantizeLinear) with a shrinking SmoothQuant
    # multiply or float outlier channels per input, by measured error: MiniLM at per-token
    # accuracy and per-batch speed in ORT (docs/decisions.md, "int8-dynamic-smooth").
    "int8-dynamic-smooth": lambda: Recipe(
        "int8-dynamic-smooth",
        "ptq",
        QuantSpec(INT8_CHANNEL, ActivationSpec("dynamic"), "input-transform"),
    ),
    "w8a8-smoothquant": lambda: Recipe(
        "w8a8-smoothquant",
        "ptq",
        QuantSpec(INT8_CHANNEL, PER_TOKEN, "smoothquant", (("alpha", 0.5),)),
    ),
    "nf4": lambda: _ptq("nf4", WeightSpec("nf4", PerGroup(64)), embeddings=LLM_EMBEDDINGS),
    "ternary": lambda: _ptq("ternary", WeightSpec("ternary", PerAxis(0))),
    "binary": lambda: _ptq("binary", WeightSpec("binary", PerAxis(0))),
}


# Weight-only names: w4a16-g128, w3a16-g128-gptq, w4a16-g128-asym-awq, nf4-g64, ...
_WEIGHT_ONLY = re.compile(
    r"^(?:w(?P<bits>[1-8])a16|(?P<nf4>nf4))(?:-g(?P<group>\d+))?(?P<asym>-asym)?"
    r"(?:-(?P<algo>gptq|awq))?$"
)
GRAMMAR = "w{bits}a16[-g{group}][-asym][-gptq|-awq] or nf4[-g{group}]"


def _weight_only(name: str) -> Recipe | None:
    m = _WEIGHT_ONLY.match(name)
    if m is None:
        return None
    group = int(m["group"]) if m["group"] else None
    if group is not None and group < 1:
        raise InvalidSpecError(f"group size must be >= 1 in {name!r}")
    asym = bool(m["asym"])
    if m["nf4"]:
        if asym or m["algo"]:
            raise InvalidSpecError(f"{name!r}: nf4 takes no -asym, -gptq or -awq")
        weight = WeightSpec("nf4", PerGroup(group or 64))
    else:
        granularity = PerGroup(group) if group else PerAxis(0)
        weight = WeightSpec(
            f"int{m['bits']}",
            granularity,
            symmetric=not asym,
            form="zero_point" if asym else "offset",
            scale_dtype="float16" if group else "float32",
        )
    # GPTQ in activation order with each group's parameters fixed up front (the reference
    # code's --act-order --static-groups): SmolLM2 w4a16-g32, 4096 tokens, perplexity 14.72
    # in natural order vs 12.95 (docs/decisions.md)
    options = (("act_order", True), ("static_groups", True)) if m["algo"] == "gptq" else ()
    spec = QuantSpec(weight, ActivationSpec("weight_only"), m["algo"] or "rtn", options)
    return Recipe(name, "ptq", spec, embeddings=LLM_EMBEDDINGS)


def get_recipe(recipe: str | Recipe) -> Recipe:
    """A Recipe object, the preset of that name (``PRESETS``), or a weight-only name of the
    grammar ``w{bits}a16[-g{group}][-asym][-gptq|-awq]``."""
    if isinstance(recipe, Recipe):
        return recipe
    if not isinstance(recipe, str):
        raise InvalidSpecError(
            f"recipe must be a preset name or a lowbit Recipe, got {type(recipe).__name__}"
        )
    base, _, observer_part = recipe.partition(":")
    if base not in PRESETS:
        result = _weight_only(base)
        if result is None or observer_part:
            raise InvalidSpecError(
                f"unknown preset {recipe!r}; known presets: {', '.join(PRESETS)}, and "
                f"{GRAMMAR} (static presets take an observer: int8-static:entropy)"
            )
        return result
    result = PRESETS[base]()
    if not observer_part:
        return result
    if result.spec is not None and result.spec.algorithm == "smoothquant":
        alpha = float(observer_part)
        if not 0.0 <= alpha <= 1.0:
            raise InvalidSpecError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
        spec = QuantSpec(
            result.spec.weight, result.spec.activation, "smoothquant", (("alpha", alpha),)
        )
        return Recipe(recipe, "ptq", spec)
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
