"""L6: files. Reading model files' headers (parameter counts) and, later, saving and loading
quantized models. Never unpickles: only safetensors and GGUF are read."""

from lowbit.export.inspect import ModelFileInfo, count_parameters

__all__ = ["ModelFileInfo", "count_parameters"]
