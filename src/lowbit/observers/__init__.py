"""L2: statistics of tensors seen during calibration, turned into clip ranges and QParams.

Observers: min/max (running or moving average), percentile, MSE-optimal clipping search and
entropy/KL (TensorRT's calibration), per tensor or per channel; HessianObserver accumulates
the 2/n·XᵀX of a Linear's inputs that GPTQ needs, SquaresObserver the per-column Σx² of
llama.cpp's imatrix. Hooks attach them to a module's inputs or
outputs as context managers; observing never changes outputs.
"""

from lowbit.observers.base import Observer
from lowbit.observers.entropy import EntropyObserver
from lowbit.observers.hessian import HessianObserver
from lowbit.observers.histogram import HistogramObserver
from lowbit.observers.hooks import ObserverHook, observe_module
from lowbit.observers.minmax import MinMaxObserver, MovingAverageMinMaxObserver
from lowbit.observers.mse import MSEObserver
from lowbit.observers.percentile import PercentileObserver
from lowbit.observers.registry import OBSERVERS, make_observer
from lowbit.observers.squares import SquaresObserver

__all__ = [
    "OBSERVERS",
    "EntropyObserver",
    "HessianObserver",
    "HistogramObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "ObserverHook",
    "PercentileObserver",
    "SquaresObserver",
    "make_observer",
    "observe_module",
]
