"""Step-by-step walk through quantizing a few numbers, for people learning the arithmetic.

``explain_values`` returns an ``Explanation``: the parameters with their formulas filled in,
and one row per input value (clip, divide, round, code, dequantized, error). It reuses the
functions of this package, so what it shows is what lowbit computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lowbit.errors import InvalidSpecError
from lowbit.formats import affine, codebook, floats, levels
from lowbit.formats.checks import check_finite
from lowbit.formats.qtypes import (
    TERNARY_THRESHOLD,
    CodebookType,
    FloatType,
    IntType,
    LevelsType,
    get_qtype,
)
from lowbit.formats.sqnr import sqnr_db


@dataclass
class Explanation:
    """What ``lowbit explain`` shows.

    ``params`` are scalars (scale, zero_point or offset, clip range...), ``formulas`` the same
    with the numbers put in, ``columns`` the per-value steps in order (name -> list).
    """

    format: str
    bits: int
    params: dict[str, float | int]
    formulas: list[str]
    columns: dict[str, list[float | int]] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, float]:
        err = torch.tensor(self.columns["error"], dtype=torch.float64)
        x = torch.tensor(self.columns["x"], dtype=torch.float64)
        sqnr = sqnr_db(x, torch.tensor(self.columns["dequantized"], dtype=torch.float64))
        mse = float((err**2).mean())
        return {"max_abs_error": float(err.abs().max()), "mse": mse, "sqnr_db": sqnr}

    def to_json(self) -> dict[str, Any]:
        """The JSON document of ``lowbit explain --json``."""
        doc: dict[str, Any] = {"format": self.format, "bits": self.bits, **self.params}
        doc["q"] = self.columns["q"]
        doc["dequantized"] = self.columns["dequantized"]
        doc["error"] = self.columns["error"]
        doc["steps"] = self.columns
        doc["formulas"] = self.formulas
        doc["summary"] = self.summary
        return doc


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) + 0.0 for v in t.reshape(-1)]  # + 0.0 turns -0.0 into 0.0 for display


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1)]


def explain_values(
    values: list[float],
    *,
    format: str = "int",
    bits: int = 8,
    symmetric: bool = True,
    restricted: bool = True,
    form: affine.AsymmetricForm = "offset",
    clip_range: float | None = None,
    clip_min: float | None = None,
    clip_max: float | None = None,
    rounding: affine.Rounding = "half_even",
) -> Explanation:
    """Explain quantizing ``values`` to ``format`` ("int" with ``bits``, or a named format
    such as "nf4", "binary", "ternary", "fp8_e4m3", "fp8_e5m2", "fp16", "bf16").

    The clip range is ``clip_range`` (symmetric, [-L, L]) or ``clip_min``/``clip_max``, else
    taken from the values themselves.
    """
    if not values:
        raise InvalidSpecError("give at least one value to explain, e.g. lowbit explain 0.5 -1.2")
    x = torch.tensor(values, dtype=torch.float32)
    check_finite(x, "values")
    qtype = IntType(bits, symmetric) if format == "int" else get_qtype(format)
    if isinstance(qtype, IntType):
        return _explain_int(x, qtype, restricted, form, clip_range, clip_min, clip_max, rounding)
    if isinstance(qtype, FloatType):
        return _explain_float(x, qtype)
    if isinstance(qtype, CodebookType):
        return _explain_codebook(x, qtype)
    assert isinstance(qtype, LevelsType)
    return _explain_levels(x, qtype)


def _explain_int(x, qtype, restricted, form, clip_range, clip_min, clip_max, rounding):
    b = qtype.bits
    symmetric = qtype.signed
    if symmetric:
        if clip_min is not None or clip_max is not None:
            clip: Any = (
                clip_min if clip_min is not None else float(x.min()),
                clip_max if clip_max is not None else float(x.max()),
            )
        else:
            clip = clip_range
    else:
        if clip_range is not None:
            clip = (-abs(clip_range), abs(clip_range))
        elif clip_min is not None or clip_max is not None:
            clip = (
                clip_min if clip_min is not None else float(x.min()),
                clip_max if clip_max is not None else float(x.max()),
            )
        else:
            clip = None
    qp = affine.choose_qparams(
        x, qtype, symmetric=symmetric, restricted=restricted, form=form, clip=clip
    )
    s = float(qp.scale)
    q = affine.quantize(x, qp, rounding=rounding)
    xq = affine.dequantize(q, qp)
    params: dict[str, float | int] = {"scale": s, "qmin": qp.qmin, "qmax": qp.qmax}
    formulas: list[str] = []
    if symmetric:
        if clip is None:
            bound = float(x.abs().max())
        elif isinstance(clip, tuple):
            bound = max(abs(clip[0]), abs(clip[1]))
        else:
            bound = abs(float(clip))
        lo, hi = -bound, bound
        params["clip_range"] = bound
        den = (1 << b) - 2 if restricted else (1 << b) - 1
        kind = "restricted" if restricted else "full"
        formulas.append(f"symmetric, {kind} range: codes {qp.qmin}..{qp.qmax}")
        formulas.append(f"s = 2·L / {den} = 2·{bound:.4g} / {den} = {s:.4g}")
        divided = x.clamp(lo, hi) / qp.scale
        formulas.append("q = clamp(round(x / s)),  x' = s·q")
    else:
        lo = float(qp.offset) if qp.offset is not None else (qp.qmin - float(qp.zero_point)) * s
        hi = lo + s * (qp.qmax - qp.qmin)
        params["clip_min"], params["clip_max"] = lo, hi
        formulas.append(f"asymmetric ({form} form): codes {qp.qmin}..{qp.qmax}")
        formulas.append(
            f"s = (Lmax − Lmin) / {(1 << b) - 1} = ({hi:.4g} − {lo:.4g}) / {(1 << b) - 1} = {s:.4g}"
        )
        if qp.offset is not None:
            params["offset"] = lo
            divided = (x.clamp(lo, hi) - lo) / qp.scale + qp.qmin
            formulas.append("q = clamp(round((x − Lmin) / s)),  x' = s·q + Lmin")
        else:
            z = int(qp.zero_point)
            params["zero_point"] = z
            formulas.append(f"z = qmin − round(Lmin / s) = {z} (range widened to hold 0)")
            divided = x.clamp(lo, hi) / qp.scale + z
            formulas.append("q = clamp(round(x / s) + z),  x' = s·(q − z)")
    formulas.append(f"rounding: {rounding.replace('_', ' ')}")
    return Explanation(
        format=qtype.name,
        bits=b,
        params=params,
        formulas=formulas,
        columns={
            "x": _floats(x),
            "clipped": _floats(x.clamp(lo, hi)),
            "divided": _floats(divided),
            "rounded": _floats(affine.round_half(divided, rounding)),
            "q": _ints(q),
            "dequantized": _floats(xq),
            "error": _floats(xq - x),
        },
    )


def _explain_float(x, qtype: FloatType) -> Explanation:
    scale = floats.choose_float_scale(x, qtype) if qtype.scaled else None
    q = floats.quantize_float(x, qtype, scale)
    xq = floats.dequantize_float(q, scale)
    s = float(scale) if scale is not None else 1.0
    formulas = [f"{qtype.name}: {qtype.bits}-bit float, largest finite value {qtype.max:.6g}"]
    if qtype.scaled:
        formulas.append(f"s = max|x| / {qtype.max:g} = {s:.4g};  q = {qtype.name}(x / s)")
    formulas.append("cast rounds to the nearest representable value, ties to even")
    divided = x / s
    return Explanation(
        format=qtype.name,
        bits=qtype.bits,
        params={"scale": s},
        formulas=formulas,
        columns={
            "x": _floats(x),
            "divided": _floats(divided),
            "q": _floats(q.to(torch.float32)),
            "dequantized": _floats(xq),
            "error": _floats(xq - x),
        },
    )


def _explain_codebook(x, qtype: CodebookType) -> Explanation:
    from lowbit.formats.granularity import PerTensor

    scale = codebook.choose_absmax_scale(x, PerTensor())
    q = codebook.quantize_codebook(x, scale, PerTensor(), qtype)
    xq = codebook.dequantize_codebook(q, scale, PerTensor(), qtype)
    s = float(scale)
    levels = qtype.level_tensor()
    return Explanation(
        format=qtype.name,
        bits=qtype.bits,
        params={"scale": s},
        formulas=[
            f"{qtype.name}: {len(qtype.levels)} fixed levels in [-1, 1] "
            f"({', '.join(f'{v:.3f}' for v in qtype.levels)})",
            f"s = max|x| = {s:.4g};  q = index of the level nearest x / s;  x' = s·level[q]",
        ],
        columns={
            "x": _floats(x),
            "divided": _floats(x / s),
            "q": _ints(q),
            "level": _floats(levels[q.long()]),
            "dequantized": _floats(xq),
            "error": _floats(xq - x),
        },
    )


def _explain_levels(x, qtype: LevelsType) -> Explanation:
    scale, threshold = levels.choose_levels_scale(x, qtype)
    q = levels.quantize_levels(x, threshold, qtype)
    xq = levels.dequantize_levels(q, scale, qtype)
    a = float(scale)
    mean_abs = float(x.abs().mean())
    if qtype.name == "binary":
        formulas = [f"a = mean|x| = {a:.4g};  q = 1 if x >= 0 else 0;  x' = a·(2q − 1)"]
        params: dict[str, float | int] = {"scale": a}
    else:
        d = float(threshold)
        formulas = [
            f"Δ = {TERNARY_THRESHOLD}·mean|x| = {TERNARY_THRESHOLD}·{mean_abs:.4g} = {d:.4g}",
            f"a = mean of |x| where |x| > Δ = {a:.4g}",
            "t = sign(x) if |x| > Δ else 0;  code q = t + 1;  x' = a·t",
        ]
        params = {"scale": a, "threshold": d}
    return Explanation(
        format=qtype.name,
        bits=qtype.bits,
        params=params,
        formulas=formulas,
        columns={
            "x": _floats(x),
            "q": _ints(q),
            "level": [qtype.levels[int(c)] for c in q],
            "dequantized": _floats(xq),
            "error": _floats(xq - x),
        },
    )
