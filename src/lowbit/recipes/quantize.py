"""The model-level API: quantize(), describe(), prepare_qat() and convert().

This is the only code that walks a model. It never modifies the model it is given: every
function works on a deep copy.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.affine import QParams
from lowbit.formats.qtypes import IntType
from lowbit.nn import Add, QuantAdd, QuantConv2d, QuantEmbedding, QuantLinear, cast_model
from lowbit.nn.replace import set_module
from lowbit.observers.base import Observer
from lowbit.observers.hooks import ObserverHook
from lowbit.observers.registry import make_observer
from lowbit.progress import track
from lowbit.recipes.batches import collect_batches, observe_batches, run_batch
from lowbit.recipes.fuse import apply_fusions, find_fusions, fused_parts
from lowbit.recipes.layers import (
    float_layers,
    reads_child_weights,
    split_attention,
    tied_to_embeddings,
    warn_unsupported,
)
from lowbit.recipes.presets import get_recipe
from lowbit.recipes.spec import QuantSpec, Recipe, embedding_spec
from lowbit.recipes.trace import function_name, trace_flow
from lowbit.recipes.weights import quantize_weight

log = logging.getLogger(__name__)

ACTIVATION_QTYPE = IntType(8, False)  # quint8 per tensor, integer zero point (torch/ONNX)
# Float modules that accept torch's quantized tensors as they are, so int8 activations can
# stay int8 between quantized layers.
QUANT_TRANSPARENT = (
    nn.ReLU,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)
# Functions (called between modules) that take quantized tensors as they are.
QUANT_TRANSPARENT_FUNCTIONS = frozenset(
    {"flatten", "view", "reshape", "relu", "max_pool2d", "adaptive_avg_pool2d", "contiguous"}
)
FUSION_TOLERANCE = 1e-4
# What each observed slot of a module is, as ObserverHook arguments ("other": Add's 2nd input).
_SLOTS: dict[str, dict[str, Any]] = {
    "input": {"on": "input"},
    "other": {"on": "input", "arg": 1},
    "output": {"on": "output"},
}


@dataclass(frozen=True)
class PlanEntry:
    """A module to quantize and how."""

    name: str
    spec: QuantSpec


def plan_layers(model: nn.Module, recipe: Recipe) -> list[PlanEntry]:
    """Linear/Conv2d modules (or fused pairs) the recipe quantizes, in model order; the
    root itself when the model is a bare Linear or Conv2d (its name is ""). A Linear tied to
    an embedding table is not planned: it follows the table (``quantize_embeddings``)."""
    modules = dict(model.named_modules())
    inner = {
        f"{n}.0" for n, m in modules.items() if isinstance(m, nn.Sequential) and fused_parts(m)
    }
    tied = tied_to_embeddings(model)
    plan = []
    for name, module in modules.items():
        if name in inner or name in tied or fused_parts(module) is None:
            continue
        parent, _, child = name.rpartition(".")
        if name and child in reads_child_weights(modules[parent]):
            continue  # quantizing it would break the parent's forward (layers.py)
        if not name and not isinstance(module, nn.Conv2d | nn.Linear):
            continue  # a root Sequential(Linear, ReLU) keeps its class; its parts are planned
        spec = recipe.spec_for(name)
        if spec is not None:
            plan.append(PlanEntry(name, spec))
    return plan


def _table_quantized(module: nn.Module, table: str, recipe: Recipe) -> bool:
    """Whether ``module`` (an embedding, or a Linear tied to the embedding ``table``) gets the
    table's quantized rows under ``recipe``."""
    holds_table = isinstance(module, nn.Embedding) or (isinstance(module, nn.Linear) and table)
    return bool(holds_table and recipe.embeddings and recipe.spec_for(table) is not None)


