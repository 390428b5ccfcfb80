"""L3: pure quantization algorithms (tensors, statistics, spec in; codes or scales out).

No model walking, no files, no global state. ``qat``: fake quantization with the
straight-through estimator and learned step size (LSQ) for quantization-aware training.
"""

from lowbit.algorithms.qat import fake_quantize_ste, lsq_fake_quantize, lsq_grad_scale

__all__ = ["fake_quantize_ste", "lsq_fake_quantize", "lsq_grad_scale"]
