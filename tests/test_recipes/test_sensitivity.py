"""Per-layer sensitivity and mixed precision (issue 16): the Fisher estimate agrees with the
distance measured by quantizing one layer alone; the knapsack's recipe stays within its
budget and beats a uniform format of the same size; unusual layers stay float, never crash."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.errors import InvalidSpecError, LowbitWarning
from lowbit.io import load, save
from lowbit.recipes import Recipe, describe, quantize
from lowbit.recipes.mixed import Budget, plan_mixed
from lowbit.recipes.sensitivity import EMBEDDINGS, measure_sensitivity, model_output


def _mlp() -> nn.Module:
    """An MLP whose middle layer has outlier input channels: layers differ in sensitivity."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )  # fmt: skip
    with torch.no_grad():
        model[2].weight[:, :4] *= 12.0
    return model.eval()


def _data(n: int = 4) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(64, 64) for _ in range(n)]


def _measured(model: nn.Module, qmodel: nn.Module, batches: list) -> float:
    """Mean KL per position between the float and the quantized model."""
    with torch.no_grad():
        ref = torch.cat([model(b) for b in batches]).log_softmax(-1)
        out = torch.cat([qmodel(b) for b in batches]).log_softmax(-1)
    return (ref.exp() * (ref - out)).sum(-1).mean().item()


def test_the_estimate_agrees_with_the_single_layer_measurement() -> None:
    model, data = _mlp(), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = measure_sensitivity(model, data, measure="w3a16-g128")
    assert report.distance == "kl"
    for layer in report.layers:
        option = layer.options["w3a16-g128"]
        assert option.measured is not None and option.measured > 0
        assert 0.5 < option.estimate / option.measured < 2.0, (layer.name, option)
        sqnrs = [layer.options[c].sqnr_db for c in ("w8a16", "w4a16-g32", "w2a16-g64")]
        assert sqnrs == sorted(sqnrs, reverse=True) and math.isinf(layer.options["float"].sqnr_db)
    assert report.layers[1].outlier_ratio > 5 > report.layers[0].outlier_ratio
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(p.grad is not None for p in model.parameters())


def test_values_outputs_use_the_relative_squared_error() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 32)).eval()
    data = [torch.randn(4, 16, 32) for _ in range(3)]  # 3-D outputs: not logits
    report = measure_sensitivity(model, data, ["w8a16", "w2a16-g16"], measure="w2a16-g16")
    assert report.distance == "relative_mse"
    for layer in report.layers:
        option = layer.options["w2a16-g16"]
        assert 0.5 < option.estimate / option.measured < 2.0, (layer.name, option)
    assert model_output((torch.ones(2, 3, 4),))[0] == "values"


def test_a_mixed_recipe_fits_its_budget_and_beats_the_uniform_format_of_that_size(
    tmp_path,
) -> None:
    model, data = _mlp(), _data()
    report = measure_sensitivity(model, data)
    uniform = quantize(model, "w3a16-g128")
    uniform_bytes = sum(r["bytes"] for r in describe(uniform) if r.get("bytes"))
    budget = uniform_bytes + report.fixed_bytes
    plan = plan_mixed(model, report, "w4a16-g32", Budget(max_bytes=budget))
    mixed = quantize(model, plan.recipe)
    mixed_bytes = sum(r["bytes"] for r in describe(mixed) if r.get("bytes"))
    assert mixed_bytes + report.fixed_bytes == plan.total_bytes <= budget
    assert len({c.name for c in plan.allocation.choices.values()}) > 1  # really mixed
    assert _measured(model, mixed, data) < _measured(model, uniform, data)
    assert Recipe.from_dict(mixed.lowbit_recipe) == plan.recipe  # saved with the model
    loaded = load(save(mixed, tmp_path / "mixed"), _mlp())
    with torch.no_grad():
        assert torch.equal(loaded(data[0]), mixed(data[0]))


def test_a_loss_budget_is_met_as_measured() -> None:
    model, data = _mlp(), _data()
    report = measure_sensitivity(model, data)
    plan = plan_mixed(model, report, "w4a16-g32", Budget(max_loss=0.002), data)
    assert plan.measured_loss is not None and plan.measured_loss <= plan.loss_budget
    assert plan.loss_budget == pytest.approx(math.log(1.002))
    smaller = plan_mixed(model, report, "w4a16-g32", Budget(max_loss=0.05), data)
    assert smaller.total_bytes < plan.total_bytes
    with pytest.raises(InvalidSpecError, match="below the smallest model"):
        plan_mixed(model, report, "w4a16-g32", Budget(bits_per_weight=1.0))
    with pytest.raises(InvalidSpecError, match="must be weight-only"):
        plan_mixed(model, report, "int8-static", Budget(bits_per_weight=6.0))


