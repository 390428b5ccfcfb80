"""Exports: a model in, a file another runtime runs out, with the values a lowbit method chose.

Each pipeline joins io (read the source, write the file) and recipes/algorithms (choose the
values on calibration data), which io alone may not import.
"""

from lowbit.export.gguf import GGUF_METHODS, GGUFExportJob, export_gguf

__all__ = ["GGUF_METHODS", "GGUFExportJob", "export_gguf"]
