"""The tiny base every quantized-tensor container shares, and the helpers they use.

A QTensor is a plain object holding the tensors a quantized weight is stored as (packed codes,
scales, zero points or offsets) plus the few facts needed to read them back (shape, format,
granularity). It rebuilds the float weight (``dequantize``), says exactly how many bytes it
stores (``nbytes``), and converts to and from a flat ``dict[str, Tensor]`` plus JSON-able
metadata, the shape a safetensors file wants.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError, UnsupportedFormatError
from lowbit.formats.granularity import Granularity, PerAxis, PerGroup, PerTensor, param_shape
from lowbit.formats.packing import pack_codes, packed_nbytes, unpack_codes
from lowbit.formats.qtypes import CodebookType, LevelsType, QType, get_qtype

Metadata = dict[str, Any]
TensorGetter = Callable[[str], torch.Tensor]

_GRANULARITIES: dict[str, type] = {
    "per_tensor": PerTensor,
    "per_axis": PerAxis,
    "per_group": PerGroup,
}
_GRANULARITY_NAMES = {cls: name for name, cls in _GRANULARITIES.items()}


def granularity_to_dict(granularity: Granularity) -> dict[str, Any]:
    """JSON-able form of a granularity, e.g. ``{"type": "per_group", "size": 128, "axis": -1}``."""
    return {"type": _GRANULARITY_NAMES[type(granularity)], **dataclasses.asdict(granularity)}


def granularity_from_dict(data: Mapping[str, Any]) -> Granularity:
    """Inverse of ``granularity_to_dict``."""
    fields = dict(data)
    name = fields.pop("type", None)
    if name not in _GRANULARITIES:
        known = ", ".join(_GRANULARITIES)
        raise UnsupportedFormatError(f"unknown granularity type {name!r}; known types: {known}")
    try:
        return _GRANULARITIES[name](**fields)
    except TypeError:
        raise InvalidInputError(
            f"granularity {name!r} cannot take the fields {fields}; "
            "pass the dict granularity_to_dict wrote"
        ) from None


def qtype_of(name: str, family: type, kind: str) -> QType:
    """Look up a format by name and check that a ``kind`` container can hold it."""
    qtype = get_qtype(name)
    if not isinstance(qtype, family):
        raise UnsupportedFormatError(
            f"a {kind} tensor cannot hold {name!r} (a {type(qtype).__name__}); "
            "use the QTensor class of that format's family"
        )
    return qtype


def storage_key(t: torch.Tensor) -> tuple:
    """What makes two tensors the same stored data (tied weights: an LM head sharing the
    embedding table): data pointer, shape, stride and dtype."""
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)


def widen(t: torch.Tensor) -> torch.Tensor:
    """Stored parameters (fp16/bf16/fp32) as the float32-or-wider tensor arithmetic uses."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def to_storage(
    t: torch.Tensor, dtype: torch.dtype, *, name: str, nonzero: bool = False
) -> torch.Tensor:
    """Cast a scale or offset to its storage dtype, refusing values the cast destroys."""
    if not dtype.is_floating_point:
        raise InvalidSpecError(
            f"{name} dtype must be a float dtype (e.g. torch.float16), got {dtype}"
        )
    stored = t.to(dtype).contiguous()
    if not bool(torch.isfinite(stored).all()) or (nonzero and bool((stored == 0).any())):
        raise InvalidInputError(
            f"the {name} does not fit {dtype} (it overflows or underflows to 0); "
            "store it as torch.float32"
        )
    return stored


def check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    """Raise InvalidInputError unless ``t`` has the ``expected`` shape."""
    if tuple(t.shape) != tuple(expected):
        raise InvalidInputError(
            f"{name} has shape {tuple(t.shape)} but the tensor's shape and granularity need "
            f"{tuple(expected)}; pass the parameters computed for this tensor"
        )


