"""Which elements share one scale: the whole tensor, one slice per channel, or groups.

The helpers here turn any tensor into a 3-D "blocked" view ``(rows, groups, group_len)`` so
that every statistic (amax, amin, mean|x|) is one reduction over the last dimension, and turn
per-block parameters back into something that broadcasts against the original tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import InvalidSpecError


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor. Parameters have shape ``()``."""


@dataclass(frozen=True)
class PerAxis:
    """One scale per index of ``axis`` (per output channel: axis=0 of a Linear weight).

    Parameters have shape ``(x.shape[axis],)``.
    """

    axis: int = 0


@dataclass(frozen=True)
class PerGroup:
    """Groups of ``size`` consecutive elements along ``axis`` (default: the last, input dim).

    A last group shorter than ``size`` is allowed (ragged). Parameters have the shape of x with
    ``axis`` replaced by the number of groups, ceil(x.shape[axis] / size).
    """

    size: int
    axis: int = -1

    def __post_init__(self) -> None:
        if self.size < 1:
            raise InvalidSpecError(f"group size must be >= 1, got {self.size}")


Granularity = PerTensor | PerAxis | PerGroup


def _axis(shape: torch.Size | tuple[int, ...], axis: int) -> int:
    """``axis`` as a non-negative index into ``shape`` (on the hot path of every quantize:
    plain ints, no tensor)."""
    ndim = len(shape)
    if ndim == 0:
        raise InvalidSpecError("per-axis and per-group quantization need a tensor with >= 1 dim")
    if not -ndim <= axis < ndim:
        raise InvalidSpecError(f"axis {axis} is out of range for a tensor of shape {tuple(shape)}")
    return axis % ndim


def param_shape(shape: torch.Size | tuple[int, ...], granularity: Granularity) -> tuple[int, ...]:
    """The shape of the scale (and zero point) tensor for a tensor of ``shape``."""
    shape = tuple(shape)
    if isinstance(granularity, PerTensor):
        return ()
    axis = _axis(shape, granularity.axis)
    if isinstance(granularity, PerAxis):
        return (shape[axis],)
    n_groups = -(-shape[axis] // granularity.size)
    return (*shape[:axis], n_groups, *shape[axis + 1 :])


def to_blocks(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """View ``x`` as ``(rows, groups, group_len)``; a ragged last group is padded by repeating
    its last element, which leaves min, max and absmax unchanged (not the mean: callers that
    average use ``block_counts``)."""
    if isinstance(granularity, PerTensor):
        return x.reshape(1, 1, -1)
    axis = _axis(x.shape, granularity.axis)
    moved = x.movedim(axis, -1)
    if isinstance(granularity, PerAxis):
        return x.movedim(axis, 0).reshape(x.shape[axis], 1, -1)
    size, length = granularity.size, moved.shape[-1]
    pad = -length % size
    if pad:
        moved = torch.cat([moved, moved[..., -1:].expand(*moved.shape[:-1], pad)], dim=-1)
    return moved.reshape(-1, moved.shape[-1] // size, size)


def block_counts(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Number of real (unpadded) elements in each block of ``to_blocks(x)``, shape (1, G, 1)."""
    if not isinstance(granularity, PerGroup):
        n = (
            x.numel()
            if isinstance(granularity, PerTensor)
            else x.numel() // max(x.shape[_axis(x.shape, granularity.axis)], 1)
        )
        return torch.full((1, 1, 1), float(n))
    length = x.shape[_axis(x.shape, granularity.axis)]
    size = granularity.size
    n_groups = -(-length // size)
    counts = torch.full((1, n_groups, 1), float(size))
    counts[0, -1, 0] = float(length - size * (n_groups - 1))
    return counts


def from_blocks(
    params: torch.Tensor, shape: tuple[int, ...], granularity: Granularity
) -> torch.Tensor:
    """Reshape per-block values ``(rows, groups, 1)`` to ``param_shape(shape, granularity)``."""
    pshape = param_shape(shape, granularity)
    if isinstance(granularity, PerGroup):
        axis = _axis(shape, granularity.axis)
        moved = (*shape[:axis], *shape[axis + 1 :], pshape[axis])
        return params.reshape(moved).movedim(-1, axis)
    return params.reshape(pshape)


def params_to_blocks(
    params: torch.Tensor, shape: tuple[int, ...], granularity: Granularity
) -> torch.Tensor:
    """Inverse of ``from_blocks``: parameters (broadcastable to ``param_shape``) to the
    blocked layout ``(rows, groups, 1)``."""
    pshape = param_shape(shape, granularity)
    p = torch.broadcast_to(params, pshape)
    if isinstance(granularity, PerGroup):
        axis = _axis(shape, granularity.axis)
        p = p.movedim(axis, -1)
        return p.reshape(-1, pshape[axis], 1)
    return p.reshape(-1, 1, 1)


def broadcast_to(
    params: torch.Tensor, shape: tuple[int, ...], granularity: Granularity
) -> torch.Tensor:
    """Expand parameters of ``param_shape(shape, granularity)`` so they broadcast against a
    tensor of ``shape`` elementwise."""
    if isinstance(granularity, PerTensor):
        return params
    axis = _axis(shape, granularity.axis)
    if isinstance(granularity, PerAxis):
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return params.reshape(view)
    expanded = params.repeat_interleave(granularity.size, dim=axis)
    return expanded.narrow(axis, 0, shape[axis])
