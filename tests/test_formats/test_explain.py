"""explain_values shows exactly what the formats compute."""

from __future__ import annotations

import pytest

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.explain import explain_values
from lowbit_testkit.golden import load_golden

GOLDEN = load_golden("affine_worked_examples.json")["cases"]


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: c["name"])
def test_worked_examples(case: dict) -> None:
    if case["symmetric"]:
        ex = explain_values(case["values"], bits=case["bits"], clip_range=case["clip_range"])
    else:
        ex = explain_values(
            case["values"],
            bits=case["bits"],
            symmetric=False,
            clip_min=case["clip_min"],
            clip_max=case["clip_max"],
        )
        assert ex.params["offset"] == pytest.approx(case["offset"])
    doc = ex.to_json()
    assert doc["scale"] == pytest.approx(case["scale"], abs=1e-6)
    assert doc["q"] == case["q"]
    assert doc["dequantized"] == pytest.approx(case["dequantized"], abs=1e-6)
    assert doc["error"] == pytest.approx(
        [d - x for d, x in zip(case["dequantized"], case["values"], strict=True)], abs=1e-6
    )
    assert doc["steps"]["clipped"][1] == pytest.approx(2.0)


def test_zero_point_form_reports_zero_point() -> None:
    doc = explain_values([0.1, 0.5, -0.3], bits=4, symmetric=False, form="zero_point").to_json()
    assert isinstance(doc["zero_point"], int) and "offset" not in doc


@pytest.mark.parametrize(
    "fmt", ["nf4", "binary", "ternary", "fp8_e4m3", "fp8_e5m2", "fp16", "bf16"]
)
def test_every_named_format_explains(fmt: str) -> None:
    values = [0.1, -0.5, 0.3, 1.0]
    doc = explain_values(values, format=fmt).to_json()
    assert len(doc["q"]) == 4 and len(doc["dequantized"]) == 4
    assert doc["error"] == pytest.approx(
        [d - v for d, v in zip(doc["dequantized"], values, strict=True)], abs=1e-6
    )
    assert doc["summary"]["max_abs_error"] == max(abs(e) for e in doc["error"])


def test_bad_input() -> None:
    with pytest.raises(InvalidSpecError, match="at least one value"):
        explain_values([])
    with pytest.raises(InvalidInputError, match="NaN"):
        explain_values([float("nan")])