def check_packed(packed: torch.Tensor, n_codes: int, bits: int) -> None:
    """Packed codes must be the 1-D uint8 stream ``pack_codes`` writes for ``n_codes`` codes."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise InvalidInputError("packed codes must be a 1-D uint8 tensor (from pack_codes)")
    check_shape("packed codes", packed, (packed_nbytes(n_codes, bits),))


def check_codes(codes: torch.Tensor, lo: int, hi: int) -> None:
    """Codes must be integers in ``[lo, hi]`` before they are packed."""
    if codes.is_floating_point() or codes.is_complex():
        raise InvalidInputError(
            f"codes must have an integer dtype, got {codes.dtype}; round them and cast with .to()"
        )
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise InvalidInputError(
            f"codes must lie in [{lo}, {hi}], got [{int(codes.min())}, {int(codes.max())}]; "
            "clamp them to the format's code range"
        )


class QTensor(ABC):
    """Base of the QTensor containers: shape, byte accounting and (de)serialisation.

    Subclasses set ``kind`` (the registry key written to metadata) and implement
    ``dequantize``, ``tensors``, ``_metadata`` and ``_from_parts``. ``version`` goes up when a
    class changes what it stores, so old files fail loudly instead of loading wrong.
    """

    kind: ClassVar[str]
    version: ClassVar[int] = 1
    shape: tuple[int, ...]

    @abstractmethod
    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float values the stored data stands for, in the original shape."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every stored tensor by name: what ``nbytes`` counts and ``to_dict`` writes."""

    @abstractmethod
    def _metadata(self) -> Metadata:
        """Class-specific JSON-able facts (format name, granularity, ...)."""

    @classmethod
    @abstractmethod
    def _from_parts(cls, get: TensorGetter, shape: tuple[int, ...], meta: Mapping) -> QTensor:
        """Rebuild from stored tensors (``get(name)``) and the metadata ``to_dict`` wrote."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor (codes, scales, zero points or offsets), exactly."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def bits_per_weight(self) -> float:
        """8 · nbytes / numel: the storage cost per weight, parameters included."""
        return 8 * self.nbytes / self.numel if self.numel else 0.0

    def to_dict(self, prefix: str = "") -> tuple[dict[str, torch.Tensor], Metadata]:
        """Flat ``{prefix + name: tensor}`` and JSON-able metadata (kind, version, shape, ...)."""
        tensors = {prefix + name: t for name, t in self.tensors().items()}
        meta = {"kind": self.kind, "version": self.version, "shape": list(self.shape)}
        return tensors, {**meta, **self._metadata()}

    @classmethod
    def from_dict(
        cls, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any], prefix: str = ""
    ) -> QTensor:
        """Rebuild, bit-identically, what ``to_dict(prefix)`` wrote."""
        if metadata.get("kind") != cls.kind:
            raise UnsupportedFormatError(
                f"metadata kind {metadata.get('kind')!r} is not {cls.kind!r}; "
                "load it with lowbit.tensors.qtensor_from_dict"
            )
        if metadata.get("version") != cls.version:
            raise UnsupportedFormatError(
                f"{cls.kind} version {metadata.get('version')!r} is not supported (this lowbit "
                f"reads version {cls.version}); upgrade lowbit or export the model again"
            )

        def get(name: str) -> torch.Tensor:
            if prefix + name not in tensors:
                raise InvalidInputError(
                    f"tensor {prefix + name!r} of a {cls.kind} tensor is missing; pass every "
                    "tensor to_dict wrote, with the same prefix"
                )
            return tensors[prefix + name]

        try:
            shape = tuple(int(n) for n in metadata["shape"])
            return cls._from_parts(get, shape, metadata)
        except KeyError as exc:
            raise InvalidInputError(
                f"{cls.kind} metadata lacks the key {exc.args[0]!r}; "
                "pass the metadata to_dict wrote"
            ) from None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self._metadata().items())
        return (
            f"{type(self).__name__}(shape={self.shape}, {fields}, "
            f"bits_per_weight={self.bits_per_weight:.4g})"
        )


class LevelCodesTensor(QTensor):
    """Shared storage of the level-table families (codebook, binary/ternary): ``packed``
    indices into ``qtype.levels`` (qtype.bits each) and one ``scale`` per granularity block.

    Subclasses set ``family`` and add ``quantize`` and ``dequantize``; this is storage only.
    """

    family: ClassVar[type]

    def __init__(
        self,
        packed: torch.Tensor,
        scale: torch.Tensor,
        *,
        shape: tuple[int, ...],
        qtype: CodebookType | LevelsType,
        granularity: Granularity,
    ) -> None:
        """Wrap stored tensors as they are; use ``quantize`` or ``from_codes`` to build one."""
        self.shape = tuple(int(n) for n in shape)
        check_packed(packed, math.prod(self.shape), qtype.bits)
        check_shape("scale", scale, param_shape(self.shape, granularity))
        self.packed, self.scale, self.qtype, self.granularity = packed, scale, qtype, granularity

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        *,
        qtype: CodebookType | LevelsType,
        granularity: Granularity,
        scale_dtype: torch.dtype = torch.float32,
    ) -> LevelCodesTensor:
        """Pack level indices (integers in [0, len(qtype.levels))) computed elsewhere, with
        their scale of ``param_shape(codes.shape, granularity)``."""
        check_codes(codes, 0, len(qtype.levels) - 1)
        return cls(
            pack_codes(codes, qtype.bits),
            to_storage(scale, scale_dtype, name="scale", nonzero=True),
            shape=tuple(codes.shape),
            qtype=qtype,
            granularity=granularity,
        )

    def codes(self) -> torch.Tensor:
        """Unpacked level indices (uint8), original shape."""
        return unpack_codes(self.packed, self.qtype.bits, self.numel).reshape(self.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"packed": self.packed, "scale": self.scale}

    def _metadata(self) -> Metadata:
        return {"qtype": self.qtype.name, "granularity": granularity_to_dict(self.granularity)}

    @classmethod
    def _from_parts(
        cls, get: TensorGetter, shape: tuple[int, ...], meta: Mapping
    ) -> LevelCodesTensor:
        return cls(
            get("packed"),
            get("scale"),
            shape=shape,
            qtype=qtype_of(meta["qtype"], cls.family, cls.kind),
            granularity=granularity_from_dict(meta["granularity"]),
        )
