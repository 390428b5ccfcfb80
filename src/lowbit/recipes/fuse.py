"""Fold BatchNorm into the Conv2d/Linear before it and fuse a following ReLU, as static int8
kernels expect (conv2d_relu, linear_relu). The pairs come from a traced forward pass
(``trace_flow``), so nothing depends on module names or registration order.

A fused group becomes, at the producer's name, the folded module (or
``nn.Sequential(folded, nn.ReLU())``); the BatchNorm and ReLU become ``nn.Identity``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.nn.replace import set_module
from lowbit.recipes.trace import ModuleFlow

# (producer type, batch-norm type) pairs that fold; data, not code per model.
FOLDABLE = ((nn.Conv2d, nn.BatchNorm2d), (nn.Linear, nn.BatchNorm1d))
FUSABLE_ACTIVATIONS = (nn.ReLU,)


@dataclass(frozen=True)
class FusedGroup:
    """Names of the modules that became one: producer, optional batch norm, optional relu."""

    producer: str
    batchnorm: str | None
    relu: str | None


def fold_batchnorm(module: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> nn.Module:
    """A copy of ``module`` whose output equals bn(module(x)) in eval mode:
    w' = w·γ/√(σ²+ε) per output channel, b' = (b − μ)·γ/√(σ²+ε) + β."""
    folded = copy.deepcopy(module)
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        factor = gamma / std
        shape = [-1] + [1] * (folded.weight.dim() - 1)
        folded.weight.mul_(factor.reshape(shape))
        bias = folded.bias if folded.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + beta
        folded.bias = nn.Parameter(new_bias.detach().clone())
    return folded


def _foldable(producer: nn.Module, bn: nn.Module) -> bool:
    for p_type, bn_type in FOLDABLE:
        if isinstance(producer, p_type) and isinstance(bn, bn_type):
            out = (
                producer.out_channels if isinstance(producer, nn.Conv2d) else producer.out_features
            )
            return bn.running_var is not None and bn.num_features == out
    return False


def find_fusions(model: nn.Module, flow: ModuleFlow) -> list[FusedGroup]:
    """Producer → BatchNorm → ReLU chains where each link is the only consumer of the one
    before and every module ran exactly once."""
    modules = dict(model.named_modules())
    groups = []
    for name in flow.order:
        producer = modules.get(name)
        if not isinstance(producer, nn.Conv2d | nn.Linear) or flow.calls[name] != 1:
            continue
        tail, bn_name, relu_name = name, None, None
        nxt = flow.only_consumer(tail)
        if nxt in modules and flow.calls[nxt] == 1 and _foldable(producer, modules[nxt]):
            bn_name, tail = nxt, nxt
            nxt = flow.only_consumer(tail)
        if (
            nxt in modules
            and flow.calls[nxt] == 1
            and isinstance(modules[nxt], FUSABLE_ACTIVATIONS)
        ):
            relu_name = nxt
        if bn_name or relu_name:
            groups.append(FusedGroup(name, bn_name, relu_name))
    return groups


def apply_fusions(model: nn.Module, groups: list[FusedGroup]) -> None:
    """Rewrite ``model`` in place (the caller works on its own copy)."""
    for g in groups:
        producer = model.get_submodule(g.producer)
        if g.batchnorm:
            producer = fold_batchnorm(producer, model.get_submodule(g.batchnorm))
            set_module(model, g.batchnorm, nn.Identity())
        if g.relu:
            producer = nn.Sequential(producer, nn.ReLU())
            set_module(model, g.relu, nn.Identity())
        set_module(model, g.producer, producer)


def fused_parts(module: nn.Module) -> tuple[nn.Module, bool] | None:
    """(Conv2d or Linear, relu?) for a quantizable module or a fused pair; else None."""
    if isinstance(module, nn.Conv2d | nn.Linear):
        return module, False
    if (
        isinstance(module, nn.Sequential)
        and len(module) == 2
        and isinstance(module[0], nn.Conv2d | nn.Linear)
        and isinstance(module[1], nn.ReLU)
    ):
        return module[0], True
    return None