def no_layer_error(model: nn.Module, recipe: Recipe) -> InvalidInputError:
    """The error for a model in which ``recipe`` plans no layer: it names the module kinds
    the model has and why each unsupported layer stays float."""
    kinds = sorted({type(m).__name__ for m in model.modules()})
    unsupported = {n: r for n, r in float_layers(model, recipe).items() if "unsupported" in r}
    why = "".join(
        f"; {n} stays float: {r.removeprefix('unsupported: ')}" for n, r in unsupported.items()
    )
    return InvalidInputError(
        "the model has no quantizable layer left after the recipe's rules (lowbit quantizes "
        f"nn.Linear and nn.Conv2d; this model has: {', '.join(kinds)}{why}); check the model "
        "or the recipe's skip patterns"
    )


def fuse_model(model: nn.Module, example: Any) -> None:
    """Fuse Conv/Linear + BatchNorm + ReLU in place; check the float outputs did not change."""
    groups = find_fusions(model, trace_flow(model, example))
    if not groups:
        return
    with torch.no_grad():
        before = run_batch(model, example)
    apply_fusions(model, groups)
    with torch.no_grad():
        after = run_batch(model, example)
    if isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor):
        err = float((after - before).abs().max())
        ref = float(before.abs().max()) or 1.0
        if err > FUSION_TOLERANCE * ref:
            raise InvalidInputError(
                f"fusing {[g.producer for g in groups]} changed the float output by {err:.3g}; "
                "the model's forward probably reuses a module's output outside the traced "
                "chain. Quantize without fusion: lowbit.quantize(..., fuse=False)"
            )
    log.info("fused %d groups: %s", len(groups), groups)


def _calibrate(
    model: nn.Module, plan: list[PlanEntry], batches: list[Any], model_outputs: set[str]
) -> dict[str, dict[str, QParams]]:
    """Observe inputs and outputs of static modules and of ``Add`` modules; returns their
    QParams by module name: {"input", "output"} (Add: also "other", its second input).

    Layers whose output is the model's output (logits) are observed with min/max whatever
    the recipe's observer: clipping the largest logits changes the model's decisions."""
    static = [e for e in plan if e.spec.activation.mode == "static"]
    observers: dict[str, dict[str, Observer]] = {}
    for entry in static:
        a = entry.spec.activation
        out_name = "minmax" if entry.name in model_outputs else a.observer
        out_options = {} if entry.name in model_outputs else dict(a.observer_options)
        observers[entry.name] = {
            "input": make_observer(a.observer, **dict(a.observer_options)),
            "output": make_observer(out_name, **out_options),
        }
    a = static[0].spec.activation
    for name, module in model.named_modules():
        if isinstance(module, Add):
            observers[name] = {
                k: make_observer(a.observer, **dict(a.observer_options)) for k in _SLOTS
            }
    hooks = [
        ObserverHook(model.get_submodule(name), obs, **_SLOTS[slot])
        for name, per_slot in observers.items()
        for slot, obs in per_slot.items()
    ]
    observe_batches(model, hooks, batches, "calibrating")
    return {
        name: {
            slot: obs.qparams(ACTIVATION_QTYPE, symmetric=False, form="zero_point")
            for slot, obs in per_slot.items()
        }
        for name, per_slot in observers.items()
    }


def _convert_module(
    module: nn.Module, spec: QuantSpec, qparams: dict[str, QParams] | None
) -> nn.Module:
    parts = fused_parts(module)
    assert parts is not None
    float_module, relu = parts
    weight = quantize_weight(float_module.weight, spec.weight)
    kwargs: dict[str, Any] = {"mode": spec.activation.mode, "relu": relu}
    if qparams is not None:
        kwargs["input_qparams"], kwargs["output_qparams"] = qparams["input"], qparams["output"]
    cls = QuantConv2d if isinstance(float_module, nn.Conv2d) else QuantLinear
    if spec.activation.per_token and cls is QuantLinear:
        kwargs["per_token"] = True
        kwargs["token_zero_point"] = spec.activation.token_zero_point
    return cls.from_float(float_module, weight, **kwargs)


