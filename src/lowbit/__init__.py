"""lowbit: quantize trained neural networks, run them on real low-bit kernels, and report
honestly what it cost."""

from lowbit.errors import LowbitError

__version__ = "0.1.0"

__all__ = ["LowbitError", "__version__"]
