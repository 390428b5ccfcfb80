"""Calibration batches from plain text: random fixed-length windows of its tokens."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.errors import InvalidInputError


def token_windows(
    tokenizer: Any, text: str, *, samples: int = 128, seq_len: int = 512, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """``samples`` windows of ``seq_len`` tokens drawn (seeded) from ``text``, one batch each
    (``{"input_ids": (1, seq_len)}``), as GPTQ/AWQ tools calibrate."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() <= seq_len:
        raise InvalidInputError(
            f"the calibration text has {ids.numel()} tokens, fewer than one window of "
            f"{seq_len}: give more text or a smaller --seq-len"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (samples,), generator=gen)
    return [{"input_ids": ids[s : s + seq_len].unsqueeze(0)} for s in starts.tolist()]