def keep_int8_between_layers(model: nn.Module, example: Any) -> str:
    """Let static modules hand int8 tensors straight to the next int8 module when every
    consumer of their output can take them (seen on a traced pass of ``example``, then
    checked by running it). Returns a sentence for describe()."""
    int8_modules = (QuantLinear, QuantConv2d, QuantAdd)
    modules = dict(model.named_modules())
    static = [
        n
        for n, m in modules.items()
        if isinstance(m, int8_modules) and getattr(m, "mode", "static") == "static"
    ]
    for name in static:
        modules[name].keep_quantized_output = False
    flow = trace_flow(model, example, atomic=int8_modules)

    def accepts_int8(name: str, seen: frozenset = frozenset()) -> bool:
        users = flow.consumers.get(name, [])
        if not users or name in flow.output_is_model_output or name in seen:
            return False
        for user in users:
            if user in static:
                continue
            transparent = isinstance(modules.get(user), QUANT_TRANSPARENT) or (
                function_name(user) in QUANT_TRANSPARENT_FUNCTIONS
            )
            if transparent and accepts_int8(user, seen | {name}):
                continue
            return False
        return True

    for name in static:
        modules[name].keep_quantized_output = accepts_int8(name)
    try:
        with torch.no_grad():
            out = run_batch(model, example)
        if isinstance(out, torch.Tensor) and out.is_quantized:
            raise RuntimeError("the model output is still quantized")
    except (RuntimeError, NotImplementedError, InvalidInputError) as exc:
        for name in static:
            modules[name].keep_quantized_output = False
        log.info("int8 hand-over disabled: %s", exc)
        return f"each static module dequantizes its output ({exc})"
    kept = sum(modules[n].keep_quantized_output for n in static)
    return (
        f"int8 activations pass directly between layers at {kept} of {len(static)} static modules"
    )


def shard_batches(batches: list[Any], plan: list[PlanEntry]) -> list[Any]:
    """This process's share of the calibration batches when torch.distributed runs several
    (batch i goes to process i mod N; the statistics are combined per layer, see
    observers/processes.py); all of them otherwise. Row samples (AWQ) are numbered as in all
    the data, from the batches' token counts (processes.set_shard_rows)."""
    from lowbit.observers.processes import rank, set_shard_rows, world_size

    n = world_size()
    set_shard_rows(None)
    if n == 1:
        return batches
    if len(batches) < n:
        raise InvalidInputError(
            f"{len(batches)} calibration batches for {n} processes: give at least one per "
            "process (--samples)"
        )
    if any(e.spec.algorithm == "awq" for e in plan):
        tokens = [batch_tokens(b) for b in batches]
        starts = [sum(tokens[:i]) for i in range(len(tokens))]
        set_shard_rows([(starts[i], tokens[i]) for i in range(rank(), len(batches), n)])
    return batches[rank() :: n]


def batch_tokens(batch: Any) -> int:
    """Tokens in a batch of token ids (a tensor or input_ids=): the rows each Linear of a
    transformer block sees for it."""
    ids = batch.get("input_ids") if isinstance(batch, dict) else batch
    if not isinstance(ids, torch.Tensor):
        raise InvalidInputError(
            "this calibration needs batches of token ids (a tensor or input_ids=) to count "
            "tokens; give token batches, or run in one process without --max-memory"
        )
    return int(ids.numel())


def _quantize_calibrated_blocks(
    model: nn.Module, plan: list[PlanEntry], calib_data: Iterable[Any] | None
) -> None:
    """GPTQ / AWQ / SmoothQuant: block-wise calibration of the Linear layers inside the
    model's transformer blocks. Layers outside the blocks (the LM head, a pooler) are
    quantized with round-to-nearest, as GPTQ and AWQ tools do."""
    from lowbit.observers.processes import set_shard_rows
    from lowbit.recipes.blockwise import quantize_blockwise

    batches = shard_batches(collect_batches(calib_data), plan)
    inside = block_plan(model, plan)
    try:
        quantize_blockwise(model, inside, batches)
    finally:
        set_shard_rows(None)
    quantize_outside_blocks(model, plan, inside)


