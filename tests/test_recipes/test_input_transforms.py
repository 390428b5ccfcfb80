"""int8-dynamic-smooth on a post-LN encoder: the Linear layers that read one tensor share one
input transform, chosen by measured error, and a planted outlier channel is taken out of
the per-batch range, so the model is closer to float than int8-dynamic's."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.errors import InvalidSpecError
from lowbit.nn import QuantLinear
from lowbit.recipes.presets import INT8_CHANNEL
from lowbit.recipes.spec import ActivationSpec, QuantSpec, Recipe
from lowbit_testkit.models import tiny_bert

pytestmark = pytest.mark.filterwarnings("ignore:calibration data holds only")


def bert_with_a_spike() -> torch.nn.Module:
    """tiny_bert whose FFN has one hidden unit 40x louder (GELU output channel 7 spikes, as
    MiniLM's FFN down input does on [CLS]), its down projection turned down to match."""
    model = tiny_bert()
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.intermediate.dense.weight[7] *= 40
            layer.intermediate.dense.bias[7] = 20.0
            layer.output.dense.weight[:, 7] /= 40
    return model


def batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 128, (2, 16), generator=gen)} for _ in range(4)]


def cosine_to_float(model, qmodel, batch) -> float:
    with torch.no_grad():
        ref, out = model(**batch).last_hidden_state, qmodel(**batch).last_hidden_state
    return float(torch.nn.functional.cosine_similarity(out, ref, dim=-1).mean())


def test_one_transform_per_input_and_the_spike_out_of_the_range() -> None:
    model = bert_with_a_spike()
    q = lowbit.quantize(model, "int8-dynamic-smooth", calib_data=batches())
    block = q.encoder.layer[0]
    qkv = [block.attention.self.query, block.attention.self.key, block.attention.self.value]
    assert all(isinstance(m, QuantLinear) and m.mode == "dynamic" for m in qkv)
    scales = [m.input_scale for m in qkv]
    assert all(s is None for s in scales) or all(torch.equal(s, scales[0]) for s in scales)
    down = block.output.dense
    assert down.input_scale is not None and float(down.input_scale[7]) < 0.2  # shrunk or float
    plain = lowbit.quantize(model, "int8-dynamic")
    test = {"input_ids": torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(5))}
    assert cosine_to_float(model, q, test) > cosine_to_float(model, plain, test)


def test_the_algorithm_is_for_dynamic_layers_only() -> None:
    recipe = Recipe(
        "static-transform",
        "ptq",
        QuantSpec(INT8_CHANNEL, ActivationSpec("static"), "input-transform"),
    )
    with pytest.raises(InvalidSpecError, match="dynamic int8 layers"):
        lowbit.quantize(tiny_bert(), recipe, calib_data=batches())
