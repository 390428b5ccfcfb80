"""Residual adds: the float ``Add`` users put in their models, and its static int8 form.

``Add`` plays the role of torch.ao eager mode's FloatFunctional: a module boundary where
calibration hooks can observe the sum, so that convert can swap in ``QuantAdd``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.formats.affine import QParams
from lowbit.kernels import KernelRegistry, LayerSpec
from lowbit.nn.base import KernelModule


class Add(nn.Module):
    """forward(a, b) = a + b, then ReLU when ``relu``."""

    def __init__(self, relu: bool = False) -> None:
        super().__init__()
        self.relu = bool(relu)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = a + b
        return torch.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        return f"relu={self.relu}"


class QuantAdd(KernelModule):
    """Static int8 add: both inputs requantized to ``output_qparams`` and added.

    Args:
        output_qparams: per-tensor uint8 zero-point QParams of the sum.
        input_qparams, other_qparams: QParams for the first / second input when it arrives
            as a float tensor (a torch quint8 input is used as it is).
        relu: ReLU after the add (fused). keep_quantized_output: return quint8.
        kernel, registry: as in QuantLinear.
    """

    op = "add"

    def __init__(
        self,
        output_qparams: QParams,
        *,
        input_qparams: QParams | None = None,
        other_qparams: QParams | None = None,
        relu: bool = False,
        keep_quantized_output: bool = False,
        kernel: str | None = None,
        registry: KernelRegistry | None = None,
    ) -> None:
        super().__init__()
        spec = LayerSpec(
            op="add",
            mode="static",
            relu=relu,
            input_qparams=input_qparams,
            other_qparams=other_qparams,
            output_qparams=output_qparams,
            keep_quantized_output=keep_quantized_output,
        )
        self._setup(None, None, spec, kernel, registry)

    @classmethod
    def from_float(cls, module: Add, *, output_qparams: QParams, **kwargs: Any) -> QuantAdd:
        """Replace a float ``Add`` (its relu flag is kept)."""
        if not isinstance(module, Add):
            raise InvalidInputError(
                f"from_float needs a lowbit.nn.Add, got {type(module).__name__}"
            )
        return cls(output_qparams, relu=module.relu, **kwargs)
