"""lowbit.quantize on small real-shaped models: every preset runs, the input model is never
modified, static int8 keeps a high SQNR, and bad input gets clear errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from lowbit.errors import InvalidInputError, InvalidSpecError, LowbitWarning
from lowbit.eval.metrics import sqnr_db
from lowbit.eval.size import model_nbytes
from lowbit.recipes import PRESETS, describe, quantize
from lowbit_testkit.models import calibrates_blocks


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = SmallCNN().eval()
    m.bn1.running_mean.uniform_(-0.5, 0.5)
    m.bn1.running_var.uniform_(0.5, 2)
    return m


@pytest.fixture(scope="module")
def calib() -> list[torch.Tensor]:
    return list(torch.randn(128, 3, 16, 16, generator=torch.Generator().manual_seed(1)).split(32))


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "preset",
    [p for p in PRESETS if p != "int8-qat" and not calibrates_blocks(p)]
    + ["w8a16", "w4a16-g32", "w4a16-g128", "w3a16-g128-asym", "nf4-g64"],
)
def test_every_preset_runs_and_leaves_the_input_untouched(model, calib, preset) -> None:
    before = copy.deepcopy(model)
    qmodel = quantize(model, preset, calib_data=calib)
    assert _states_equal(model, before) and type(model.conv1) is nn.Conv2d
    x = calib[0][:4]
    with torch.no_grad():
        ref, out = model(x), qmodel(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    floor = {
        "binary": -10,
        "ternary": -5,
        "nf4": 10,
        "nf4-g64": 10,
        "w3a16-g128-asym": 5,
        "w4a16-g32": 12,
        "w4a16-g128": 12,
        "fp16": 40,
        "bf16": 25,
    }.get(preset, 25)
    assert sqnr_db(ref, out) > floor, preset


def test_int8_static_matches_fp32_closely_and_is_small(model, calib) -> None:
    qmodel = quantize(model, "int8-static", calib_data=calib)
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        assert sqnr_db(model(x), qmodel(x)) > 25
    assert model_nbytes(qmodel) < 0.3 * model_nbytes(model)
    kinds = {row["module"]: row for row in describe(qmodel)}
    assert set(kinds) >= {"conv1", "conv2", "fc1", "fc2"}


def test_describe_a_plan_before_quantizing(model) -> None:
    rows = {r["module"]: r for r in describe(model, "w4a16-g32")}
    assert set(rows) == {"conv1", "bn1", "conv2", "fc1", "fc2"}
    assert all("int4 group 32" in rows[m]["spec"] for m in ("conv1", "conv2", "fc1", "fc2"))
    assert rows["bn1"]["spec"] == "float" and "normalization" in rows["bn1"]["reason"]


def test_static_needs_calibration_data_of_the_right_shape(model) -> None:
    with pytest.raises(InvalidInputError, match="calib_data"):
        quantize(model, "int8-static")
    with pytest.raises(InvalidInputError, match=r"batch 0 .*shape \(8, 5\)"):
        quantize(model, "int8-static", calib_data=[torch.randn(8, 5)] * 20)


def test_few_calibration_samples_warn(model) -> None:
    with pytest.warns(LowbitWarning, match="only 8 samples"):
        quantize(model, "int8-static", calib_data=[torch.randn(8, 3, 16, 16)])


def test_unknown_preset_and_no_quantizable_layer() -> None:
    with pytest.raises(InvalidSpecError, match="unknown preset"):
        quantize(nn.Linear(4, 4), "int7")
    with pytest.raises(InvalidInputError, match="no quantizable layer"):
        quantize(nn.Sequential(nn.ReLU(), nn.Tanh()), "int8-dynamic")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InvalidInputError, match="no quantizable layer"):
            quantize(nn.Linear(4, 4), get_all_skipped())


def get_all_skipped():
    from lowbit.recipes import get_recipe

    return get_recipe("w8a16").skip("*")


class Residual(nn.Module):
    """A ResNet basic block written with lowbit.nn.Add, as static int8 needs."""

    def __init__(self) -> None:
        super().__init__()
        from lowbit.nn import Add

        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.add = Add(relu=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(self.flatten(self.pool(self.add(y, x))))


def test_residual_add_becomes_an_int8_add_and_int8_flows_through() -> None:
    from lowbit.nn import QuantAdd

    torch.manual_seed(0)
    model = Residual().eval()
    calib = [torch.randn(16, 8, 8, 8).relu() for _ in range(8)]
    qmodel = quantize(model, "int8-static", calib_data=calib)
    assert isinstance(qmodel.add, QuantAdd)
    assert qmodel.conv1.keep_quantized_output and qmodel.add.keep_quantized_output
    assert not qmodel.fc.keep_quantized_output  # the model output stays float
    x = torch.randn(4, 8, 8, 8).relu()
    with torch.no_grad():
        assert sqnr_db(model(x), qmodel(x)) > 25


def test_block_algorithms_need_blocks(model, calib) -> None:
    from lowbit.recipes.blocks import BlocksNotFoundError

    with pytest.raises(BlocksNotFoundError, match="transformer blocks"):
        quantize(model, "w8a8-smoothquant", calib_data=calib)


def test_embeddings_option_quantizes_tables_per_row() -> None:
    from lowbit.nn import QuantEmbedding
    from lowbit.recipes import get_recipe

    model = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 4)).eval()
    qmodel = quantize(model, get_recipe("w8a16").with_embeddings("int8"))
    assert isinstance(qmodel[0], QuantEmbedding)
    # 1 byte per weight + a float32 scale per 16-wide row (and the Linear's bias)
    assert model_nbytes(qmodel) < 0.32 * model_nbytes(model)
    ids = torch.randint(0, 100, (2, 5))
    with torch.no_grad():
        assert sqnr_db(model(ids), qmodel(ids)) > 30


def test_weight_only_presets_quantize_embeddings_and_keep_ties_unless_told_float() -> None:
    """Issue 11: an LLM preset left the token embedding fp32 and untied the LM head."""
    from lowbit.nn import QuantEmbedding, QuantLinear
    from lowbit.recipes import get_recipe
    from lowbit_testkit.models import tiny_llama

    model = tiny_llama(tie_word_embeddings=True)
    for preset in ("w4a16-g32", "w8a16", "nf4", "w4a16-g32-asym-gptq"):
        assert get_recipe(preset).embeddings == "int8", preset
    qmodel = quantize(model, "w4a16-g32")
    assert isinstance(qmodel.model.embed_tokens, QuantEmbedding)
    assert isinstance(qmodel.lm_head, QuantLinear)
    assert qmodel.lm_head.weight is qmodel.model.embed_tokens.weight  # quantized once
    assert model_nbytes(qmodel) < 0.3 * model_nbytes(model)
    for recipe in (get_recipe("w4a16-g32").with_embeddings("float"), "w8a8-dynamic"):
        kept = quantize(model, recipe)
        assert type(kept.lm_head) is nn.Linear and type(kept.model.embed_tokens) is nn.Embedding
        assert kept.lm_head.weight is kept.model.embed_tokens.weight  # still tied, float


def test_embedding_formats_are_checked_when_the_recipe_is_built() -> None:
    from lowbit.recipes import get_recipe

    for bad in ("foo", "fp16", "float32"):
        with pytest.raises(InvalidSpecError, match=r"not an embedding format.*'float'"):
            get_recipe("w4a16-g128").with_embeddings(bad)
    assert get_recipe("w4a16-g128").with_embeddings("int4").embeddings == "int4"


def test_quantize_plans_once_even_after_fusion(monkeypatch) -> None:
    """Fusing keeps every planned name (a fused pair sits at its producer's name), so the
    plan made before fusing is the one used: ``plan_layers`` runs once per ``quantize``."""
    import importlib

    q = importlib.import_module("lowbit.recipes.quantize")  # the module, not the function
    calls = []
    real = q.plan_layers
    monkeypatch.setattr(q, "plan_layers", lambda *a: calls.append(1) or real(*a))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5)).eval()  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowbitWarning)  # few samples: fine for this check
        q.quantize(model, "int8-static", calib_data=[torch.randn(2, 3, 8, 8) for _ in range(3)])
    assert len(calls) == 1
