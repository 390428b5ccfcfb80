"""GGUF block codecs: ggml's quantized block types, bit-exact with llama.cpp 0c1e570.

BLOCK_TYPES maps the lower-case ggml name ("q4_0", ...) to its codec; get_block_codec looks
one up. Each codec quantizes float32 (rows, K) into the bytes ggml writes (quantize), reads
them back (dequantize), and exposes encode/decode of integer codes + scales.
"""

from __future__ import annotations

from lowbit.errors import UnsupportedFormatError

from .common import BlockCodec, BlockGrid
from .iq4nl import IQ4NLCodec
from .kquants import Q4KCodec, Q5KCodec, Q6KCodec
from .kquants_low import Q2KCodec, Q3KCodec
from .legacy import Q40Codec, Q41Codec, Q50Codec, Q51Codec, Q80Codec

BLOCK_TYPES: dict[str, BlockCodec] = {
    c.name: c
    for c in (
        Q80Codec(),
        Q40Codec(),
        Q41Codec(),
        Q50Codec(),
        Q51Codec(),
        Q2KCodec(),
        Q3KCodec(),
        Q4KCodec(),
        Q5KCodec(),
        Q6KCodec(),
        IQ4NLCodec(),
    )
}


def get_block_codec(name: str) -> BlockCodec:
    """The codec of a ggml type name (any case); UnsupportedFormatError lists the known ones."""
    codec = BLOCK_TYPES.get(str(name).lower())
    if codec is None:
        raise UnsupportedFormatError(
            f"unknown GGUF block type {name!r}; known: {', '.join(sorted(BLOCK_TYPES))}"
        )
    return codec


__all__ = ["BLOCK_TYPES", "BlockCodec", "BlockGrid", "get_block_codec"]
