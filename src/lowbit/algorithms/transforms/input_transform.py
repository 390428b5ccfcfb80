"""Input transforms for dynamic int8 Linear layers with per-batch activations whose input no
layer before can absorb a scale (post-LN encoders such as BERT and MiniLM: every norm output
is also the residual, and GELU sits between the FFN Linears), chosen per input by measured
error.

Per-batch int8 activations (one scale for the whole batch, what ONNX Runtime's
DynamicQuantizeLinear computes) lose most where a few channels carry values far above the
rest: the one scale must cover them (MiniLM's FFN down input reaches 24 on [CLS] tokens in a
few channels against a median token maximum of 3). Two remedies keep the per-batch kernel:

* shrinking SmoothQuant: SmoothQuant's scales s_j = max|X_j|^α / max|W_j|^(1−α) (Xiao et al.
  2022, arXiv:2211.10438) applied by an explicit multiply x·(1/s) before quantizing, as Intel
  Neural Compressor does where no fold exists, with s clamped to >= 1: channels are only
  ever shrunk. Unclamped scales amplify the quiet channels, and the padded rows of a real
  batch, which calibration never sees, then set the per-batch range (MiniLM, 256 passages
  in padded batches of 32: cosine 0.9936 against 0.9974 unpadded; docs/decisions.md).
  Cost: one elementwise multiply of the input.
* float outlier channels: the k channels of largest max|x_j| on the calibration data kept
  in float and out of the quantized product (as QUIK keeps a fixed set of full-precision
  outlier columns, Ashkboos et al. 2023, arXiv:2310.09259). Cost: the multiply, plus a
  k-wide float product added to the output (a pass over the output).

``choose_input_transform`` keeps the candidate with the smallest output error on the
calibration rows. On MiniLM that is a shrinking multiply at the attention and FFN inputs and
float channels at the FFN down input of the first blocks, where the [CLS] spikes are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lowbit.algorithms.transforms.smoothquant import input_channel_absmax, smoothquant_scales
from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.affine import choose_qparams, fake_quantize
from lowbit.formats.granularity import PerTensor
from lowbit.formats.qtypes import IntType

ALPHAS = (0.6, 0.7, 0.8, 0.9)
OUTLIER_CHANNELS = 4
_UINT8 = IntType(8, False)
_NO_CHANNELS = torch.empty(0, dtype=torch.int64)


@dataclass(frozen=True)
class InputTransform:
    """x → x·(1/s) with the ``outliers`` channels zeroed (computed in float instead).

    ``name`` says what it is ("none", "shrink 0.7", "4 float channels"); ``scale`` is s
    (>= 1; ones: no smoothing); ``outliers`` int64 channel indices (possibly none).
    """

    name: str
    scale: torch.Tensor
    outliers: torch.Tensor = _NO_CHANNELS

    @property
    def is_identity(self) -> bool:
        return self.outliers.numel() == 0 and bool((self.scale == 1).all())

    def input_scale(self) -> torch.Tensor:
        """The multiplier of the quantized input: 1/s, 0 at the outlier channels."""
        inv = 1.0 / self.scale
        inv[self.outliers] = 0.0
        return inv

    def quantized_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight (N, K) to quantize: W·s, the outlier columns zeroed (their input is 0
        there, and a zero column keeps them out of the per-channel scales)."""
        out = weight.detach().float() * self.scale
        out[:, self.outliers] = 0.0
        return out

    def float_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The float columns (N, len(outliers)) of the original weight."""
        return weight.detach().float()[:, self.outliers].contiguous()


def dynamic_uint8(x: torch.Tensor) -> torch.Tensor:
    """Per-batch uint8 fake quantization (range widened to hold 0), as DynamicQuantizeLinear
    and lowbit's dynamic kernels quantize."""
    x = x.float()
    return fake_quantize(
        x, choose_qparams(x, _UINT8, PerTensor(), symmetric=False, form="zero_point")
    )


def candidate_transforms(
    act_absmax: torch.Tensor,
    weights: Sequence[torch.Tensor],
    alphas: Sequence[float] = ALPHAS,
    outliers: int = OUTLIER_CHANNELS,
) -> list[InputTransform]:
    """None, shrinking SmoothQuant at each alpha, and (``outliers`` > 0) that many float
    outlier channels."""
    k = act_absmax.shape[0]
    if not 0 <= outliers < k:
        raise InvalidSpecError(f"outliers must be in [0, {k}) for {k} input channels")
    w_absmax = input_channel_absmax(weights)
    multiply = [InputTransform("none", torch.ones(k))]
    for alpha in alphas:
        s = smoothquant_scales(act_absmax, w_absmax, alpha).clamp(min=1.0)
        multiply.append(InputTransform(f"shrink {alpha:g}", s))
    if not outliers:
        return multiply
    top = torch.topk(act_absmax.float(), outliers).indices.sort().values
    return [*multiply, InputTransform(f"{outliers} float channels", torch.ones(k), top)]


def output_error(
    transform: InputTransform,
    weights: Sequence[torch.Tensor],
    sample: torch.Tensor,
    fake_weight: Callable[[torch.Tensor], torch.Tensor],
) -> float:
    """Sum over the Linear layers of the mean over rows of ||y_q − y||² / ||y||² on the sample
    rows (M, K): per-batch uint8 activations, weights rounded by ``fake_weight``. Rows count
    alike, so a few large [CLS] rows do not hide the error of the ordinary ones."""
    x = sample.float()
    xq = dynamic_uint8(x * transform.input_scale())
    x_float = x[:, transform.outliers]
    total = 0.0
    for w in weights:
        ref = x @ w.float().t()
        y = xq @ fake_weight(transform.quantized_weight(w)).float().t()
        y = y + x_float @ transform.float_weight(w).t()
        rows = (y - ref).square().sum(1) / ref.square().sum(1).clamp(min=1e-30)
        total += float(rows.mean())
    return total


def choose_input_transform(
    weights: Sequence[torch.Tensor],
    sample: torch.Tensor,
    act_absmax: torch.Tensor,
    fake_weight: Callable[[torch.Tensor], torch.Tensor],
    *,
    alphas: Sequence[float] = ALPHAS,
    outliers: int = OUTLIER_CHANNELS,
) -> tuple[InputTransform, dict[str, float]]:
    """For the Linear layers that read one input: the candidate (none, shrinking SmoothQuant
    at each alpha, float outlier channels) with the smallest ``output_error``, and every
    candidate's error (name -> error), for the record.

    Args:
        weights: the (N_i, K) weights of the Linear layers reading the input.
        sample: calibration rows (M, K) of that input.
        act_absmax: max|x_j| per input channel over the calibration data.
        fake_weight: the weight spec's quantize-dequantize.
        alphas: SmoothQuant's migration strengths to try (scales clamped to >= 1).
        outliers: how many input channels the float candidate keeps (0: no such candidate).
    """
    k = act_absmax.shape[0]
    if sample.dim() != 2 or sample.shape[0] == 0 or sample.shape[1] != k:
        raise InvalidInputError(
            f"sample must be (rows, {k}) calibration rows, got {tuple(sample.shape)}; "
            "calibrate with at least one batch"
        )
    candidates = candidate_transforms(act_absmax, weights, alphas, outliers)
    errors = {c.name: output_error(c, weights, sample, fake_weight) for c in candidates}
    return min(candidates, key=lambda c: errors[c.name]), errors