class _Scaled(nn.Module):
    """A custom module with its own weight matrix: lowbit cannot quantize it."""

    def __init__(self) -> None:
        super().__init__()
        self.matrix = nn.Parameter(torch.randn(16, 16) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix


class _Unusual(nn.Module):
    """An embedding tied to the output head, a grouped conv and a custom module."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.conv = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.custom = _Scaled()
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # (B, T, 16)
        x = self.conv(x.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2) + x
        return self.head(self.custom(x)).flatten(0, 1)


def test_unusual_layers_are_listed_or_stay_float_never_a_crash() -> None:
    torch.manual_seed(0)
    model = _Unusual().eval()
    data = [torch.randint(0, 50, (4, 12)) for _ in range(3)]
    report = measure_sensitivity(model, data, measure="w4a16-g32")
    names = [layer.name for layer in report.layers]
    assert names == ["conv", EMBEDDINGS]  # the tied head follows its table; custom: float
    assert report.fixed_bytes == 16 * 16 * 4 + 16 * 4  # the custom matrix and conv bias
    plan = plan_mixed(model, report, "w4a16-g32", Budget(bits_per_weight=12.0))
    with pytest.warns(LowbitWarning, match="custom: no quantized _Scaled"):
        qmodel = quantize(model, plan.recipe)
    with torch.no_grad():
        assert qmodel(data[0]).shape == model(data[0]).shape
    float_rows = {r["module"]: r.get("reason", "") for r in describe(qmodel) if "reason" in r}
    assert "custom" in float_rows


def test_embedding_tables_quantize_in_groups(tmp_path) -> None:
    """Recipe.embeddings "int4-g8": a scale per 8 values of a row (what mixed precision
    picks for a table); the tied head shares the table's codes."""
    from lowbit.recipes import get_recipe

    torch.manual_seed(0)
    model = _Unusual().eval()
    recipe = get_recipe("w8a16").with_embeddings("int4-g8")
    with pytest.warns(LowbitWarning, match="custom"):
        qmodel = quantize(model, recipe)
    table = qmodel.embed.weight
    assert table.bits_per_weight == 6 and qmodel.head.weight is table  # 4 + a 16-bit scale / 8
    rows = {r["module"]: r for r in describe(model, recipe)}
    assert rows["embed"]["spec"] == "int4 group 8" and "tied to embed" in rows["head"]["spec"]
    tokens = torch.randint(0, 50, (2, 12))
    with pytest.warns(LowbitWarning, match="custom"):
        per_row = quantize(model, get_recipe("w8a16").with_embeddings("int4"))
    with torch.no_grad():
        err_group = (qmodel(tokens) - model(tokens)).pow(2).mean()
        err_row = (per_row(tokens) - model(tokens)).pow(2).mean()
    assert err_group < err_row
    with pytest.raises(InvalidSpecError, match="positive integer"):
        recipe.with_embeddings("int4-gx")


def test_the_report_and_compare_work_on_unusual_layers(tmp_path) -> None:
    """The HTML page and `compare` on the model with an embedding tied to its head, a
    grouped conv and a custom module: the custom module is listed as float, nothing fails."""
    from lowbit.recipes.sensitivity import layer_weights
    from lowbit.reports.compare import Task, compare
    from lowbit.reports.sensitivity import sensitivity_html

    torch.manual_seed(0)
    model = _Unusual().eval()
    data = [torch.randint(0, 50, (4, 12)) for _ in range(3)]
    doc = measure_sensitivity(model, data, measure="w8a16").to_dict()
    page = sensitivity_html("unusual", doc, layer_weights(model))
    assert page.count("data:image/png;base64,") == 2 + 2  # two plots, a histogram per unit
    ref = torch.cat([model(b) for b in data]).detach()

    def fidelity(m: nn.Module) -> dict[str, float]:
        out = torch.cat([m(b) for b in data]).detach()
        return {"mse": (out - ref).pow(2).mean().item()}

    with pytest.warns(LowbitWarning, match="custom"):
        report = compare(model, ["w8a16", "w4a16-g8"], Task("fidelity", "mse", False, fidelity))
    assert [r["recipe"] for r in report.rows] == ["original", "w8a16", "w4a16-g8"]
    assert report.rows[0]["mse"] == 0 < report.rows[1]["mse"] < report.rows[2]["mse"]
