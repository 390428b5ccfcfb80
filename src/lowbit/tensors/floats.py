"""Float containers: Float8Tensor (fp8 data + a scale per block) and FloatCastTensor (a plain
fp32/fp16/bf16 cast). The arithmetic is formats.floats'; these classes only store its results.

Both keep the data unpacked in its torch dtype, which safetensors stores natively.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lowbit.errors import InvalidInputError
from lowbit.formats.floats import dequantize_float
from lowbit.formats.granularity import Granularity, PerTensor, param_shape
from lowbit.formats.qtypes import BF16, FP8_E4M3, FP8_E5M2, FP16, FP32, FloatType
from lowbit.tensors.base import (
    Metadata,
    QTensor,
    TensorGetter,
    check_shape,
    granularity_from_dict,
    granularity_to_dict,
    qtype_of,
    widen,
)

_FP8_BY_DTYPE = {t.dtype: t for t in (FP8_E4M3, FP8_E5M2)}
_CAST_BY_DTYPE = {t.dtype: t for t in (FP32, FP16, BF16)}


def _qtype_of_data(data: torch.Tensor, table: dict[torch.dtype, FloatType], kind: str) -> FloatType:
    if data.dtype not in table:
        known = ", ".join(t.name for t in table.values())
        raise InvalidInputError(f"a {kind} tensor holds {known} data, got {data.dtype}")
    return table[data.dtype]


def _check_meta_qtype(qtype: FloatType, meta: Mapping, kind: str) -> None:
    if qtype_of(meta["qtype"], FloatType, kind) != qtype:
        raise InvalidInputError(
            f"metadata says {meta['qtype']!r} but the data is {qtype.name}; the file is damaged"
        )


class Float8Tensor(QTensor):
    """fp8 (e4m3fn or e5m2) data with a scale per granularity block: x' = s·float(q)."""

    kind = "float8"

    def __init__(
        self, data: torch.Tensor, scale: torch.Tensor, granularity: Granularity = PerTensor()
    ) -> None:
        """Wrap fp8 ``data`` (the weight's shape) and ``scale`` (param_shape) as they are."""
        self.qtype = _qtype_of_data(data, _FP8_BY_DTYPE, self.kind)
        self.shape = tuple(data.shape)
        check_shape("scale", scale, param_shape(self.shape, granularity))
        self.data, self.scale, self.granularity = data, scale, granularity

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x' = s·float(q)."""
        return dequantize_float(self.data, widen(self.scale), self.granularity, dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"data": self.data, "scale": self.scale}

    def _metadata(self) -> Metadata:
        return {"qtype": self.qtype.name, "granularity": granularity_to_dict(self.granularity)}

    @classmethod
    def _from_parts(cls, get: TensorGetter, shape: tuple[int, ...], meta: Mapping) -> Float8Tensor:
        out = cls(get("data"), get("scale"), granularity_from_dict(meta["granularity"]))
        check_shape("data", out.data, shape)
        _check_meta_qtype(out.qtype, meta, cls.kind)
        return out


class FloatCastTensor(QTensor):
    """A plain fp32/fp16/bf16 cast (round to nearest even): no scale, nothing else stored."""

    kind = "float_cast"

    def __init__(self, data: torch.Tensor) -> None:
        """Wrap an fp32, fp16 or bf16 tensor as it is."""
        self.qtype = _qtype_of_data(data, _CAST_BY_DTYPE, self.kind)
        self.shape = tuple(data.shape)
        self.data = data

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_float(self.data, dtype=dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"data": self.data}

    def _metadata(self) -> Metadata:
        return {"qtype": self.qtype.name}

    @classmethod
    def _from_parts(
        cls, get: TensorGetter, shape: tuple[int, ...], meta: Mapping
    ) -> FloatCastTensor:
        out = cls(get("data"))
        check_shape("data", out.data, shape)
        _check_meta_qtype(out.qtype, meta, cls.kind)
        return out
