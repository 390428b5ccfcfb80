"""Mixed precision for GGUF: a ggml block type per tensor, chosen from measured sensitivities
so the whole file fits a size (bits per weight of the file, embeddings, norms and metadata
counted), written as per-tensor types that every llama.cpp build reads (what llama-quantize's
``--tensor-type`` overrides do by hand).

The sensitivities are lowbit's (``recipes.sensitivity``: the output KL estimated from the
diagonal Fisher, one gradient pass over the calibration windows) with each candidate block
type's round-to-nearest bytes; the choice is the exact knapsack of
``algorithms.allocation``. The method (rtn, imatrix, gptq, awq) then fills the chosen types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lowbit.algorithms.allocation import Choice, allocate
from lowbit.errors import InvalidSpecError
from lowbit.formats.blocks import BLOCK_TYPES, get_block_codec
from lowbit.io.gguf.types import TensorInfo

# Every block type llama.cpp runs everywhere; where a row is not a multiple of 256 only the
# 32-value types apply (SmolLM2's 576-wide rows), as llama-quantize's fallbacks do. q4_1
# and q5_1 (5.0 and 6.0 bits, asymmetric) fill the steps between q4_0, q5_0 and q8_0 for
# those rows, and q4_1 holds a Q4_1 source's tensors byte for byte (docs/decisions.md).
DEFAULT_GGUF_CANDIDATES = (
    "q2_k", "q3_k", "q4_0", "iq4_nl", "q4_1", "q4_k", "q5_0", "q5_1", "q5_k", "q6_k", "q8_0",
)  # fmt: skip
SENSITIVITY_WINDOWS = 8  # calibration windows of the gradient pass
_FLOAT_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
_ALIGNMENT = 32  # GGUF's default: each tensor's data starts on a multiple


@dataclass(frozen=True)
class GGUFTarget:
    """The size a mixed GGUF file may take: bits per weight of the whole file, or bytes."""

    bits_per_weight: float | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if (self.bits_per_weight is None) == (self.max_bytes is None):
            raise InvalidSpecError("give exactly one of --target-bpw and --target-size")
        value = self.bits_per_weight or self.max_bytes
        if value is None or value <= 0:
            raise InvalidSpecError(f"the target must be positive, got {value}")

    def file_bytes(self, n_params: int) -> int:
        if self.bits_per_weight is not None:
            return math.floor(self.bits_per_weight * n_params / 8)
        assert self.max_bytes is not None
        return self.max_bytes


def tensor_bytes(info: TensorInfo, type_name: str) -> int:
    """Bytes of one tensor in ``type_name`` (ggml order: ne[0], the row, first)."""
    n = math.prod(info.shape)
    if type_name.upper() in _FLOAT_BYTES:
        return n * _FLOAT_BYTES[type_name.upper()]
    return get_block_codec(type_name).nbytes(tuple(reversed(info.shape)))


def check_candidates(names: tuple[str, ...]) -> None:
    """Raise InvalidSpecError unless every name is a GGUF block type lowbit writes."""
    unknown = [n for n in names if n not in BLOCK_TYPES]
    if unknown or not names:
        raise InvalidSpecError(
            f"GGUF candidates are block types; unknown: {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(BLOCK_TYPES)}"
        )


def _units(job: Any, model: Any) -> dict[str, str]:
    """Sensitivity unit -> GGUF tensor: every Linear with a tensor in the file, and the token
    embedding table (the output head too where it is tied)."""
    from lowbit.recipes.sensitivity import EMBEDDINGS

    units = dict(job.linear_tensors(model))
    if "token_embd.weight" in job.shapes:
        units[EMBEDDINGS] = "token_embd.weight"
    return units


def mixed_tensor_types(
    job: Any,
    infos: list[TensorInfo],
    header_bytes: int,
    target: GGUFTarget,
    candidates: tuple[str, ...] = DEFAULT_GGUF_CANDIDATES,
) -> tuple[dict[str, str], dict[str, Any]]:
    """{GGUF tensor name: ggml type} for the tensors lowbit chooses (the others keep
    ``job.plan``'s type), and a JSON-able account of the choice.

    ``header_bytes``: the file's bytes before the tensor data (metadata, tokenizer), as the
    source carries them.
    """
    from lowbit.eval.calibration import token_windows
    from lowbit.recipes.sensitivity import measure_sensitivity

    check_candidates(candidates)
    loaded = job.float_model
    windows = token_windows(
        loaded.tokenizer, job.calibration_text(), samples=SENSITIVITY_WINDOWS, seq_len=job.seq_len
    )
    report = measure_sensitivity(loaded.model, windows, candidates)
    units = _units(job, loaded.model)
    layers = {
        units[layer.name]: [Choice(k, o.nbytes, o.estimate) for k, o in layer.options.items()]
        for layer in report.layers
        if layer.name in units and layer.options
    }
    by_name = {i.name: i for i in infos}
    fixed = sum(tensor_bytes(i, job.plan[i.name]) for i in infos if i.name not in layers)
    overhead = header_bytes + _ALIGNMENT * len(infos)  # the padding, at most
    n_params = sum(math.prod(i.shape) for i in infos)
    budget = target.file_bytes(n_params)
    smallest = fixed + overhead + sum(min(c.nbytes for c in cs) for cs in layers.values())
    if budget < smallest:
        raise InvalidSpecError(
            f"the target of {budget:,} bytes ({8 * budget / n_params:.2f} bits per weight) is "
            f"below the smallest file these candidates make: {smallest:,} bytes "
            f"({8 * smallest / n_params:.2f} bits per weight); raise the target or add q2_k"
        )
    allocation = allocate(layers, max_bytes=budget - fixed - overhead)
    for name, choice in allocation.choices.items():  # the codec's bytes are the file's
        assert choice.nbytes == tensor_bytes(by_name[name], choice.name)
    types = {name: choice.name.upper() for name, choice in allocation.choices.items()}
    account = {
        "target_bytes": budget,
        "estimated_loss": allocation.loss,
        "distance": report.distance,
        "allocation": "multiple-choice knapsack (dynamic programming over byte units)",
        "tensor_types": types,
    }
    return types, account
