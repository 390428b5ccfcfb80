"""Per-layer sensitivity: how much each layer's quantization in each candidate format would
change the model's output, estimated for every (layer, format) pair from one set of
gradient passes, and measured for one format by quantizing that layer alone.

The output distance D is the mean KL divergence per position between the float model's
softmax and the quantized one's where the model returns logits (classifiers, language
models), and the relative squared error ``||y' - y||² / ||y||²`` where it returns other
values (embeddings). Around the float weights D is quadratic, ``D ≈ c·Δwᵀ G Δw`` with G the
Gauss-Newton matrix of the outputs; lowbit estimates diag(G) from gradients of the model's
outputs in random directions (logits: Gaussian directions shaped by the softmax's Hessian,
which gives the Fisher information; values: plain Gaussian directions) and scores a format
by ``c·Σ diag(G) Δw²`` (the diagonal Fisher weighting of SqueezeLLM, Kim et al. 2023; HAWQ,
Dong et al. 2019).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.errors import InvalidSpecError, UnsupportedFormatError
from lowbit.formats.blocks import BLOCK_TYPES, get_block_codec
from lowbit.formats.granularity import PerGroup
from lowbit.formats.sqnr import sqnr_db
from lowbit.progress import track
from lowbit.recipes.batches import collect_batches, run_batch
from lowbit.recipes.layers import split_attention
from lowbit.recipes.presets import get_recipe
from lowbit.recipes.quantize import plan_layers
from lowbit.recipes.spec import Recipe, WeightSpec, embedding_spec
from lowbit.recipes.weights import quantize_weight

DEFAULT_CANDIDATES = ("w8a16", "w4a16-g32", "w4a16-g128", "w3a16-g128", "w2a16-g64", "float")
EMBEDDINGS = "embeddings"  # every embedding table is one unit: a recipe has one table format
MEASURED_BATCHES = 2  # batches the single-layer measurement runs (float outputs are kept)


@dataclass(frozen=True)
class Candidate:
    """A format a layer may take: a weight-only preset ("w4a16-g128": ``weight`` is its
    spec), a GGUF block type ("q4_k": ``block`` is its ggml name, llama.cpp's own bytes), or
    "float" (the layer left as it is)."""

    name: str
    weight: WeightSpec | None = None
    block: str | None = None

    def table_format(self) -> str | None:
        """The Recipe.embeddings name an embedding table would get: the same code type and
        group ("int4-g32"), or per row where the candidate is per channel; None: float."""
        if self.weight is None:
            return None
        group = self.weight.granularity
        return self.weight.format + (f"-g{group.size}" if isinstance(group, PerGroup) else "")

    def _spec(self, table: bool) -> WeightSpec | None:
        name = self.table_format() if table else None
        return embedding_spec(name) if name is not None else self.weight

    def quantized(self, weight: torch.Tensor, *, table: bool = False) -> torch.Tensor | None:
        """``weight`` rounded to nearest in this format (``table``: as an embedding table),
        as float32; None where the format does not apply to the shape."""
        w = weight.detach().float()
        try:
            if self.block is not None:
                codec = get_block_codec(self.block)
                rows = w.reshape(-1, w.shape[-1])
                return codec.dequantize(codec.quantize(rows), rows.shape[1]).reshape(w.shape)
            spec = self._spec(table)
            if spec is None:
                return w
            return quantize_weight(w, spec).dequantize().reshape(w.shape)
        except (InvalidSpecError, UnsupportedFormatError):
            return None  # a group or block that does not divide the rows

    def nbytes(self, weight: torch.Tensor, *, table: bool = False) -> int:
        """Bytes of ``weight`` stored in this format (float: as it is)."""
        shape = tuple(weight.shape)
        if self.block is not None:
            return get_block_codec(self.block).nbytes(shape)
        spec = self._spec(table)
        if spec is None:
            return weight.numel() * weight.element_size()
        return spec.weight_format().for_shape(shape).nbytes(shape)


def parse_candidates(names: Iterable[str]) -> tuple[Candidate, ...]:
    """Candidates from weight-only preset names (w8a16, w4a16-g128, nf4-g64, ...), GGUF
    block types (q4_k, q6_k, q8_0, ...) and "float"; another name is refused with the
    grammar."""
    out = []
    for name in names:
        name = name.strip()
        if name == "float":
            out.append(Candidate(name))
            continue
        if name in BLOCK_TYPES:
            out.append(Candidate(name, block=name))
            continue
        spec = get_recipe(name).spec
        if spec is None or spec.activation.mode != "weight_only" or spec.algorithm != "rtn":
            raise InvalidSpecError(
                f"candidate {name!r} is not a weight-only format; candidates are weight-only "
                "preset names such as w8a16, w4a16-g128, w3a16-g64-asym, nf4-g64, GGUF block "
                "types (q4_k, q8_0, ...), or float"
            )
        out.append(Candidate(name, spec.weight))
    if len({c.name for c in out}) != len(out) or not out:
        raise InvalidSpecError(f"candidates must be distinct and not empty, got {list(names)}")
    return tuple(out)


@dataclass
class Option:
    """A candidate applied to one layer: exact bytes, SQNR of the weight, estimated D."""

    nbytes: int
    sqnr_db: float
    estimate: float
    measured: float | None = None


@dataclass
class LayerReport:
    """One layer (or the embedding tables together): what it holds and how each candidate
    would treat it."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    weight_range: tuple[float, float]
    outlier_ratio: float  # largest input channel's max |w| over the mean channel's
    input_range: tuple[float, float] | None = None
    options: dict[str, Option] = field(default_factory=dict)


@dataclass
class SensitivityReport:
    """Every layer's report, the distance measured (``"kl"`` or ``"relative_mse"``), and the
    bytes of everything the candidates do not cover (norms, biases: kept float)."""

    distance: str
    layers: list[LayerReport]
    fixed_bytes: int
    params: int
    candidates: tuple[Candidate, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (infinite SQNRs as None)."""

        def num(x: float | None) -> float | None:
            return None if x is None or x in (float("inf"), float("-inf")) else x

        return {
            "distance": self.distance,
            "fixed_bytes": self.fixed_bytes,
            "params": self.params,
            "candidates": [c.name for c in self.candidates],
            "layers": [
                {
                    "name": r.name,
                    "kind": r.kind,
                    "shape": list(r.shape),
                    "params": r.params,
                    "weight_range": list(r.weight_range),
                    "outlier_ratio": r.outlier_ratio,
                    "input_range": None if r.input_range is None else list(r.input_range),
                    "options": {
                        k: {
                            "bytes": o.nbytes,
                            "sqnr_db": num(o.sqnr_db),
                            "estimate": o.estimate,
                            "measured": o.measured,
                        }
                        for k, o in r.options.items()
                    },
                }
                for r in self.layers
            ],
        }


def model_output(output: Any) -> tuple[str, torch.Tensor]:
    """("logits" | "values", tensor) of a model's output: an HF output's ``logits`` or
    ``last_hidden_state``, a tuple's first tensor, or a tensor (2-D: logits of a
    classifier; other shapes: values)."""
    if hasattr(output, "logits") and output.logits is not None:
        return "logits", output.logits
    if hasattr(output, "last_hidden_state"):
        return "values", output.last_hidden_state
    if isinstance(output, tuple | list) and output:
        return model_output(output[0])
    if isinstance(output, dict) and output:
        return model_output(next(iter(output.values())))
    if not isinstance(output, torch.Tensor):
        raise InvalidSpecError(
            f"the model returned {type(output).__name__}; sensitivity needs a tensor, a tuple "
            "whose first item is one, or an output with logits or last_hidden_state"
        )
    return ("logits" if output.dim() == 2 else "values"), output


def _units(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """Allocation units: each planned Linear/Conv2d alone, and all embedding tables as one
    (their tied LM heads follow them)."""
    everything = Recipe("all", "ptq", get_recipe("w8a16").spec)
    units: dict[str, list[tuple[str, nn.Module]]] = {
        e.name: [(e.name, model.get_submodule(e.name))] for e in plan_layers(model, everything)
    }
    tables = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if tables:
        units[EMBEDDINGS] = tables
    return units


def layer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each allocation unit's weight (the embedding unit: its first table), for histograms."""
    return {name: mods[0][1].weight.detach() for name, mods in _units(model).items()}


def outlier_ratio(weight: torch.Tensor) -> float:
    per_input = weight.detach().abs().flatten(2).amax(dim=(0, 2)) if weight.dim() > 2 else None
    channel_max = per_input if per_input is not None else weight.detach().abs().amax(dim=0)
    mean = channel_max.mean().item()
    return channel_max.max().item() / mean if mean > 0 else 0.0


@contextlib.contextmanager
def _gradients_for(model: nn.Module, weights: list[nn.Parameter]) -> Iterator[None]:
    """Only ``weights`` require gradients inside; every flag is restored afterwards."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
            p.grad = None


def _output_gradient_squares(
    model: nn.Module, batches: list[Any], weights: dict[int, nn.Parameter], seed: int
) -> tuple[str, dict[int, torch.Tensor], float]:
    """Summed squared gradients of random output directions per weight (see the module
    docstring), the output kind, and the normaliser that turns Σ G Δw² into D."""
    generator = torch.Generator().manual_seed(seed)
    squares = {k: torch.zeros_like(w, dtype=torch.float32) for k, w in weights.items()}
    kind, norm = "values", 0.0
    with _gradients_for(model, list(weights.values())):
        for i, batch in enumerate(track(batches, "sensitivity gradients", total=len(batches))):
            kind, y = model_output(run_batch(model, batch, i))
            y = y.float()
            if kind == "logits":
                # v = √p∘z − p·Σ(√p∘z), z ~ N(0, I): Cov(v) = diag(p) − ppᵀ, the softmax's
                # Hessian, so E[(∇ vᵀy)²] is the exact diagonal Fisher. Sampled labels have
                # the same mean but, for a confident model, all their weight sits in rare
                # draws of unlikely classes (a trained CNN: estimates 500x too small).
                probs = torch.softmax(y.detach(), dim=-1)
                u = probs.sqrt() * torch.randn(y.shape, generator=generator)
                direction = u - probs * u.sum(-1, keepdim=True)
                norm += 2.0 * y[..., 0].numel()  # D = KL per position ≈ ½ Δwᵀ F Δw
            else:
                direction = torch.randn(y.shape, generator=generator)
                norm += y.detach().double().pow(2).sum().item()
            objective = (direction * y).sum()
            grads = torch.autograd.grad(objective, list(weights.values()), allow_unused=True)
            for k, g in zip(weights, grads, strict=True):
                if g is not None:
                    squares[k] += g.float().pow(2)
    return kind, squares, max(norm, 1e-30)


def distance_terms(kind: str, reference: torch.Tensor, output: torch.Tensor) -> tuple[float, float]:
    """D of one batch as (numerator, denominator), so batches add up: the summed KL and the
    positions, or the summed squared error and the summed squared reference."""
    if kind == "logits":
        ref = torch.log_softmax(reference.double(), dim=-1)
        out = torch.log_softmax(output.double(), dim=-1)
        kl = (ref.exp() * (ref - out)).sum(-1)
        return kl.sum().item(), float(kl.numel())
    ref = reference.double()
    return (output.double() - ref).pow(2).sum().item(), ref.pow(2).sum().item()


@torch.no_grad()
def _input_ranges(model: nn.Module, units: dict, batches: list[Any]) -> dict[str, list[float]]:
    ranges: dict[str, list[float]] = {}

    def hook(name: str) -> Any:
        def record(_module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                lo, hi = x.min().item(), x.max().item()
                old = ranges.get(name, [lo, hi])
                ranges[name] = [min(old[0], lo), max(old[1], hi)]

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, mods in units.items() for _, m in mods]
    try:
        for i, batch in enumerate(batches):
            run_batch(model, batch, i)
    finally:
        for h in handles:
            h.remove()
    return ranges


def measure_sensitivity(
    model: nn.Module,
    calib_data: Iterable[Any],
    candidates: Iterable[str] = DEFAULT_CANDIDATES,
    *,
    measure: str | None = None,
    seed: int = 0,
) -> SensitivityReport:
    """Per-layer statistics and, per candidate, bytes, weight SQNR and estimated output
    distance; with ``measure`` (a candidate name), also the distance measured with only that
    layer in that format, on the first MEASURED_BATCHES batches. ``model`` is not modified.
    """
    parsed = parse_candidates(candidates)
    names = [c.name for c in parsed]
    if measure is not None and measure not in names:
        raise InvalidSpecError(f"measure={measure!r} is not one of the candidates {names}")
    batches = collect_batches(calib_data, "sensitivity", warn=False)
    model = split_attention(copy.deepcopy(model)).eval()
    units = _units(model)
    if not units:
        raise InvalidSpecError(
            "the model has no Linear, Conv2d or Embedding layer lowbit can quantize"
        )
    weights = {id(m.weight): m.weight for mods in units.values() for _, m in mods}
    kind, squares, norm = _output_gradient_squares(model, batches, weights, seed)
    ranges = _input_ranges(model, units, batches)
    reports = [
        _layer_report(name, mods, parsed, squares, norm, ranges.get(name))
        for name, mods in units.items()
    ]
    if measure is not None:
        _measure(model, units, reports, parsed[names.index(measure)], batches[:MEASURED_BATCHES])
    counted = {id(m.weight) for mods in units.values() for _, m in mods}
    unique = {id(p): p for p in model.parameters()}
    fixed = sum(p.numel() * p.element_size() for k, p in unique.items() if k not in counted)
    params = sum(p.numel() for p in unique.values())
    return SensitivityReport(
        "kl" if kind == "logits" else "relative_mse", reports, fixed, params, parsed
    )


def _layer_report(
    name: str,
    modules: list[tuple[str, nn.Module]],
    candidates: tuple[Candidate, ...],
    squares: dict[int, torch.Tensor],
    norm: float,
    input_range: list[float] | None,
) -> LayerReport:
    table = name == EMBEDDINGS
    weights = [m.weight.detach().float() for _, m in modules]
    flat = torch.cat([w.flatten() for w in weights])
    first = modules[0][1]
    report = LayerReport(
        name=name,
        kind="embedding" if table else type(first).__name__.lower(),
        shape=tuple(first.weight.shape),
        params=int(flat.numel()),
        weight_range=(flat.min().item(), flat.max().item()),
        outlier_ratio=max(outlier_ratio(w) for w in weights),
        input_range=None if input_range is None else (input_range[0], input_range[1]),
    )
    for c in candidates:
        quantized = [c.quantized(m.weight, table=table) for _, m in modules]
        if any(q is None for q in quantized):
            continue  # not applicable to this layer
        nbytes = sum(c.nbytes(m.weight, table=table) for _, m in modules)
        error = sum(
            (squares[id(m.weight)] * (q - w).pow(2)).sum().item()
            for (_, m), q, w in zip(modules, quantized, weights, strict=True)
        )
        q_flat = torch.cat([q.flatten() for q in quantized])  # type: ignore[union-attr]
        report.options[c.name] = Option(nbytes, sqnr_db(flat, q_flat), error / norm)
    return report


@torch.no_grad()
def _measure(
    model: nn.Module,
    units: dict[str, list[tuple[str, nn.Module]]],
    reports: list[LayerReport],
    candidate: Candidate,
    batches: list[Any],
) -> None:
    """D with only one layer in ``candidate``, layer by layer (weights swapped in place and
    restored)."""
    kind_refs = [model_output(run_batch(model, b, i)) for i, b in enumerate(batches)]
    for report in track(reports, f"measuring {candidate.name} layer by layer", total=len(reports)):
        if candidate.name not in report.options:
            continue
        mods = units[report.name]
        saved = [m.weight.data for _, m in mods]
        try:
            for _, m in mods:
                table = report.name == EMBEDDINGS
                m.weight.data = candidate.quantized(m.weight, table=table).to(m.weight.dtype)  # type: ignore[union-attr]
            num = den = 0.0
            for i, (batch, (kind, ref)) in enumerate(zip(batches, kind_refs, strict=True)):
                terms = distance_terms(kind, ref, model_output(run_batch(model, batch, i))[1])
                num, den = num + terms[0], den + terms[1]
            report.options[candidate.name].measured = num / max(den, 1e-30)
        finally:
            for (_, m), data in zip(mods, saved, strict=True):
                m.weight.data = data
