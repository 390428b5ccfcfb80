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


# --- against llama.cpp, on SmolLM2 cut to its first 2 blocks (same tensors, 1/15 the work) ---

N_BLOCKS = 2
SEQ, CHUNKS = 128, 4


def _cut_model(src: Path, out: Path, n_blocks: int) -> Path:
    """``src`` with only its first ``n_blocks`` blocks (block_count rewritten), via gguf-py."""
    import re

    import numpy as np

    gguf = pytest.importorskip("gguf")
    from lowbit.io.gguf.writer import _field_value

    reader = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(out, "llama")
    w.kv_data[0].clear()
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value, vtype, sub = _field_value(gguf, f)
        w.add_key_value(key, n_blocks if key == "llama.block_count" else value, vtype, sub_type=sub)
    for t in reader.tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m and int(m.group(1)) >= n_blocks:
            continue
        data = np.asarray(t.data)
        w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def llama_imatrix(tmp_path_factory):
    """(cut model, calibration text, llama-imatrix's file on CHUNKS chunks of SEQ tokens)."""
    import subprocess

    from lowbit.eval.bundled import smollm2_gguf_path
    from lowbit.eval.text import calibration_text
    from lowbit_testkit.llama_cpp import tool

    folder = tmp_path_factory.mktemp("imatrix")
    model = _cut_model(smollm2_gguf_path(), folder / "cut.gguf", N_BLOCKS)
    calib = folder / "calib.txt"
    calib.write_text(calibration_text()[:4000])
    imatrix = folder / "imatrix.gguf"
    subprocess.run([str(tool("llama-imatrix")), "-m", str(model), "-f", str(calib), "-c", str(SEQ),
                    "--chunks", str(CHUNKS), "-t", "2", "-o", str(imatrix)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    return model, calib, imatrix


@pytest.mark.slow
@pytest.mark.parametrize("file_type", ["q4_k_m", "q4_0"])
def test_export_with_llamas_imatrix_is_byte_identical_to_llama_quantize(
    llama_imatrix, file_type, tmp_path
):
    import subprocess

    from lowbit.export import export_gguf
    from lowbit_testkit.llama_cpp import tool

    model, _, imatrix = llama_imatrix
    ref, mine = tmp_path / "ref.gguf", tmp_path / "mine.gguf"
    subprocess.run([str(tool("llama-quantize")), "--allow-requantize", "--imatrix", str(imatrix),
                    str(model), str(ref), file_type.upper(), "2"],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    export_gguf(model, mine, file_type, method="imatrix", imatrix=imatrix)
    assert mine.read_bytes() == ref.read_bytes()  # header (quantize.imatrix.*), types, blocks


@pytest.mark.slow
def test_lowbit_importance_matches_llama_imatrix(llama_imatrix):
    import subprocess

    from lowbit.export.gguf_imatrix import compute_importance, imatrix_layers
    from lowbit.io.gguf.imatrix import read_imatrix
    from lowbit.io.gguf.reader import read_gguf
    from lowbit_testkit.llama_cpp import tool

    model, calib, imatrix = llama_imatrix
    meta = read_gguf(model)
    job = GGUFExportJob(source=model, file_type="q4_k_m", seq_len=SEQ, metadata=dict(meta.metadata),
                        shapes={t.name: t.ne for t in meta.tensors})  # fmt: skip
    assert meta.metadata["tokenizer.ggml.add_bos_token"] is False  # SmolLM2: no BOS
    windows = llama_imatrix_windows(job.float_model.tokenizer, calib.read_text(), SEQ, None)
    mine = compute_importance(job.float_model.model, windows[:CHUNKS],
                              imatrix_layers(job.float_model.model, job))  # fmt: skip
    ref = read_imatrix(imatrix).importance
    assert set(mine) == set(ref) and len(ref) == 7 * N_BLOCKS
    cosine = [float(torch.cosine_similarity(mine[k], ref[k], dim=0)) for k in ref]
    assert min(cosine) >= 0.99, cosine
    # llama-imatrix's legacy .dat of the same statistics reads to the same importance
    dat = imatrix.with_suffix(".dat")
    subprocess.run([str(tool("llama-imatrix")), "-m", str(model), "--in-file", str(imatrix),
                    "--output-format", "dat", "-o", str(dat)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    legacy = read_imatrix(dat).importance
    assert all(torch.allclose(legacy[k], ref[k], rtol=1e-6, atol=0) for k in ref)