def block_plan(model: nn.Module, plan: list[PlanEntry]) -> dict[str, QuantSpec]:
    """The planned layers inside the model's transformer blocks, by name."""
    from lowbit.recipes.blocks import find_blocks

    prefix, _ = find_blocks(model)
    return {e.name: e.spec for e in plan if e.name.startswith(prefix + ".")}


def quantize_outside_blocks(
    model: nn.Module, plan: list[PlanEntry], inside: dict[str, QuantSpec]
) -> None:
    """Round-to-nearest for the planned layers outside the blocks (an LM head, a pooler),
    as GPTQ and AWQ tools do."""
    for entry in plan:
        if entry.name not in inside:
            rtn = QuantSpec(entry.spec.weight, entry.spec.activation)
            set_module(
                model, entry.name, _convert_module(model.get_submodule(entry.name), rtn, None)
            )


def quantize(
    model: nn.Module,
    recipe: str | Recipe,
    calib_data: Iterable[Any] | None = None,
    *,
    fuse: bool = True,
) -> nn.Module:
    """A quantized copy of ``model`` (the input is never modified).

    Args:
        model: any nn.Module; its nn.Linear and nn.Conv2d layers are quantized, residual
            adds written as ``lowbit.nn.Add`` too (static recipes).
        recipe: a preset name (``lowbit.recipes.PRESETS``: "int8-dynamic", "int8-static",
            "int8-static:entropy", "w4a16-g32", "nf4", ...) or a Recipe.
        calib_data: iterable of input batches (tensor, tuple of positional inputs, or dict of
            keyword inputs); required by static recipes, 100+ samples recommended.
        fuse: fold BatchNorm and fuse ReLU into the layer before (static recipes).
    """
    recipe = get_recipe(recipe)
    if recipe.kind == "qat":
        raise InvalidSpecError(
            f"{recipe.name!r} is a QAT recipe: use lowbit.prepare_qat(model, ...), train, "
            "then lowbit.convert(model)"
        )
    qmodel = copy.deepcopy(model).eval()
    if recipe.kind == "cast":
        return _finish(cast_model(qmodel, getattr(torch, recipe.cast_dtype or "")), recipe)
    qmodel = split_attention(qmodel)
    plan = plan_layers(qmodel, recipe)
    if not plan:
        raise no_layer_error(qmodel, recipe)
    if any(e.spec.algorithm != "rtn" for e in plan):
        _quantize_calibrated_blocks(qmodel, plan, calib_data)
        quantize_embeddings(qmodel, recipe)
        return _finish(qmodel, recipe)
    static = any(e.spec.activation.mode == "static" for e in plan)
    calibrated: dict[str, dict[str, QParams]] = {}
    batches = None
    if static or calib_data is not None:
        batches = collect_batches(calib_data, warn=static)
        if fuse:
            fuse_model(qmodel, batches[0])  # the plan stays valid: a fused pair keeps its name
    if static:
        outputs = trace_flow(qmodel, batches[0]).output_is_model_output
        model_outputs = {e.name for e in plan if {e.name, f"{e.name}.1"} & outputs}
        calibrated = _calibrate(qmodel, plan, batches, model_outputs)
    for entry in track(plan, "quantizing", total=len(plan)):
        qparams = calibrated.get(entry.name)
        new = _convert_module(qmodel.get_submodule(entry.name), entry.spec, qparams)
        qmodel = set_module(qmodel, entry.name, new)
    for name, module in list(qmodel.named_modules()):
        if isinstance(module, Add) and name in calibrated:
            q = calibrated[name]
            quant_add = QuantAdd.from_float(
                module,
                output_qparams=q["output"],
                input_qparams=q["input"],
                other_qparams=q["other"],
            )
            set_module(qmodel, name, quant_add)
    if static:
        qmodel.lowbit_notes = [keep_int8_between_layers(qmodel, batches[0])]  # type: ignore[assignment]
    quantize_embeddings(qmodel, recipe)
    return _finish(qmodel, recipe)


