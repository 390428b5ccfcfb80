"""The tiny base every observer shares: input checks, the channel layout, and QParams.

An observer accumulates statistics over calibration batches (``observe``) and turns them
into a clip range (``clip_range``) and quantization parameters (``qparams``). The
arithmetic is not repeated here: ``qparams`` hands the clip range to
``lowbit.formats.affine.choose_qparams``.

Per-tensor observers (``axis=None``) keep one statistic; per-channel observers keep one per
index of ``axis`` (for activations of shape (N, C, H, W) that is ``axis=1``; for (N, ..., C)
it is ``axis=-1``), and every batch must have the same number of channels.
"""

from __future__ import annotations

import logging

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.affine import AsymmetricForm, QParams, choose_qparams
from lowbit.formats.checks import check_finite
from lowbit.formats.granularity import Granularity, PerAxis, PerTensor, to_blocks
from lowbit.formats.qtypes import IntType

logger = logging.getLogger(__name__)


class Observer:
    """Base class: subclasses implement ``_update`` and ``_clip_range``.

    Args:
        axis: None for one statistic per tensor, or the channel axis for one per channel.
    """

    def __init__(self, axis: int | None = None) -> None:
        if axis is not None and not isinstance(axis, int):
            raise InvalidSpecError(f"axis must be an int or None, got {axis!r}")
        self.axis = axis
        self.num_batches = 0
        self.num_channels: int | None = None
        self._ndim: int | None = None

    @property
    def granularity(self) -> Granularity:
        """PerTensor() or PerAxis(axis): the granularity of the parameters ``qparams`` gives."""
        return PerTensor() if self.axis is None else PerAxis(self.axis)

    def reset(self) -> None:
        """Forget every observed batch."""
        type(self).__init__(self, **self._init_kwargs())

    def _init_kwargs(self) -> dict:
        return {"axis": self.axis}

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Accumulate statistics of one batch. ``x`` is only read, never modified.

        Raises InvalidInputError for NaN/Inf, a channel axis the batch does not have, or a
        channel count that differs from earlier batches. Empty batches (e.g. an MoE expert
        that got no tokens) are skipped.
        """
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(f"observe() needs a torch.Tensor, got {type(x).__name__}")
        name = type(self).__name__
        x = x.detach()
        if x.is_complex():
            raise InvalidInputError(f"{name} cannot observe complex tensors")
        check_finite(x, what=f"batch given to {name}")
        rows = self._check_layout(x)
        if x.numel() == 0:
            logger.debug("%s skipped an empty batch of shape %s", name, tuple(x.shape))
            return
        flat = to_blocks(x.to(torch.float32), self.granularity).reshape(rows, -1)
        self._update(flat)
        self.num_batches += 1

    def _check_layout(self, x: torch.Tensor) -> int:
        """Validate the channel axis of ``x``; return the number of rows (channels or 1)."""
        name = type(self).__name__
        if self.axis is None:
            rows = 1
        else:
            if not -x.dim() <= self.axis < x.dim():
                raise InvalidInputError(
                    f"{name}(axis={self.axis}) got a batch of shape {tuple(x.shape)} that has "
                    "no such axis; give the channel axis of the tensors you observe"
                )
            rows = x.shape[self.axis]
        if self.num_channels is not None and rows != self.num_channels:
            raise InvalidInputError(
                f"{name}(axis={self.axis}) saw {self.num_channels} channel(s) before but this "
                f"batch of shape {tuple(x.shape)} has {rows}; observe tensors with the same "
                "channel count, or use one observer per tensor"
            )
        self.num_channels = rows
        self._ndim = x.dim()
        return rows

    def _update(self, flat: torch.Tensor) -> None:
        """Accumulate one batch given as float32 of shape (channels or 1, values)."""
        raise NotImplementedError

    def _clip_range(self, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) of shape (channels or 1,) from the accumulated statistics."""
        raise NotImplementedError

    def _require_data(self) -> None:
        if self.num_batches == 0:
            raise InvalidInputError(
                f"{type(self).__name__} has observed no data yet; call observe() on at least "
                "one non-empty calibration batch before asking for a clip range"
            )

    def clip_range(self, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The range to clip to, as float32 tensors (lo, hi).

        Shapes: ``()`` per tensor, ``(C,)`` per channel. Symmetric ranges are (-L, L).
        """
        self._require_data()
        lo, hi = self._clip_range(symmetric)
        return self._shape(lo), self._shape(hi)

    def _shape(self, p: torch.Tensor) -> torch.Tensor:
        p = p.to(torch.float32)
        return p.reshape(()) if self.axis is None else p.reshape(-1)

    def qparams(
        self,
        qtype: IntType,
        *,
        symmetric: bool = True,
        restricted: bool = True,
        form: AsymmetricForm = "offset",
    ) -> QParams:
        """Quantization parameters for the observed tensors, via ``choose_qparams``.

        The options mean what they mean in ``lowbit.formats.affine.choose_qparams``; the
        clip range comes from the observed statistics.
        """
        self._require_data()
        lo, hi = self._clip_for(qtype, symmetric, restricted, form)
        lo, hi = self._shape(lo), self._shape(hi)
        # A stand-in tensor of the observed rank: only its shape matters to choose_qparams.
        shape = [1] * (self._ndim or 1)
        if self.axis is not None:
            shape[self.axis] = self.num_channels or 1
        dummy = torch.zeros(shape, dtype=torch.float32, device=lo.device)
        return choose_qparams(
            dummy,
            qtype,
            self.granularity,
            symmetric=symmetric,
            restricted=restricted,
            form=form,
            clip=(lo, hi),
        )

    def _clip_for(
        self, qtype: IntType, symmetric: bool, restricted: bool, form: AsymmetricForm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The clip range ``qparams`` uses; observers that optimise for the exact grid
        (MSE) override this."""
        del qtype, restricted, form
        return self._clip_range(symmetric)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._init_kwargs().items())
        return f"{type(self).__name__}({args})"
