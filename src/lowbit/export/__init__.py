"""L6: files. Reading model files' headers (parameter counts), and saving/loading quantized
models as safetensors + a JSON manifest, loading transformers models (folders, GGUF files).
Never unpickles: only safetensors and GGUF are read."""

from lowbit.export.hf import LoadedModel, load_model
from lowbit.export.inspect import ModelFileInfo, count_parameters
from lowbit.export.manifest import read_manifest
from lowbit.export.save import load, save

__all__ = [
    "LoadedModel",
    "ModelFileInfo",
    "count_parameters",
    "load",
    "load_model",
    "read_manifest",
    "save",
]
