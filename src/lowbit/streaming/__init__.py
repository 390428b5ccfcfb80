"""Quantize models larger than RAM: weights stream from the model folder's safetensors one
transformer block at a time, calibration activations are kept for one block (on disk when
they do not fit), and the save folder is written block by block (docs/decisions.md, issue 15).
"""

from lowbit.streaming.memory import default_max_memory, parse_size
from lowbit.streaming.quantize import quantize_folder

__all__ = ["default_max_memory", "parse_size", "quantize_folder"]
