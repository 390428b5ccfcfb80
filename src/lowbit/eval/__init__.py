"""L6: measuring a model: accuracy, perplexity and embedding fidelity, latency, size in
bytes, the fixed calibration/evaluation text, and the paths of the real models that tests,
benchmarks and examples use (``lowbit.eval.bundled``)."""

from lowbit.eval.embedding import embed, embedding_fidelity
from lowbit.eval.latency import time_interleaved
from lowbit.eval.metrics import accuracy, sqnr_db
from lowbit.eval.perplexity import PerplexityResult, perplexity
from lowbit.eval.size import model_nbytes
from lowbit.eval.text import calibration_text, evaluation_text, read_text, text_chunks

__all__ = [
    "PerplexityResult",
    "accuracy",
    "calibration_text",
    "embed",
    "embedding_fidelity",
    "evaluation_text",
    "model_nbytes",
    "perplexity",
    "read_text",
    "sqnr_db",
    "text_chunks",
    "time_interleaved",
]
