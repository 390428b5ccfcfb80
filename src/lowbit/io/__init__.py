"""L6: reading and writing files. Loading models (``hf.py``: transformers folders and GGUF
files through transformers; ``inspect.py``: safetensors/GGUF headers checked against the
bytes on disk, parameter counts) and lowbit's own save folders (``save.py``: ``save`` /
``load``, safetensors + a JSON manifest; ``manifest.py``: the manifest, its checksums and
checks). Never unpickles: only safetensors and GGUF are read. Every write goes through
``lowbit.atomic``. Writers for other formats (``gguf/``, ``onnx/``) belong here too."""

from lowbit.io.hf import LoadedModel, load_model
from lowbit.io.inspect import ModelFileInfo, count_parameters
from lowbit.io.manifest import read_manifest
from lowbit.io.save import load, save

__all__ = [
    "LoadedModel",
    "ModelFileInfo",
    "count_parameters",
    "load",
    "load_model",
    "read_manifest",
    "save",
]
