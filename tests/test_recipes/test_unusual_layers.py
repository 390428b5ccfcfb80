"""Models a user brings that are not plain Linear/Conv stacks (issue 11): torch's own
attention and encoder layers, every padding nn.Conv2d has, a bare Linear or Conv2d as the
whole model. Every preset quantizes them, the forward runs and stays close to float; what
stays float is named."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from lowbit.errors import LowbitWarning
from lowbit.eval.metrics import sqnr_db
from lowbit.io import load, save
from lowbit.kernels import explain
from lowbit.nn import QuantConv2d, QuantLinear
from lowbit.recipes import PRESETS, convert, describe, prepare_qat, quantize
from lowbit.recipes.blocks import BlocksNotFoundError
from lowbit_testkit.models import calibrates_blocks

# SmoothQuant, GPTQ, AWQ and the input transforms calibrate transformer blocks; these
# models have none.
PRESETS_WITHOUT_BLOCKS = [p for p in PRESETS if not calibrates_blocks(p)] + ["w8a16", "w4a16-g32"]
FLOOR_DB = {"binary": -10.0, "ternary": -5.0, "nf4": 10.0, "w4a16-g32": 12.0, "bf16": 25.0}


def run_preset(model: nn.Module, preset: str, batches: list) -> nn.Module:
    """``quantize`` (or prepare_qat, a few training steps' statistics, convert)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowbitWarning)  # few calibration samples
        if preset != "int8-qat":
            return quantize(model, preset, calib_data=batches)
        qat = prepare_qat(model, preset, example_inputs=batches[0])
        with torch.no_grad():
            for batch in batches:
                qat(*batch) if isinstance(batch, tuple) else qat(batch)
        return convert(qat)


def assert_close_to_float(model: nn.Module, qmodel: nn.Module, x, preset: str) -> None:
    with torch.no_grad():
        ref = model(*x) if isinstance(x, tuple) else model(x)
        out = qmodel(*x) if isinstance(x, tuple) else qmodel(x)
    ref, out = (ref[0], out[0]) if isinstance(ref, tuple) else (ref, out)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert sqnr_db(ref, out) > FLOOR_DB.get(preset, 20.0), preset


def padded_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(8, 8, 4, padding="same", dilation=2, padding_mode="replicate"),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding="same"),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 5),
    ).eval()


@pytest.mark.parametrize("preset", PRESETS_WITHOUT_BLOCKS)
def test_every_conv_padding_is_quantized(preset: str) -> None:
    model = padded_cnn()
    batches = list(torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1)).split(16))
    qmodel = run_preset(model, preset, batches)
    if preset not in ("fp16", "bf16"):
        assert all(isinstance(qmodel[i], QuantConv2d) for i in (0, 2, 4, 6))
    assert_close_to_float(model, qmodel, batches[0], preset)


@pytest.mark.parametrize("root", [nn.Linear(12, 6), nn.Conv2d(2, 4, 3, padding="same")])
@pytest.mark.parametrize("preset", PRESETS_WITHOUT_BLOCKS)
def test_a_bare_layer_as_the_whole_model_is_quantized(
    root: nn.Module, preset: str, tmp_path
) -> None:
    model = root.eval()
    shape = (16, 12) if isinstance(root, nn.Linear) else (16, 2, 5, 5)
    batches = list(torch.randn(*shape, generator=torch.Generator().manual_seed(1)).split(8))
    qmodel = run_preset(model, preset, batches)
    if preset in ("fp16", "bf16"):
        assert type(qmodel) is type(model)
    else:
        assert isinstance(qmodel, QuantLinear if isinstance(root, nn.Linear) else QuantConv2d)
        assert [row["module"] for row in describe(qmodel)] == ["(root)"]
    assert_close_to_float(model, qmodel, batches[0], preset)
    # and it survives save/load (the root was once not saved: the folder did not load)
    folder = save(qmodel, tmp_path / "bare")
    loaded = load(folder, copy.deepcopy(model))
    assert type(loaded) is type(qmodel)
    assert torch.equal(loaded(batches[0]), qmodel(batches[0]))


