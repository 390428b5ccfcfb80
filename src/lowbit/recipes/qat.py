"""Quantization-aware training at model level: prepare_qat() inserts fake quantization,
the user trains, convert() builds the same int8 modules post-training quantization builds.

BatchNorm is folded into the layer before it at prepare time (its running statistics are
frozen from then on); see docs/decisions.md.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.affine import quantize as quantize_codes
from lowbit.formats.qtypes import get_qtype
from lowbit.nn import QuantConv2d, QuantLinear
from lowbit.nn.qat import QATConv2d, QATLinear, QATOptions
from lowbit.nn.replace import set_module
from lowbit.recipes.fuse import fused_parts
from lowbit.recipes.layers import split_attention
from lowbit.recipes.presets import get_recipe
from lowbit.recipes.quantize import (
    fuse_model,
    keep_int8_between_layers,
    no_layer_error,
    plan_layers,
)
from lowbit.recipes.spec import Recipe
from lowbit.tensors import IntPackedTensor


def prepare_qat(
    model: nn.Module,
    recipe: str | Recipe = "int8-qat",
    example_inputs: Any = None,
    *,
    learnable: bool = False,
) -> nn.Module:
    """A copy of ``model`` with fake-quantized Linear/Conv2d layers, in train mode.

    Args:
        model: the float model (not modified).
        recipe: "int8-qat" or a Recipe of kind "qat" (weight bits from its spec).
        example_inputs: one input batch; needed to find Conv/Linear + BatchNorm + ReLU chains
            to fuse (a model with BatchNorm layers requires it).
        learnable: LSQ learned step sizes instead of moving-average ranges.
    """
    recipe = get_recipe(recipe)
    if recipe.kind != "qat" or recipe.spec is None:
        raise InvalidSpecError(
            f"prepare_qat needs a QAT recipe such as 'int8-qat', got {recipe.name!r}"
        )
    qmodel = copy.deepcopy(model).eval()
    has_bn = any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in qmodel.modules())
    if example_inputs is not None:
        fuse_model(qmodel, example_inputs)
    elif has_bn:
        raise InvalidInputError(
            "the model has BatchNorm layers, which QAT folds into the layer before: pass "
            "example_inputs=<one input batch> so lowbit can find them"
        )
    qmodel = split_attention(qmodel)
    plan = plan_layers(qmodel, recipe)
    if not plan:
        raise no_layer_error(qmodel, recipe)
    for entry in plan:
        float_module, relu = fused_parts(qmodel.get_submodule(entry.name))
        cls = QATConv2d if isinstance(float_module, nn.Conv2d) else QATLinear
        bits = get_qtype(entry.spec.weight.format).bits
        options = QATOptions(weight_bits=bits, relu=relu, quantize_output=True, learnable=learnable)
        qat = cls(float_module, options)
        qmodel = set_module(qmodel, entry.name, qat)
    qmodel.lowbit_recipe = recipe.to_dict()  # type: ignore[assignment]
    return qmodel.train()


def convert(model: nn.Module, example_inputs: Any = None) -> nn.Module:
    """The int8 model a QAT-trained ``model`` simulates (a copy; ``model`` is not modified).

    With ``example_inputs``, int8 activations pass directly between int8 layers where the
    model allows it (checked on the example); without, each layer returns float.
    """
    qmodel = copy.deepcopy(model).eval()
    converted = 0
    for name, module in list(qmodel.named_modules()):
        if not isinstance(module, QATLinear | QATConv2d):
            continue
        state = module.qat_state()
        codes = quantize_codes(state.weight, state.weight_qparams)
        weight = IntPackedTensor.from_codes(codes, state.weight_qparams)
        if state.op == "conv2d":
            float_module: nn.Module = nn.Conv2d(
                module.in_channels,
                module.out_channels,
                module.kernel_size,
                bias=state.bias is not None,
                **state.conv,
            )
            cls: type = QuantConv2d
        else:
            float_module = nn.Linear(
                module.in_features, module.out_features, bias=state.bias is not None
            )
            cls = QuantLinear
        float_module.weight.data.copy_(state.weight)
        if state.bias is not None:
            float_module.bias.data.copy_(state.bias)
        qmodel = set_module(
            qmodel,
            name,
            cls.from_float(
                float_module,
                weight,
                mode="static",
                input_qparams=state.input_qparams,
                output_qparams=state.output_qparams,
                relu=state.relu,
            ),
        )
        converted += 1
    if not converted:
        raise InvalidInputError(
            "convert found no QAT layer: call lowbit.prepare_qat(model) first, then train"
        )
    if example_inputs is not None:
        qmodel.lowbit_notes = [keep_int8_between_layers(qmodel, example_inputs)]  # type: ignore[assignment]
    return qmodel
