"""Which layers a recipe can reach, and why the others stay float.

torch's nn.MultiheadAttention is rewritten as ``lowbit.nn.SplitAttention`` first (its packed
q/k/v projection is not a module, and it reads ``out_proj.weight`` directly), so its
projections are quantized like any Linear. Layers left in float get a one-line reason that
``describe``, ``lowbit.kernels.explain`` and ``lowbit quantize`` show; layers that look
quantizable but are not (a Conv1d, a custom module's own weight matrix, an attention lowbit
cannot split) are also named in a LowbitWarning.
"""

from __future__ import annotations

import warnings

from torch import nn

from lowbit.errors import LowbitWarning
from lowbit.nn import SplitAttention
from lowbit.nn.attention import split_attention_unsupported
from lowbit.nn.replace import set_module
from lowbit.recipes.spec import Recipe

QUANTIZABLE = "lowbit quantizes nn.Linear, nn.Conv2d and (with embeddings='int8') nn.Embedding"


def reads_child_weights(parent: nn.Module) -> tuple[str, ...]:
    """Children whose weight ``parent`` reads as a tensor instead of calling them (a
    quantized weight there breaks its forward): data about torch's own modules."""
    if isinstance(parent, nn.MultiheadAttention):
        return ("out_proj",)  # F.multi_head_attention_forward(..., out_proj.weight, ...)
    if isinstance(parent, nn.TransformerEncoderLayer) and isinstance(
        parent.self_attn, nn.MultiheadAttention
    ):
        return ("linear1", "linear2")  # its fused fast path reads them
    return ()


def split_attention(model: nn.Module) -> nn.Module:
    """Replace every nn.MultiheadAttention lowbit can split by a SplitAttention (in place;
    returns the model, a new object when the model itself was one). nn.TransformerEncoder's
    nested-tensor fast path reads its layers' weights directly, so it is turned off."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention) and not split_attention_unsupported(module):
            model = set_module(model, name, SplitAttention.from_float(module))
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
    return model


def tied_to_embeddings(model: nn.Module) -> dict[str, str]:
    """Linear modules whose weight is an nn.Embedding's table (an LM head tied to the token
    embedding), as {linear name: embedding name}."""
    tables = {id(m.weight): n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    return {
        n: tables[id(m.weight)]
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and id(m.weight) in tables
    }


def _reason(model: nn.Module, name: str, module: nn.Module, recipe: Recipe | None) -> str:
    if recipe is not None and recipe.kind == "cast":
        return f"cast to {recipe.cast_dtype}"
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if name else None
    if parent is not None and child in reads_child_weights(parent):
        return (
            f"unsupported: its parent {type(parent).__name__} reads {child}.weight directly "
            "instead of calling it"
        )
    if isinstance(module, nn.MultiheadAttention):
        return f"unsupported: nn.MultiheadAttention, {split_attention_unsupported(module)}"
    tied = tied_to_embeddings(model).get(name)
    if tied is not None:
        return f"tied to {tied}'s table, which stays float"
    if isinstance(module, nn.Linear | nn.Conv2d):
        return "skipped by the recipe's rules"
    if isinstance(module, nn.Embedding):
        if recipe is not None and recipe.embeddings and recipe.spec_for(name) is None:
            return "skipped by the recipe's rules"
        return "embedding tables stay float unless embeddings='int8' (--embeddings int8)"
    if "norm" in type(module).__name__.lower():
        return "normalization weights stay float (elementwise, small)"
    if all(p.dim() < 2 for p in module.parameters(recurse=False)):
        return "elementwise parameters stay float"
    return f"unsupported: no quantized {type(module).__name__} ({QUANTIZABLE})"


def float_layers(model: nn.Module, recipe: Recipe | None, within: str = "") -> dict[str, str]:
    """{module name ("(root)" for the model itself): why it is float} for every module of
    ``model`` (or of its submodule ``within``) that holds its own parameters (a quantized
    model's float parts, or the float parts a recipe would leave)."""
    reasons = {}
    for local, module in model.get_submodule(within).named_modules():
        name = f"{within}.{local}" if within and local else within or local
        if next(module.parameters(recurse=False), None) is not None:
            reasons[name or "(root)"] = _reason(model, name, module, recipe)
    return reasons


def warn_unsupported(reasons: dict[str, str]) -> None:
    """One LowbitWarning naming every layer that stays float because lowbit cannot
    quantize it (not the ones left float on purpose)."""
    unsupported = {n: r for n, r in reasons.items() if r.startswith("unsupported")}
    if unsupported:
        listed = "; ".join(
            f"{n}: {r.removeprefix('unsupported: ')}" for n, r in unsupported.items()
        )
        warnings.warn(
            f"{len(unsupported)} layer(s) stay float: {listed}. lowbit.describe(model) lists "
            "every float layer",
            LowbitWarning,
            stacklevel=3,
        )
