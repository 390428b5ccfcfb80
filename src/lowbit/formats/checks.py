"""Input checks shared by every format: quantization of NaN or Inf has no meaning."""

from __future__ import annotations

import torch

from lowbit.errors import InvalidInputError


def check_finite(x: torch.Tensor, what: str = "input") -> None:
    """Raise InvalidInputError when ``x`` holds NaN or Inf, saying how many and where."""
    if not x.is_floating_point():
        return
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero()
    first = tuple(int(i) for i in bad[0]) if bad.numel() else ()
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    raise InvalidInputError(
        f"{what} holds {n_nan} NaN and {n_inf} Inf value(s) (first at index {first}); "
        "quantization needs finite numbers: fix or mask them before quantizing "
        "(e.g. torch.nan_to_num)"
    )


def as_float(x: torch.Tensor | list | tuple | float) -> torch.Tensor:
    """Accept python numbers or tensors; compute in float32 (float64 stays float64)."""
    t = torch.as_tensor(x)
    if t.dtype == torch.float64:
        return t
    return t.to(torch.float32)
