"""IntPackedTensor: b-bit integer codes (1..8 bits) packed densely, with affine parameters.

Stored tensors: ``packed`` (uint8 bit stream of q - qtype.qmin, formats.packing layout),
``scale`` (param_shape, scale_dtype), and for asymmetric formats either ``zero_point``
(int8/uint8, the code type's storage) or ``offset`` (Lmin, scale_dtype). The arithmetic is
formats.affine's; this class only stores its results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError, UnsupportedFormatError
from lowbit.formats.affine import (
    QParams,
    dequantize,
)
from lowbit.formats.granularity import Granularity, param_shape
from lowbit.formats.packing import pack_codes, unpack_codes
from lowbit.formats.qtypes import IntType
from lowbit.tensors.base import (
    Metadata,
    QTensor,
    TensorGetter,
    check_codes,
    check_packed,
    check_shape,
    granularity_from_dict,
    granularity_to_dict,
    qtype_of,
    to_storage,
    widen,
)

_FORMS = ("symmetric", "zero_point", "offset")


class IntPackedTensor(QTensor):
    """Packed b-bit integer codes with a scale and a zero point or offset per block."""

    kind = "int_packed"

    def __init__(
        self,
        packed: torch.Tensor,
        scale: torch.Tensor,
        *,
        shape: tuple[int, ...],
        qtype: IntType,
        granularity: Granularity,
        qmin: int,
        qmax: int,
        zero_point: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
    ) -> None:
        """Wrap stored tensors as they are; ``from_codes`` builds one from codes and QParams
        (``lowbit.algorithms.rtn_tensor`` rounds a float tensor to one)."""
        if zero_point is not None and offset is not None:
            raise InvalidSpecError("give a zero point or an offset, not both")
        if not qtype.qmin <= qmin <= qmax <= qtype.qmax:
            raise InvalidSpecError(
                f"code range [{qmin}, {qmax}] is outside {qtype.name}'s "
                f"[{qtype.qmin}, {qtype.qmax}]; use the qmin/qmax of the QParams"
            )
        self.shape = tuple(int(n) for n in shape)
        check_packed(packed, math.prod(self.shape), qtype.bits)
        pshape = param_shape(self.shape, granularity)
        for name, t in (("scale", scale), ("zero_point", zero_point), ("offset", offset)):
            if t is not None:
                check_shape(name, t, pshape)
        self.packed, self.scale = packed, scale
        self.zero_point, self.offset = zero_point, offset
        self.qtype, self.granularity, self.qmin, self.qmax = qtype, granularity, qmin, qmax

    @classmethod
    def from_codes(
        cls, codes: torch.Tensor, qparams: QParams, *, scale_dtype: torch.dtype = torch.float32
    ) -> IntPackedTensor:
        """Pack integer codes computed by an algorithm (RTN, GPTQ, ...) with their QParams.

        Args:
            codes: integer tensor of the weight's shape, values in [qparams.qmin, qparams.qmax].
            qparams: scale (and zero point or offset) of ``param_shape(codes.shape, ...)``.
            scale_dtype: storage dtype of scale and offset (lossless only if they fit it).
        """
        qt = qparams.qtype
        check_codes(codes, qparams.qmin, qparams.qmax)
        zero_point, offset = qparams.zero_point, qparams.offset
        if zero_point is not None:
            check_codes(zero_point, qt.qmin, qt.qmax)
            zero_point = zero_point.to(qt.storage).contiguous()
        if offset is not None:
            offset = to_storage(offset, scale_dtype, name="offset")
        return cls(
            pack_codes(codes.to(torch.int16) - qt.qmin, qt.bits),
            to_storage(qparams.scale, scale_dtype, name="scale", nonzero=True),
            shape=tuple(codes.shape),
            qtype=qt,
            granularity=qparams.granularity,
            qmin=qparams.qmin,
            qmax=qparams.qmax,
            zero_point=zero_point,
            offset=offset,
        )

    @property
    def form(self) -> str:
        """One of "symmetric", "zero_point", "offset"."""
        if self.zero_point is not None:
            return "zero_point"
        return "offset" if self.offset is not None else "symmetric"

    @property
    def qparams(self) -> QParams:
        """The stored parameters as formats.affine QParams (scales widened to float32)."""
        zp = None if self.zero_point is None else self.zero_point.to(torch.int32)
        offset = None if self.offset is None else widen(self.offset)
        return QParams(
            widen(self.scale), self.qtype, self.granularity, self.qmin, self.qmax, zp, offset
        )

    def codes(self) -> torch.Tensor:
        """Unpacked integer codes (int8 for signed types, uint8 for unsigned), original shape."""
        unpacked = unpack_codes(self.packed, self.qtype.bits, self.numel).to(torch.int16)
        return (unpacked + self.qtype.qmin).to(self.qtype.storage).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """s·q, s·(q - z) or s·(q - qmin) + Lmin (formats.affine.dequantize)."""
        return dequantize(self.codes(), self.qparams, dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"packed": self.packed, "scale": self.scale}
        if self.zero_point is not None:
            out["zero_point"] = self.zero_point
        if self.offset is not None:
            out["offset"] = self.offset
        return out

    def _metadata(self) -> Metadata:
        return {
            "qtype": self.qtype.name,
            "granularity": granularity_to_dict(self.granularity),
            "form": self.form,
            "qmin": self.qmin,
            "qmax": self.qmax,
        }

    @classmethod
    def _from_parts(
        cls, get: TensorGetter, shape: tuple[int, ...], meta: Mapping
    ) -> IntPackedTensor:
        form = meta["form"]
        if form not in _FORMS:
            raise UnsupportedFormatError(f"unknown int_packed form {form!r}; known: {_FORMS}")
        zero_point = get("zero_point") if form == "zero_point" else None
        if zero_point is not None and zero_point.is_floating_point():
            raise InvalidInputError("zero_point must be an integer tensor; the file is damaged")
        return cls(
            get("packed"),
            get("scale"),
            shape=shape,
            qtype=qtype_of(meta["qtype"], IntType, cls.kind),
            granularity=granularity_from_dict(meta["granularity"]),
            qmin=int(meta["qmin"]),
            qmax=int(meta["qmax"]),
            zero_point=zero_point,
            offset=get("offset") if form == "offset" else None,
        )
