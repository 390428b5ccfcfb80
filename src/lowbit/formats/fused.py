"""Fast paths for the two common weight codecs, bit-identical to the reference arithmetic.

* ``quantize_int8_per_channel``: symmetric restricted int8, one scale per row (axis 0):
  s = max|x_row| / 127,  q = clamp(round(x / s), -127, 127). Identical to
  ``affine.quantize(x, choose_qparams(x, IntType(8, True), PerAxis(0)))``.
* ``quantize_pack_int4_groups``: symmetric restricted int4, one scale per ``group_size``
  consecutive elements of the last axis: s = max|x_group| / 7,
  q = clamp(round(x / s), -7, 7), packed as offset codes q + 7 in 4 bits. Identical to
  ``pack_codes(quantize(x, qp) - qp.qmin, 4)`` with
  ``qp = choose_qparams(x, IntType(4, True), PerGroup(group_size))``.

Both divide by the scale (x / s, never x · (1/s), which rounds differently) and round half to
even, exactly as ``affine`` documents; a zero block gets s = 1. Speed comes from doing fewer
passes over memory, not from different arithmetic:

* eager (default): rows are processed in chunks of about ``_CHUNK_ELEMS`` elements so the
  intermediate passes (divide, round, clamp, convert, pack) stay in cache, reusing buffers.
* ``compiled=True``: one ``torch.compile``'d (inductor, C++/OpenMP) kernel per codec that
  reads the input once per block and writes the codes directly. The first call in a process
  compiles (seconds; tens of seconds when inductor's on-disk cache is cold); if compiling
  fails (no C++ compiler) the eager path runs instead, with a logged warning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.checks import as_float, check_finite

logger = logging.getLogger(__name__)

# Elements per eager chunk: 1M fp32 (4 MiB) was fastest on a 2-core AMD CPU (measured 64K to
# 4M); large enough that each op's thread fork/join is amortised, small enough to stay cached.
_CHUNK_ELEMS = 1 << 20

Kernel = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _as_matrix_input(w: torch.Tensor, what: str) -> torch.Tensor:
    x = as_float(w)
    if x.dtype != torch.float32:
        raise InvalidInputError(
            f"{what} computes in float32 and got {x.dtype}; cast the weight with "
            ".float() or use lowbit.formats.affine for float64"
        )
    if x.dim() == 0 or x.shape[-1] == 0:
        raise InvalidInputError(
            f"{what} needs a tensor with >= 1 dim and a non-empty last dim, got shape "
            f"{tuple(x.shape)}"
        )
    return x.contiguous()


def _unit_if_zero(scale: torch.Tensor) -> torch.Tensor:
    # Same as affine's where(s > 0, s, 1) for every finite input (s >= 0, and a subnormal
    # max|x| whose s underflows to 0 also gets 1), but lets NaN/Inf through so the caller can
    # detect them without an extra pass over the input.
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def _check_scales(scale: torch.Tensor, x: torch.Tensor) -> None:
    """A non-finite scale means the block held NaN or Inf: let check_finite name them."""
    if not bool(torch.isfinite(scale).all()):
        check_finite(x)


def _rows_per_chunk(row_len: int) -> int:
    return max(1, _CHUNK_ELEMS // max(row_len, 1))


def _nibble_pack(codes: torch.Tensor, out: torch.Tensor) -> None:
    """out[j] = codes[2j] | codes[2j+1] << 4 for contiguous uint8 codes < 16 (even count)."""
    # Two codes read as one little-endian int16 v = c0 | c1 << 8; the low byte of
    # v | v >> 4 is c0 | c1 << 4 (c0 >> 4 is 0). One pass, no strided access.
    v = codes.view(torch.int16)
    out.copy_(v | (v >> 4))


def _int8_rows_eager(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = x.shape
    codes = torch.empty((n, k), dtype=torch.int8)
    scale = torch.empty(n)
    rows = _rows_per_chunk(k)
    buf = torch.empty((min(rows, n), k))
    for r0 in range(0, n, rows):
        xc = x[r0 : r0 + rows]
        m = xc.shape[0]
        lo, hi = torch.aminmax(xc, dim=1)
        s = _unit_if_zero(torch.maximum(lo.abs(), hi.abs()) / 127)
        scale[r0 : r0 + m] = s
        b = torch.div(xc, s.unsqueeze(1), out=buf[:m])
        b.round_().clamp_(-127, 127)
        codes[r0 : r0 + m].copy_(b)
    return codes, scale


def _int4_groups_eager(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = x.shape
    groups = -(-k // group_size)
    kp = groups * group_size
    scale = torch.empty((n, groups))
    # Rows pack independently when k is even; otherwise code pairs straddle rows, so keep all
    # codes and pack the flat stream at the end.
    packed = torch.empty((n, k // 2), dtype=torch.uint8) if k % 2 == 0 else None
    all_codes = None if packed is not None else torch.empty((n, k), dtype=torch.uint8)
    rows = _rows_per_chunk(kp)
    buf = torch.empty((min(rows, n), groups, group_size))
    cbuf = torch.empty((min(rows, n), k), dtype=torch.uint8)
    for r0 in range(0, n, rows):
        xc = x[r0 : r0 + rows]
        m = xc.shape[0]
        if kp != k:  # ragged last group: repeat the last element (as granularity.to_blocks)
            xc = torch.cat([xc, xc[:, -1:].expand(m, kp - k)], dim=1)
        blocks = xc.view(m, groups, group_size)
        lo, hi = torch.aminmax(blocks, dim=-1)
        s = _unit_if_zero(torch.maximum(lo.abs(), hi.abs()) / 7)
        scale[r0 : r0 + m] = s
        b = torch.div(blocks, s.unsqueeze(-1), out=buf[:m])
        b.round_().clamp_(-7, 7).add_(7)
        c = cbuf[:m]
        c.copy_(b.view(m, kp)[:, :k])
        if packed is not None:
            _nibble_pack(c, packed[r0 : r0 + m])
        else:
            all_codes[r0 : r0 + m] = c
    if packed is not None:
        return packed.view(-1), scale
    flat = all_codes.view(-1)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    out = torch.empty(flat.numel() // 2, dtype=torch.uint8)
    _nibble_pack(flat, out)
    return out, scale


def _int8_rows_kernel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = _unit_if_zero(x.abs().amax(dim=1, keepdim=True) / 127)
    codes = torch.round(x / s).clamp(-127, 127).to(torch.int8)
    return codes, s.squeeze(1)


def _int4_groups_kernel(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Needs k % group_size == 0 and an even group_size. Even and odd elements are computed
    # as two strided streams so each output byte is built in registers (a contiguous-codes
    # then pack formulation was 4x slower under inductor).
    n, k = x.shape
    b = x.view(n, k // group_size, group_size // 2, 2)
    s = _unit_if_zero(b.abs().amax(dim=(-2, -1), keepdim=True) / 7)
    lo = (torch.round(b[..., 0] / s[..., 0]).clamp(-7, 7) + 7).to(torch.uint8)
    hi = (torch.round(b[..., 1] / s[..., 0]).clamp(-7, 7) + 7).to(torch.uint8)
    return (lo | (hi << 4)).view(-1), s.view(n, k // group_size)


@functools.cache
def _compiled(name: str, group_size: int = 0) -> Kernel:
    """The torch.compile'd kernel, built once per process (compilation itself is lazy)."""
    if name == "int8":
        return torch.compile(_int8_rows_kernel, dynamic=True)
    return torch.compile(
        functools.partial(_int4_groups_kernel, group_size=group_size), dynamic=True
    )


