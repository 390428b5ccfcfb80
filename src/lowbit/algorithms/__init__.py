"""L3: pure quantization algorithms (tensors, statistics, spec in; codes or scales out).

No model walking, no files, no global state. ``rtn``: round-to-nearest weight quantization
(the baseline, and the one RTN every caller uses). ``gptq``: GPTQ, column-by-column rounding
with Hessian-weighted error feedback. ``qat``: fake quantization with the straight-through
estimator and learned step size (LSQ) for quantization-aware training.
"""

from lowbit.algorithms.gptq import gptq_quantize
from lowbit.algorithms.qat import fake_quantize_ste, lsq_fake_quantize, lsq_grad_scale
from lowbit.algorithms.rtn import rtn_quantize, rtn_tensor, weight_granularity

__all__ = [
    "fake_quantize_ste",
    "gptq_quantize",
    "lsq_fake_quantize",
    "lsq_grad_scale",
    "rtn_quantize",
    "rtn_tensor",
    "weight_granularity",
]
