"""L6: files. Reading model files' headers (parameter counts), and saving/loading quantized
models as safetensors + a JSON manifest. Never unpickles: only safetensors and GGUF are read."""

from lowbit.export.inspect import ModelFileInfo, count_parameters
from lowbit.export.save import load, read_manifest, save

__all__ = ["ModelFileInfo", "count_parameters", "load", "read_manifest", "save"]
