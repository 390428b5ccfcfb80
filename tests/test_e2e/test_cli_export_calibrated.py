"""``lowbit export --method gptq|awq``: values chosen on calibration text, stored in exactly
llama-quantize's per-tensor types, in a file llama.cpp runs."""

from __future__ import annotations

import json
import math
import re
import subprocess

import numpy as np
import pytest

from lowbit.cli.main import main
from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.eval.text import calibration_text
from lowbit_testkit.llama_cpp import tool


@pytest.fixture(scope="module")
def llama_quantize_q4_k_m(tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref") / "ref.gguf"
    subprocess.run([str(tool("llama-quantize")), "--allow-requantize", str(smollm2_gguf_path()),
                    str(ref), "Q4_K_M", "2"], check=True, capture_output=True)  # fmt: skip
    return ref


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_q4_k_m_has_llama_quantizes_types_and_runs(
    method, capsys, tmp_path, llama_quantize_q4_k_m
):
    gguf = pytest.importorskip("gguf")
    calib, out = tmp_path / "calib.txt", tmp_path / f"{method}.gguf"
    calib.write_text(calibration_text()[:20000])
    main(["export", str(smollm2_gguf_path()), "--type", "q4_k_m", "--out", str(out),
          "--method", method, "--calib", str(calib), "--calib-windows", "2",
          "--seq-len", "64", "--json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["output_bytes"] == out.stat().st_size == llama_quantize_q4_k_m.stat().st_size
    mine = {t.name: t for t in gguf.GGUFReader(out).tensors}
    ref = {t.name: t for t in gguf.GGUFReader(llama_quantize_q4_k_m).tensors}
    assert {n: t.tensor_type for n, t in mine.items()} == {n: t.tensor_type for n, t in ref.items()}

    def same(name: str) -> bool:
        return np.asarray(mine[name].data).tobytes() == np.asarray(ref[name].data).tobytes()

    assert same("token_embd.weight")  # the tied output embedding is untouched
    changed = [n for n in mine if not same(n)]
    if method == "gptq":  # every Linear got its own values; norms and embeddings did not
        assert all(n.startswith("blk.") and not n.endswith("norm.weight") for n in changed)
        assert len(changed) == 30 * 7
    else:  # scales folded into the norms, the norms written as F32
        assert any(n.endswith("attn_norm.weight") for n in changed)
        assert any(n.endswith("ffn_norm.weight") for n in changed)

    text = tmp_path / "eval.txt"
    text.write_text(calibration_text()[-4000:])
    run = subprocess.run([str(tool("llama-perplexity")), "-m", str(out), "-f", str(text),
                          "-c", "128", "--chunks", "1", "-t", "2"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", run.stdout + run.stderr)
    assert found is not None and math.isfinite(float(found.group(1)))
    assert float(found.group(1)) < 1000
