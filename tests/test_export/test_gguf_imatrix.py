"""lowbit.export.gguf_imatrix: --method imatrix (importance from llama.cpp's file or computed
from calibration text as llama-imatrix computes it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lowbit.errors import InvalidInputError
from lowbit.export.gguf import GGUF_METHODS, GGUFExportJob
from lowbit.export.gguf_imatrix import check_importance, imatrix_method, llama_imatrix_windows


class _Tokenizer:
    """Whitespace words -> their lengths, as token ids (what the windows need of a tokenizer)."""

    def __call__(self, text, add_special_tokens=True, verbose=True):
        assert add_special_tokens is False  # llama-imatrix adds BOS itself (add_bos)
        return {"input_ids": [len(w) for w in text.split()]}


def _job(**kwargs) -> GGUFExportJob:
    shapes = {"token_embd.weight": (8, 100), "blk.0.attn_q.weight": (8, 8),
              "blk.0.ffn_down.weight": (16, 8)}  # fmt: skip
    return GGUFExportJob(source=Path("m.gguf"), file_type="q4_0", shapes=shapes, **kwargs)


def test_imatrix_is_a_registered_method():
    assert GGUF_METHODS["imatrix"] is imatrix_method


def test_windows_are_consecutive_whole_chunks_with_bos_first():
    text = " ".join("x" * n for n in range(1, 12))  # token ids 1..11
    without = llama_imatrix_windows(_Tokenizer(), text, 4, None)
    assert [w.tolist() for w in without] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # 9..11 dropped
    # add_bos: BOS before the text, then the first token of every window replaced by BOS
    with_bos = llama_imatrix_windows(_Tokenizer(), text, 4, 0)
    assert [w.tolist() for w in with_bos] == [[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]]
    with pytest.raises(InvalidInputError, match="fewer than one window"):
        llama_imatrix_windows(_Tokenizer(), "a b", 4, None)


def test_importance_must_fit_the_model():
    job = _job()
    ok = {"blk.0.attn_q.weight": torch.ones(8), "token_embd.weight": torch.ones(5)}
    assert list(check_importance(ok, job)) == ["blk.0.attn_q.weight"]  # token_embd skipped
    with pytest.raises(InvalidInputError, match="does not have"):
        check_importance({"blk.7.attn_q.weight": torch.ones(8)}, job)
    with pytest.raises(InvalidInputError, match="has 9 values"):
        check_importance({"blk.0.ffn_down.weight": torch.ones(9)}, job)


def test_imatrix_and_calib_together_are_refused(tmp_path):
    job = _job(calib=tmp_path / "c.txt", imatrix=tmp_path / "i.gguf")
    with pytest.raises(InvalidInputError, match="not both"):
        imatrix_method(job)
