"""The kernel registry: which implementation runs a quantized op, chosen in the open.

An entry says what it runs (``op``: "linear", "conv2d" or "add"), how much it is preferred
(``priority``), and ``applies(weight, spec)``: None when it can run this layer, else the
reason it cannot. Selection walks the entries of an op by priority and keeps every reason,
so ``lowbit.kernels.explain(model)`` can say why a layer got its kernel (optimum-quanto hid
this choice in a constructor and int4 silently got slower; design.md forbids that).

Every (op, weight kind) is covered by a reference entry (dequantize + float op), which is
also the oracle the fast entries are tested against.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.affine import QParams
from lowbit.formats.granularity import Granularity, PerAxis, PerGroup, PerTensor
from lowbit.formats.qtypes import IntType
from lowbit.tensors import IntPackedTensor, QTensor

Op = Literal["linear", "conv2d", "add", "embedding"]
Mode = Literal["weight_only", "dynamic", "static"]
OPS: tuple[str, ...] = ("linear", "conv2d", "add", "embedding")
MODES: tuple[str, ...] = ("weight_only", "dynamic", "static")
UINT8 = IntType(8, False)
INT8 = IntType(8, True)

# Deprecation warnings of the quint8/qint8 tensor API and torch.ao (torch 2.13); silenced
# only inside kernels, never globally (see /docs/decisions.md, "Kernels").
_QUIET = (
    (r".*quantized tensor creation functions.*", UserWarning),
    (r"torch\.ao\.quantization is deprecated.*", DeprecationWarning),
    (r".*reduce_range will be deprecated.*", UserWarning),
)


@contextlib.contextmanager
def quiet_quantized_warnings() -> Iterator[None]:
    """Silence torch's quint8/torch.ao deprecation warnings inside the block only."""
    with warnings.catch_warnings():
        for message, category in _QUIET:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@contextlib.contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    """Use torch's quantized engine ``name`` inside the block (packing reads it; the packed
    params remember their backend, so run time does not need it), then restore the old one."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def activation_qparams(scale: float, zero_point: int) -> QParams:
    """Per-tensor uint8 QParams in the zero-point form (torch quint8 compatible)."""
    zp = int(zero_point)
    if not 0 <= zp <= 255:
        raise InvalidSpecError(f"activation zero point must be in [0, 255], got {zp}")
    if not float(scale) > 0:
        raise InvalidSpecError(f"activation scale must be > 0, got {scale}")
    return QParams(
        torch.tensor(float(scale), dtype=torch.float32),
        UINT8,
        PerTensor(),
        0,
        255,
        zero_point=torch.tensor(zp, dtype=torch.int32),
    )


def check_activation_qparams(qparams: QParams, name: str) -> tuple[float, int]:
    """(scale, zero_point) of per-tensor uint8 zero-point QParams, or InvalidSpecError."""
    if (
        qparams.qtype != UINT8
        or not isinstance(qparams.granularity, PerTensor)
        or qparams.zero_point is None
        or (qparams.qmin, qparams.qmax) != (0, 255)
    ):
        raise InvalidSpecError(
            f"{name} must be per-tensor uint8 QParams in the zero-point form over [0, 255] "
            "(torch quint8); get them from an observer with "
            "observer.qparams(IntType(8, False), symmetric=False, form='zero_point') or "
            "lowbit.kernels.activation_qparams(scale, zero_point)"
        )
    return float(qparams.scale), int(qparams.zero_point)


def qparams_to_dict(qparams: QParams | None) -> dict[str, Any] | None:
    """JSON form of activation QParams (float32 scale survives the round trip exactly)."""
    if qparams is None:
        return None
    scale, zp = check_activation_qparams(qparams, "activation qparams")
    return {"scale": scale, "zero_point": zp}


def qparams_from_dict(data: Mapping[str, Any] | None) -> QParams | None:
    """Inverse of ``qparams_to_dict``."""
    return None if data is None else activation_qparams(data["scale"], data["zero_point"])


def check_per_token(mode: str, per_token: bool, token_zero_point: bool) -> None:
    """Raise InvalidSpecError for per-token options that do not go together."""
    if per_token and mode != "dynamic":
        raise InvalidSpecError("per_token applies to mode='dynamic' only")
    if token_zero_point and not per_token:
        raise InvalidSpecError("token_zero_point needs per_token=True")


@dataclass(frozen=True)
class LayerSpec:
    """Everything a kernel needs to know about a layer besides its weight and bias.

    Attributes:
        op: "linear", "conv2d" or "add".
        mode: "weight_only" (float activations), "dynamic" (int8 activations quantized per
            batch at run time) or "static" (uint8 activations with calibrated QParams).
        relu: apply ReLU to the output (fused where the kernel can).
        stride, padding, dilation, groups: conv2d geometry.
        input_qparams: static: QParams to quantize a float input with (a torch quint8
            input is used as it is). For "add", those of the first input.
        other_qparams: "add" only: QParams of the second input when it arrives as float.
        output_qparams: static: QParams of the output.
        keep_quantized_output: static: return a torch quint8 tensor (for the next int8
            layer) instead of float.
        per_token: dynamic: one int8 scale per token (row of the input) instead of one
            uint8 scale and zero point per batch; robust to outlier tokens.
        token_zero_point: per_token only: an int8 zero point per token too (asymmetric,
            all 256 codes in use; a one-sided row such as a GELU output keeps twice the
            resolution) instead of symmetric codes in [-127, 127].
    """

    op: str
    mode: str
    relu: bool = False
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    input_qparams: QParams | None = None
    other_qparams: QParams | None = None
    output_qparams: QParams | None = None
    keep_quantized_output: bool = False
    per_token: bool = False
    token_zero_point: bool = False

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise InvalidSpecError(f"unknown op {self.op!r}; use one of {OPS}")
        if self.mode not in MODES:
            raise InvalidSpecError(f"unknown mode {self.mode!r}; use one of {MODES}")
        check_per_token(self.mode, self.per_token, self.token_zero_point)
        if self.op == "embedding" and self.mode != "weight_only":
            raise InvalidSpecError(
                "an embedding lookup has no input to quantize: mode='weight_only'"
            )
        if self.op == "add" and self.mode != "static":
            raise InvalidSpecError("a quantized add is static only; use mode='static'")
        if self.mode == "static":
            if self.output_qparams is None:
                raise InvalidSpecError(
                    "static mode needs output_qparams (from calibration); pass them, or use "
                    "mode='dynamic'"
                )
        elif self.keep_quantized_output or self.input_qparams or self.output_qparams:
            raise InvalidSpecError(
                f"input/output qparams and keep_quantized_output are for mode='static', "
                f"not {self.mode!r}; drop them or use mode='static'"
            )
        for name in ("input_qparams", "other_qparams", "output_qparams"):
            qp = getattr(self, name)
            if qp is not None:
                check_activation_qparams(qp, name)


class Considered(NamedTuple):
    """One entry looked at by selection: name, priority, whether it could run the layer,
    whether it was chosen, and why (not)."""

    name: str
    priority: int
    applies: bool
    chosen: bool
    reason: str


@dataclass(frozen=True)
class KernelEntry:
    """One implementation of an op.

    Attributes:
        op: "linear", "conv2d" or "add".
        name: shown by explain; reference entries are called "reference (dequantize + float)".
        priority: higher wins among the entries that apply.
        applies: (weight, spec) -> None if this entry can run the layer, else the reason.
        prepare: (weight, bias, spec) -> state (packed weights: lossless repacks of the
            QTensor, rebuilt from it, never pickled).
        run: (state, *inputs) -> output tensor.
        summary: one line saying what it computes.
        reference: True for the dequantize + float oracle.
    """

    op: str
    name: str
    priority: int
    applies: Callable[[QTensor | None, LayerSpec], str | None]
    prepare: Callable[[QTensor | None, torch.Tensor | None, LayerSpec], Any]
    run: Callable[..., torch.Tensor]
    summary: str
    reference: bool = False


@dataclass(frozen=True)
class KernelRegistry:
    """An immutable set of entries; ``with_entries`` returns an extended copy."""

    entries: tuple[KernelEntry, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [(e.op, e.name) for e in self.entries]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise InvalidSpecError(f"kernel entries registered twice: {sorted(dupes)}")

    def with_entries(self, *entries: KernelEntry) -> KernelRegistry:
        """A new registry with ``entries`` added."""
        return KernelRegistry(self.entries + tuple(entries))

    def for_op(self, op: str) -> list[KernelEntry]:
        """Entries of ``op``, highest priority first (ties keep registration order)."""
        return sorted((e for e in self.entries if e.op == op), key=lambda e: -e.priority)

    def get(self, op: str, name: str) -> KernelEntry:
        """The entry called ``name`` for ``op``, or InvalidSpecError listing the names."""
        for entry in self.for_op(op):
            if entry.name == name:
                return entry
        known = ", ".join(repr(e.name) for e in self.for_op(op))
        raise InvalidSpecError(f"no {op} kernel named {name!r}; known: {known}")

    def select_spec(
        self, weight: QTensor | None, spec: LayerSpec, *, kernel: str | None = None
    ) -> tuple[KernelEntry, list[Considered]]:
        """The highest-priority entry that applies (or the one named ``kernel``), and every
        entry looked at with its reason."""
        considered: list[Considered] = []
        chosen: KernelEntry | None = None
        for entry in self.for_op(spec.op):
            reason = entry.applies(weight, spec)
            ok = reason is None
            if kernel is not None and entry.name != kernel:
                why = reason or f"not requested (kernel={kernel!r})"
                considered.append(Considered(entry.name, entry.priority, ok, False, why))
            elif not ok:
                if kernel is not None:
                    raise InvalidSpecError(
                        f"kernel {kernel!r} cannot run this {spec.op}: {reason}; pass "
                        "kernel=None to let lowbit choose"
                    )
                considered.append(Considered(entry.name, entry.priority, False, False, reason))
            elif chosen is None:
                chosen = entry
                why = (
                    f"requested (kernel={kernel!r})" if kernel else "highest priority that applies"
                )
                considered.append(Considered(entry.name, entry.priority, True, True, why))
            else:
                why = f"lower priority than {chosen.name!r}"
                considered.append(Considered(entry.name, entry.priority, True, False, why))
        if chosen is None:
            if kernel is not None:
                self.get(spec.op, kernel)  # raises with the known names
            raise InvalidSpecError(
                f"no kernel applies to this {spec.op} ({describe_weight(weight)}, "
                f"mode={spec.mode}): " + "; ".join(f"{c.name}: {c.reason}" for c in considered)
            )
        return chosen, considered

    def select(
        self,
        op: str,
        weight: QTensor | None,
        mode: str,
        *,
        kernel: str | None = None,
        **facts: Any,
    ) -> tuple[KernelEntry, list[Considered]]:
        """``select_spec`` with the spec built from ``op``, ``mode`` and LayerSpec ``facts``."""
        return self.select_spec(weight, LayerSpec(op=op, mode=mode, **facts), kernel=kernel)


def explain_choice(considered: list[Considered]) -> str:
    """One line: why the chosen entry won and why the higher-priority ones did not apply."""
    chosen = next(c for c in considered if c.chosen)
    parts = [f"{chosen.reason}"]
    for c in considered:
        if c.chosen or c.priority < chosen.priority:
            continue
        if not c.applies and not c.reason.startswith("runs mode="):  # other modes: not news
            parts.append(f"not {c.name}: {c.reason}")
    return "; ".join(parts)


def granularity_name(g: Granularity) -> str:
    """per_tensor, per_axis(0) or per_group(128)."""
    if isinstance(g, PerAxis):
        return f"per_axis({g.axis})"
    if isinstance(g, PerGroup):
        return f"per_group({g.size})"
    return "per_tensor"


def describe_weight(weight: QTensor | None) -> str:
    """Short description of a weight, e.g. "int4 per_group(128) offset" or "nf4 per_group(64)"."""
    if weight is None:
        return "-"
    name = getattr(getattr(weight, "qtype", None), "name", weight.kind)
    text = (
        f"{name} {granularity_name(weight.granularity)}" if hasattr(weight, "granularity") else name
    )
    return f"{text} {weight.form}" if isinstance(weight, IntPackedTensor) else text


def check_float_input(x: torch.Tensor, what: str) -> None:
    """A kernel input must be a floating-point (or torch quantized) tensor."""
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_quantized):
        raise InvalidInputError(f"{what} must be a float tensor, got {x.dtype}; cast it first")
