"""Block-wise calibration: blocks are found by structure, the first block's inputs are
captured at its boundary, and running blocks one by one equals the full forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.recipes.batches import run_batch
from lowbit.recipes.blocks import BlocksNotFoundError, calibrate_blocks, find_blocks
from lowbit.recipes.blockwise import _scale_groups, scale_groups
from lowbit.recipes.presets import get_recipe
from lowbit_testkit.models import tiny_bert
from lowbit_testkit.models import tiny_llama as make_tiny_llama


def tiny_llama() -> nn.Module:
    return make_tiny_llama(vocab_size=128, num_hidden_layers=3)


def test_blocks_are_found_by_known_names_and_by_structure() -> None:
    assert find_blocks(tiny_llama())[0] == "model.layers"
    assert find_blocks(tiny_bert())[0] == "encoder.layer"

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stages = nn.ModuleList(nn.Sequential(nn.Linear(4, 4)) for _ in range(3))

    assert find_blocks(Custom())[0] == "stages"
    with pytest.raises(BlocksNotFoundError, match="KNOWN_BLOCK_LISTS"):
        find_blocks(nn.Sequential(nn.Linear(3, 3)))


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert])
def test_block_by_block_equals_the_full_forward(make) -> None:
    model = make()
    batches = [torch.randint(0, 128, (2, 12)) for _ in range(3)]
    _, blocks = find_blocks(model)
    full: list[torch.Tensor] = []
    handle = blocks[-1].register_forward_hook(
        lambda m, a, out: full.append(out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        for b in batches:
            model(input_ids=b)
    handle.remove()
    seen: list[str] = []
    final = calibrate_blocks(model, batches, lambda name, block, inputs: seen.append(name))
    assert seen == [f"{find_blocks(model)[0]}.{i}" for i in range(len(blocks))]
    assert len(final) == len(full)
    for call, ref in zip(final, full, strict=True):
        assert torch.equal(call.args[0], ref)


def first_block_inputs(model: nn.Module, n: int = 2):
    batches = [torch.randint(0, 128, (1, 8)) for _ in range(n)]
    seen = {}

    def step(name, block, inputs):
        seen.setdefault("block", (block, inputs))

    calibrate_blocks(model, batches, step)
    return seen["block"]


def test_scale_groups_of_a_llama_block() -> None:
    block, inputs = first_block_inputs(tiny_llama())
    groups = dict(scale_groups(block, inputs[0]))
    assert groups == {
        "input_layernorm": ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"],
        "post_attention_layernorm": ["mlp.gate_proj", "mlp.up_proj"],
        "mlp.up_proj": ["mlp.down_proj"],  # act(gate) * up -> down: exact through the product
    }


def test_a_post_norm_block_with_gelu_has_no_scale_groups() -> None:
    # BERT: the LayerNorm output is also the residual, and intermediate -> GELU -> output is
    # not linear in the channels: scaling there would change the model.
    block, inputs = first_block_inputs(tiny_bert())
    assert scale_groups(block, inputs[0]) == []


@pytest.mark.parametrize("preset", ["w4a16-g32-awq", "w8a8-smoothquant"])
def test_folded_scales_leave_the_float_block_unchanged(preset: str) -> None:
    block, inputs = first_block_inputs(tiny_llama(), n=4)

    def hidden(call):
        with torch.no_grad():
            out = run_batch(block, call)
        return out[0] if isinstance(out, tuple) else out

    before = [hidden(call) for call in inputs]
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    spec = get_recipe(preset).spec
    down_before = linears["mlp.down_proj"].weight.detach().clone()
    _scale_groups(block, inputs, linears, dict.fromkeys(linears, spec))
    assert not torch.equal(linears["mlp.down_proj"].weight, down_before)  # it was scaled
    for call, ref in zip(inputs, before, strict=True):
        torch.testing.assert_close(hidden(call), ref, rtol=1e-4, atol=1e-5)


def test_gptq_hessians_do_not_depend_on_the_order_of_the_batches() -> None:
    """GPTQ amplifies last-bit differences of H, so the H it gets must be the same for any
    order of the calibration batches (reordered, or split over processes): float32 sums of
    these batches differ with the order, the pipeline's float64 sums rounded once do not."""
    from lowbit.observers import HessianObserver
    from lowbit.recipes.blockwise import _hessians

    block, inputs = first_block_inputs(tiny_llama(), n=12)
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    specs = dict.fromkeys(linears, get_recipe("w4a16-g32-gptq").spec)
    forward = _hessians(block, inputs, linears, specs)
    backward = _hessians(block, inputs[::-1], linears, specs)
    for name in linears:
        assert forward[name].dtype == torch.float32
        assert torch.equal(forward[name], backward[name]), name
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(64, 32, generator=g) * torch.logspace(-2, 2, 32) for _ in range(12)]
    sums = []
    for order in (rows, rows[::-1]):
        obs = HessianObserver(dtype=torch.float32)
        for x in order:
            obs.observe(x)
        sums.append(obs.hessian())
    assert not torch.equal(*sums)  # what float32 sums would have given


@pytest.mark.parametrize(
    "preset", ["w4a16-g32-gptq", "w4a16-g32-awq", "w8a8-smoothquant", "w3a16-g32-asym-gptq"]
)
def test_calibrated_presets_quantize_every_block_linear(preset) -> None:
    import warnings

    from lowbit.eval.metrics import sqnr_db
    from lowbit.nn import QuantLinear
    from lowbit.recipes import quantize

    model = tiny_llama()
    batches = [torch.randint(0, 128, (1, 32)) for _ in range(8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 8 samples: the small-calibration warning
        qmodel = quantize(model, preset, calib_data=batches)
    linears = [n for n, m in qmodel.named_modules() if isinstance(m, nn.Linear)]
    assert linears == []  # every Linear, in blocks and the head, is quantized
    assert all(
        isinstance(m, QuantLinear)
        for n, m in qmodel.named_modules()
        if n.endswith(("q_proj", "down_proj", "lm_head"))
    )
    x = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        assert sqnr_db(model(x).logits, qmodel(x).logits) > 5
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear  # input untouched


def test_generate_works_on_a_quantized_causal_lm() -> None:
    from lowbit.recipes import quantize

    model = tiny_llama()
    qmodel = quantize(model, "w4a16-g32")
    ids = torch.randint(0, 128, (1, 5))
    out = qmodel.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape == (1, 9) and torch.equal(out[:, :5], ids)


def test_smoothquant_that_scales_nothing_says_so_once(caplog) -> None:
    """SmoothQuant/AWQ on a block with no place to fold scales is plain rounding: lowbit
    says so in one warning for the same layers of every block, instead of reporting it
    done; llama's unscaled o_proj beside scaled layers is only logged."""
    import logging
    import warnings

    import lowbit
    from lowbit.errors import LowbitWarning

    calib = [torch.randint(0, 128, (1, 16)) for _ in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        lowbit.quantize(tiny_bert(), "w8a8-smoothquant", calib_data=calib)
    said = [str(w.message) for w in caught if issubclass(w.category, LowbitWarning)]
    said = [m for m in said if "did nothing" in m]
    assert len(said) == 1, said
    assert "attention.self.query, attention.self.key" in said[0]
    assert "encoder.layer.*" in said[0]

    with (
        caplog.at_level(logging.INFO, logger="lowbit.recipes.blockwise"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("default")
        lowbit.quantize(tiny_llama(), "w4a16-g32-awq", calib_data=calib)
    assert not [w for w in caught if "did nothing" in str(w.message)]
    assert "self_attn.o_proj in model.layers.*" in caplog.text
    assert "mlp.down_proj" not in caplog.text
