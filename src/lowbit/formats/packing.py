"""Pack b-bit codes (1 <= b <= 8) densely into bytes, and unpack them exactly.

Layout: a little-endian bit stream. Code i occupies bits [i·b, (i+1)·b) of the stream, bit 0
being the least significant bit of byte 0. For 1, 2 and 4 bits this is the usual layout
(4-bit: byte = c0 | c1 << 4); for 3 bits every 8 codes fill exactly 3 bytes. A stream of n
codes takes ceil(n·b / 8) bytes; unused high bits of the last byte are zero.
"""

from __future__ import annotations

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise InvalidSpecError(f"packing supports 1 to 8 bits per code, got {bits}")


def packed_nbytes(n_codes: int, bits: int) -> int:
    """Bytes needed for ``n_codes`` codes of ``bits`` bits: ceil(n·b / 8)."""
    _check_bits(bits)
    return -(-n_codes * bits // 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (any integer dtype, values in [0, 2^bits)) into a 1-D uint8 tensor.

    Signed codes must be offset first (q - qmin). The shape is not stored: keep it beside.
    """
    _check_bits(bits)
    flat = codes.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise InvalidInputError(
            f"codes must lie in [0, {(1 << bits) - 1}] to pack into {bits} bits, got "
            f"[{int(flat.min())}, {int(flat.max())}]; offset signed codes by -qmin first"
        )
    n = flat.numel()
    nbytes = packed_nbytes(n, bits)
    if bits == 8:
        return flat.to(torch.uint8).clone()
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte
        per_byte = 8 // bits
        padded = torch.zeros(nbytes * per_byte, dtype=torch.uint8)
        padded[:n] = flat.to(torch.uint8)
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
        return (padded.view(-1, per_byte) << shifts).sum(dim=1, dtype=torch.uint8)
    # 3, 5, 6, 7 bits: 8 codes make exactly `bits` bytes; assemble them in a 64-bit word.
    n_words = -(-n // 8)
    padded = torch.zeros(n_words * 8, dtype=torch.int64)
    padded[:n] = flat.to(torch.int64)
    words = (padded.view(-1, 8) << (torch.arange(8, dtype=torch.int64) * bits)).sum(dim=1)
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    out = ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[:nbytes].clone()


def unpack_codes(packed: torch.Tensor, bits: int, n_codes: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: the first ``n_codes`` codes as a 1-D uint8 tensor."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise InvalidInputError("packed codes must be a 1-D uint8 tensor (from pack_codes)")
    if packed.numel() < packed_nbytes(n_codes, bits):
        raise InvalidInputError(
            f"{packed.numel()} bytes cannot hold {n_codes} codes of {bits} bits "
            f"(need {packed_nbytes(n_codes, bits)}); the data is truncated or the shape is wrong"
        )
    if bits == 8:
        return packed[:n_codes].clone()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
        codes = (packed.unsqueeze(1) >> shifts) & mask
        return codes.reshape(-1)[:n_codes].clone()
    n_words = -(-n_codes // 8)
    padded = torch.zeros(n_words * bits, dtype=torch.int64)
    used = min(packed.numel(), n_words * bits)
    padded[:used] = packed[:used].to(torch.int64)
    words = (padded.view(-1, bits) << (torch.arange(bits, dtype=torch.int64) * 8)).sum(dim=1)
    codes = (words.unsqueeze(1) >> (torch.arange(8, dtype=torch.int64) * bits)) & mask
    return codes.reshape(-1)[:n_codes].to(torch.uint8)
