"""lowbit.io.gguf.writer: tensor encoding, llama-perplexity loads the file, atomic writes.
(Whole files byte-identical to llama-quantize's, every TYPE: test_gguf_types.py.)"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.io.gguf.writer import encode_tensor, write_gguf
from lowbit_testkit.llama_cpp import tool


def test_encode_tensor_q8_0_layout():
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    encoded = encode_tensor("Q8_0", x)
    assert encoded.dtype == np.uint8 and encoded.shape == (2, 34)  # f16 scale + 32 int8


def test_encode_tensor_k_quants_and_iq4_nl_use_lowbits_codecs():
    x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
    for name, row_bytes in (("Q4_K", 144), ("Q6_K", 210), ("IQ4_NL", 8 * 18)):
        assert encode_tensor(name, x).shape == (2, row_bytes), name


@pytest.mark.slow
def test_llama_perplexity_loads_lowbits_file(tmp_path):
    from lowbit.eval.text import evaluation_text

    mine = tmp_path / "q8_0.gguf"
    write_gguf(smollm2_gguf_path(), mine, "q8_0")
    text = tmp_path / "eval.txt"
    text.write_text(evaluation_text()[:20000])
    run = subprocess.run([str(tool("llama-perplexity")), "-m", str(mine), "-f", str(text),
                          "-c", "128", "--chunks", "4", "-t", "2"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    estimate = re.search(r"Final estimate: PPL = ([0-9.]+)", run.stdout + run.stderr)
    assert estimate is not None, (run.stdout + run.stderr)[-2000:]
    assert 1.0 < float(estimate.group(1)) < 1000.0


def test_atomic_file_path_replaces_on_success_and_leaves_nothing_on_error(tmp_path):
    from lowbit.atomic import atomic_file_path

    dest = tmp_path / "m.gguf"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert dest.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [dest]
    with atomic_file_path(dest) as tmp:
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [dest]
