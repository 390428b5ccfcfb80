"""Recipes: presets resolve, rules pick specs, and recipes survive a JSON round trip."""

from __future__ import annotations

import json

import pytest

from lowbit.errors import InvalidSpecError, UnsupportedFormatError
from lowbit.formats.granularity import PerAxis, PerGroup
from lowbit.recipes import PRESETS, ActivationSpec, QuantSpec, Recipe, Rule, WeightSpec, get_recipe


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_json(name: str) -> None:
    recipe = get_recipe(name)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_preset_contents() -> None:
    assert get_recipe("w4a16-g32").spec.weight == WeightSpec(
        "int4", PerGroup(32), scale_dtype="float16"
    )
    asym = get_recipe("w3a16-g128-asym-gptq").spec
    assert asym.algorithm == "gptq" and asym.weight.form == "zero_point"
    assert not asym.weight.symmetric and asym.weight.format == "int3"
    assert get_recipe("nf4-g64").spec.weight.granularity == PerGroup(64)
    assert get_recipe("w8a8-smoothquant:0.8").spec.algorithm_options == (("alpha", 0.8),)
    assert get_recipe("int8-dynamic").spec.activation.mode == "dynamic"
    static = get_recipe("int8-static")
    assert static.spec.weight.granularity == PerAxis(0)
    assert static.spec.activation.observer == "minmax"
    assert get_recipe("bf16").kind == "cast"
    tokens = get_recipe("w8a8-dynamic").spec.activation
    assert tokens.per_token and tokens.token_zero_point
    assert get_recipe("w8a8-smoothquant").spec.activation == tokens
    symmetric = get_recipe("w8a8-dynamic-sym").spec.activation
    assert symmetric.per_token and not symmetric.token_zero_point
    with pytest.raises(InvalidSpecError, match="per_token=True"):
        ActivationSpec("dynamic", token_zero_point=True)


def test_observer_suffix() -> None:
    assert get_recipe("int8-static:entropy").spec.activation.observer == "entropy"
    p = get_recipe("int8-static:percentile:99.9").spec.activation
    assert p.observer == "percentile" and dict(p.observer_options) == {"percentile": 99.9}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("int3-fancy", "unknown preset"),
        ("int8-static:median", "unknown observer"),
        ("w8a16:entropy", "unknown preset"),
        ("int8-dynamic:entropy", "does not calibrate"),
        ("int8-static:entropy:3", "only the percentile"),
    ],
)
def test_bad_presets_are_clear(name: str, message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message):
        get_recipe(name)


def test_rules_and_skips_by_name_pattern() -> None:
    four_bit = QuantSpec(WeightSpec("int4", PerGroup(32)))
    recipe = get_recipe("w8a16").with_rules(Rule("*.fc*", four_bit)).skip("head")
    assert recipe.spec_for("block.fc1") == four_bit
    assert recipe.spec_for("head") is None
    assert recipe.spec_for("conv1").weight.format == "int8"
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_unknown_recipe_version_is_refused() -> None:
    d = get_recipe("w8a16").to_dict()
    d["version"] = 99
    with pytest.raises(UnsupportedFormatError, match="version 99"):
        Recipe.from_dict(d)


def test_gptq_presets_run_in_activation_order_with_static_groups():
    from lowbit.recipes.presets import get_recipe

    for name in ("w4a16-g32-gptq", "w4a16-g128-asym-gptq", "w3a16-gptq"):
        options = dict(get_recipe(name).spec.algorithm_options)
        assert options == {"act_order": True, "static_groups": True}, (name, options)
    assert get_recipe("w4a16-g32").spec.algorithm_options == ()