def attention_models() -> dict[str, tuple[nn.Module, list]]:
    """torch's MultiheadAttention (called as (q, k, v)), an encoder layer, and an encoder
    stack (its blocks let SmoothQuant/GPTQ calibrate), each with calibration batches."""
    torch.manual_seed(0)
    x = list(torch.randn(32, 6, 16, generator=torch.Generator().manual_seed(1)).split(8))
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return {
        "mha": (nn.MultiheadAttention(16, 2, batch_first=True).eval(), [(b, b, b) for b in x]),
        "encoder_layer": (layer.eval(), x),
        "encoder": (nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), x),
    }


@pytest.mark.parametrize("name", ["mha", "encoder_layer", "encoder"])
@pytest.mark.parametrize("preset", [*PRESETS, "w8a16", "w4a16-g32", "w4a16-g32-gptq"])
def test_torch_attention_layers_run_after_every_preset(name: str, preset: str) -> None:
    model, batches = attention_models()[name]
    if name != "encoder" and calibrates_blocks(preset):
        # block-wise calibration needs a list of blocks (nn.TransformerEncoder has one): a
        # lone layer is refused up front with the fix named, never half quantized
        with pytest.raises(BlocksNotFoundError, match="blocks"):
            run_preset(model, preset, batches)
        return
    qmodel = run_preset(model, preset, batches)
    assert_close_to_float(model, qmodel, batches[0], preset)
    if preset not in ("fp16", "bf16"):
        kernels = {row.module: row.kernel for row in explain(qmodel)}
        attention = (
            ""
            if name == "mha"
            else "self_attn."
            if name == "encoder_layer"
            else "layers.0.self_attn."
        )
        assert kernels[f"{attention}out_proj"] != "torch (float)"  # the projections are quantized
        assert kernels[f"{attention}q_proj"] != "torch (float)"


def test_attention_lowbit_cannot_split_stays_float_and_is_named() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj, self.attn = nn.Linear(8, 8), nn.MultiheadAttention(8, 2, add_bias_kv=True)

        def forward(self, x):
            h = self.proj(x)
            return self.attn(h, h, h)[0]

    torch.manual_seed(0)
    model = Model().eval()
    with pytest.warns(LowbitWarning, match=r"attn: nn\.MultiheadAttention, its bias_k"):
        qmodel = quantize(model, "w8a16")
    x = torch.randn(5, 3, 8)
    assert sqnr_db(model(x), qmodel(x)) > 30
    rows = {row["module"]: row for row in describe(qmodel)}
    assert rows["proj"]["kernel"] != "torch (float)"
    assert "bias_k" in rows["attn"]["reason"]
    assert "reads out_proj.weight directly" in rows["attn.out_proj"]["reason"]
    assert "bias_k" in {row.module: row.why for row in explain(qmodel)}["attn"]


def test_describe_names_every_float_layer_and_why() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.matrix = nn.Parameter(torch.randn(8, 8))

        def forward(self, x):
            return x @ self.matrix

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.conv1d = nn.Conv1d(8, 8, 3, padding=1)
            self.custom = Custom()
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 4)
            self.skipped = nn.Linear(4, 4)

        def forward(self, ids):
            h = self.conv1d(self.embed(ids).transpose(1, 2)).transpose(1, 2)
            return self.skipped(self.head(self.norm(self.custom(h))))

    from lowbit.recipes import get_recipe

    recipe = get_recipe("int8-dynamic").skip("skipped")
    with pytest.warns(LowbitWarning, match="2 layer") as record:
        qmodel = quantize(Model().eval(), recipe)
    assert "conv1d" in str(record[0].message) and "custom" in str(record[0].message)
    for rows in (describe(qmodel), describe(Model(), recipe)):
        reasons = {row["module"]: row.get("reason") for row in rows}
        assert "embeddings='int8'" in reasons["embed"]
        assert "no quantized Conv1d" in reasons["conv1d"]
        assert "no quantized Custom" in reasons["custom"]
        assert "normalization" in reasons["norm"]
        assert "rules" in reasons["skipped"]
        assert reasons["head"] is None
    why = {row.module: row.why for row in explain(qmodel)}
    assert "no quantized Conv1d" in why["conv1d"]
