"""Input transforms for per-batch int8 activations: each candidate is an exact rewrite in
float, the shrinking scales never amplify a channel, and the measured choice puts the
channels that set the range where they no longer do."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.transforms import choose_input_transform
from lowbit.algorithms.transforms.input_transform import (
    candidate_transforms,
    dynamic_uint8,
    output_error,
)
from lowbit.errors import InvalidInputError, InvalidSpecError


def rtn_int8(w: torch.Tensor) -> torch.Tensor:
    scale = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
    return torch.round(w / scale).clamp(-127, 127) * scale


def spiky_input(rows: int = 512, k: int = 48) -> torch.Tensor:
    """Rows of small values, and two channels that reach 30x that on a few rows (as the
    [CLS] token's spikes at MiniLM's FFN down input)."""
    torch.manual_seed(0)
    x = torch.randn(rows, k)
    x[::50, 5] = 60.0
    x[::70, 11] = -45.0
    return x


def test_every_candidate_is_an_exact_rewrite_in_float() -> None:
    x = spiky_input()
    weights = [torch.randn(16, 48), torch.randn(24, 48)]
    for t in candidate_transforms(x.abs().amax(0), weights):
        assert bool((t.scale >= 1).all()), t.name  # shrinking: no channel amplified
        for w in weights:
            rewritten = (x * t.input_scale()) @ t.quantized_weight(w).T + (
                x[:, t.outliers] @ t.float_weight(w).T
            )
            torch.testing.assert_close(rewritten, x @ w.T, atol=1e-3, rtol=1e-4)


def test_the_choice_takes_the_spikes_out_of_the_range() -> None:
    x = spiky_input()
    weights = [torch.randn(16, 48) * 0.1]
    chosen, errors = choose_input_transform(weights, x, x.abs().amax(0), rtn_int8)
    assert chosen.name != "none" and errors[chosen.name] == min(errors.values())
    assert errors[chosen.name] < errors["none"] / 5, errors
    assert set(errors) == {"none", "shrink 0.6", "shrink 0.7", "shrink 0.8", "shrink 0.9",
                           "4 float channels"}  # fmt: skip
    if chosen.outliers.numel():
        assert {5, 11} <= set(chosen.outliers.tolist())
    # the measurement is the one the kernels make: per-batch uint8 activations
    again = output_error(chosen, weights, x, rtn_int8)
    assert again == errors[chosen.name]
    assert dynamic_uint8(x).unique().numel() <= 256


def test_well_behaved_inputs_get_no_float_channels_unless_asked() -> None:
    torch.manual_seed(1)
    x = torch.randn(256, 32)
    weights = [torch.randn(8, 32)]
    chosen, errors = choose_input_transform(
        weights, x, x.abs().amax(0), rtn_int8, alphas=(), outliers=0
    )
    assert chosen.is_identity and set(errors) == {"none"}


def test_bad_calibration_rows_and_options_are_clear_errors() -> None:
    w = [torch.randn(8, 32)]
    with pytest.raises(InvalidInputError, match="calibration rows"):
        choose_input_transform(w, torch.randn(10, 31), torch.ones(32), rtn_int8)
    with pytest.raises(InvalidSpecError, match="outliers must be in"):
        choose_input_transform(w, torch.randn(10, 32), torch.ones(32), rtn_int8, outliers=32)