def _finish(qmodel: nn.Module, recipe: Recipe) -> nn.Module:
    """Record the recipe and the float layers (with reasons) on the model; warn about the
    layers lowbit could not quantize."""
    qmodel.lowbit_recipe = recipe.to_dict()  # type: ignore[assignment]
    qmodel.lowbit_float_layers = float_layers(qmodel, recipe)  # type: ignore[assignment]
    warn_unsupported(qmodel.lowbit_float_layers)  # type: ignore[arg-type]
    return qmodel


def quantize_embeddings(model: nn.Module, recipe: Recipe) -> None:
    """With ``recipe.embeddings`` ("int8"), every nn.Embedding table is quantized per row
    (an embedding table is often the largest tensor of a model). A Linear tied to a table
    (an LM head) gets the same QTensor, float activations: one tensor, quantized and stored
    once (per row of the table = per output channel of the head)."""
    if recipe.embeddings is None:
        return
    spec = embedding_spec(recipe.embeddings)
    tied = tied_to_embeddings(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Embedding) and recipe.spec_for(name) is not None:
            weight = quantize_weight(module.weight, spec)
            set_module(model, name, QuantEmbedding.from_float(module, weight))
            for head in (h for h, table in tied.items() if table == name):
                set_module(model, head, QuantLinear.from_float(model.get_submodule(head), weight))


def describe(model: nn.Module, recipe: str | Recipe | None = None) -> list[dict[str, Any]]:
    """Which module got which treatment, in model order: one row per quantized module and
    one per module left in float (every module with its own parameters), with the reason
    ("reason": "skipped by the recipe's rules", "unsupported: no quantized Conv1d ...").

    With ``recipe``, describes what ``quantize`` would do to the float ``model`` ("spec").
    """
    if recipe is not None:
        return _describe_plan(model, get_recipe(recipe))
    reasons = getattr(model, "lowbit_float_layers", None)
    if reasons is None:
        saved = getattr(model, "lowbit_recipe", None)
        reasons = float_layers(model, Recipe.from_dict(saved) if saved else None)
    rows: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        key = name or "(root)"
        if hasattr(module, "kernel_report"):
            report = module.kernel_report()
            weight = getattr(module, "weight", None)
            rows.append(
                {
                    "module": key,
                    "type": type(module).__name__,
                    "weight": report["weight"],
                    "mode": report["mode"],
                    "kernel": report["kernel"],
                    "bits_per_weight": None if weight is None else round(weight.bits_per_weight, 3),
                    "bytes": None if weight is None else weight.nbytes,
                }
            )
        elif key in reasons:
            dtype = next(module.parameters(recurse=False)).dtype
            rows.append(
                {
                    "module": key,
                    "type": type(module).__name__,
                    "weight": str(dtype).removeprefix("torch."),
                    "mode": "float",
                    "kernel": "torch (float)",
                    "reason": reasons[key],
                }
            )
    return rows


def _describe_plan(model: nn.Module, recipe: Recipe) -> list[dict[str, Any]]:
    if recipe.kind == "ptq" and any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        model = split_attention(copy.deepcopy(model))
    planned = {e.name: e.spec for e in plan_layers(model, recipe)} if recipe.kind == "ptq" else {}
    reasons = float_layers(model, recipe)
    tied = tied_to_embeddings(model)
    rows: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        key, kind = name or "(root)", type(module).__name__
        table = tied.get(name, name if isinstance(module, nn.Embedding) else "")
        if name in planned:
            rows.append({"module": key, "type": kind, "spec": planned[name].describe()})
        elif _table_quantized(module, table, recipe):
            table_spec = embedding_spec(recipe.embeddings or "")
            spec = table_spec.describe().replace("per-channel", "per row")
            spec += f" (tied to {table})" if name in tied else ""
            rows.append({"module": key, "type": kind, "spec": spec})
        elif key in reasons:
            rows.append({"module": key, "type": kind, "spec": "float", "reason": reasons[key]})
    return rows
