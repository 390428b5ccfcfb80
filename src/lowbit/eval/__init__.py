"""L6: measuring a model: accuracy and fidelity metrics, latency, size in bytes."""

from lowbit.eval.latency import time_interleaved
from lowbit.eval.metrics import accuracy, sqnr_db
from lowbit.eval.size import model_nbytes

__all__ = ["accuracy", "model_nbytes", "sqnr_db", "time_interleaved"]
