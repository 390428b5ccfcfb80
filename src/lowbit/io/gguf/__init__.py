"""GGUF files (llama.cpp's format): a validating, memory-mapped reader (reader.py), the
per-tensor type choice of llama-quantize (types.py) and the writer (writer.py); gguf-py's
reader, which transformers and the writer use, parses through gguf_py.py (3x faster).

``read_gguf(path)`` parses and checks the header (key-value metadata and tensor infos) and
memory-maps the file; tensor data is only touched when asked for. Every damaged or hostile
file fails with an InvalidInputError that names the file, the problem and the fix.
``load_gguf(path)`` builds a llama-family model whose Q8_0/Q4_0/Q4_1 linear weights are
lowbit QuantLinear modules (lossless).
"""

from lowbit.io.gguf.load import load_gguf
from lowbit.io.gguf.reader import (
    GGMLType,
    GGUFFile,
    GGUFTensor,
    describe,
    ggml_types,
    read_gguf,
)

__all__ = ["GGMLType", "GGUFFile", "GGUFTensor", "describe", "ggml_types", "load_gguf", "read_gguf"]