def _run(compiled_fn: Callable[[], Kernel], x: torch.Tensor, eager: Kernel):
    try:
        return compiled_fn()(x)
    except Exception as exc:  # inductor raises many types (compiler missing, codegen)
        logger.warning("torch.compile path failed (%s); using the eager path", exc)
        return eager(x)


def quantize_int8_per_channel(
    w: torch.Tensor, *, compiled: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric restricted int8 codes with one scale per index of axis 0 (output channel).

    Args:
        w: float tensor (fp32/fp16/bf16, computed in fp32) of shape [N, ...], finite.
        compiled: use the torch.compile'd kernel (fastest; the first call compiles).

    Returns:
        (codes int8 of w's shape, scale float32 [N]), bit-identical to the affine path.
    """
    x = _as_matrix_input(w, "quantize_int8_per_channel")
    x2 = x.reshape(x.shape[0], -1)
    if compiled:
        codes, scale = _run(lambda: _compiled("int8"), x2, _int8_rows_eager)
    else:
        codes, scale = _int8_rows_eager(x2)
    _check_scales(scale, x)
    return codes.view(x.shape), scale


def quantize_pack_int4_groups(
    w: torch.Tensor, group_size: int = 32, *, compiled: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric restricted int4 with groups along the last axis, packed two codes a byte.

    Args:
        w: float tensor (fp32/fp16/bf16, computed in fp32) of shape [..., K], finite. K need
            not be a multiple of ``group_size`` (the last group is then shorter).
        group_size: elements per scale along the last axis.
        compiled: use the torch.compile'd kernel when K % group_size == 0 and group_size is
            even (fastest; the first call compiles); other shapes use the eager path.

    Returns:
        (packed uint8 1-D of ceil(numel / 2) bytes holding offset codes q + 7 in
        ``pack_codes`` layout, scale float32 [..., ceil(K / group_size)]), bit-identical to
        ``pack_codes(quantize(w, qp) - qp.qmin, 4)`` and ``qp.scale``.
    """
    if group_size < 1:
        raise InvalidSpecError(f"group size must be >= 1, got {group_size}")
    x = _as_matrix_input(w, "quantize_pack_int4_groups")
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    eager = functools.partial(_int4_groups_eager, group_size=group_size)
    if compiled and k % group_size == 0 and group_size % 2 == 0:
        packed, scale = _run(lambda: _compiled("int4", group_size), x2, eager)
    else:
        packed, scale = eager(x2)
    _check_scales(scale, x)
    return packed, scale.view(*x.shape[:-1], scale.shape[-1])
