"""LiteRT export: lowbit's int8-static CNNs as .tflite files that ai-edge-litert runs with its
int8 kernels, holding exactly the scales, zero points and weight codes lowbit chose.

- ``flatbuffer.py``: the file format, through the schema module ai-edge-litert ships
  (litert-torch cannot be installed with lowbit's lock: docs/decisions.md).
- ``convert.py``: the model's forward (torch.fx) as TFLite int8 operators.
- ``api.py``: ``export_tflite`` (write atomically, verify in the LiteRT interpreter) and
  ``run_tflite``.

ai-edge-litert and flatbuffers are optional (``pip install "lowbit[litert]"``).
"""

from lowbit.export.tflite.api import (
    TfliteExportResult,
    TfliteVerification,
    export_tflite,
    run_tflite,
)

__all__ = ["TfliteExportResult", "TfliteVerification", "export_tflite", "run_tflite"]
