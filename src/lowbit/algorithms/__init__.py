"""L3: pure quantization algorithms (tensors, statistics, spec in; codes or scales out).

No model walking, no files, no global state. ``rtn``: round-to-nearest weight quantization
(the baseline, and the one RTN every caller uses). ``gptq``: GPTQ, column-by-column rounding
with Hessian-weighted error feedback. QAT's fake quantization (straight-through estimator,
LSQ) is arithmetic that the QAT modules (lowbit.nn, below this layer) call: it lives in
``lowbit.formats.qat``.
"""

from lowbit.algorithms.gptq import gptq_quantize
from lowbit.algorithms.rtn import rtn_quantize, rtn_tensor

__all__ = [
    "gptq_quantize",
    "rtn_quantize",
    "rtn_tensor",
]
