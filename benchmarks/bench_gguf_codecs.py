"""GGUF block codecs: lowbit's torch codecs vs ggml's C reference, quantize throughput per type.

Side by side in one run on SmolLM2-sized weights (its blk.0 FFN tensors, dequantized from the
bundled Q4_1 GGUF): lowbit `BLOCK_TYPES[t].quantize` (torch, --threads threads) and
`ggml_quantize_chunk` through ctypes (one thread, what llama-quantize runs per thread), as
Mparams/s and their ratio. The bytes are checked identical before timing. Needs
libggml-base.so (`make llama-tools` or LOWBIT_LLAMA_CPP_DIR, see tests/lowbit_testkit/ggml_ref.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _report import Report, markdown_table

from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.formats.blocks import BLOCK_TYPES
from lowbit_testkit import ggml_ref


def smollm2_ffn(rows_limit: int) -> np.ndarray:
    import gguf

    reader = gguf.GGUFReader(smollm2_gguf_path())
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")  # 576 x 1536
    x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    return np.ascontiguousarray(x[:rows_limit])


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="*", default=sorted(BLOCK_TYPES))
    parser.add_argument("--rows", type=int, default=576, help="rows of the 1536-wide tensor")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--imatrix", action="store_true", help="time with an importance vector")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = smollm2_ffn(args.rows)
    xt = torch.from_numpy(x)
    imp = np.random.default_rng(0).gamma(2.0, 1.0, x.shape[1]).astype(np.float32) + 1e-3
    impt = torch.from_numpy(imp) if args.imatrix else None
    impc = imp if args.imatrix else None
    report = Report()
    rows, json_rows = [], []
    for name in args.types:
        codec = BLOCK_TYPES[name]
        ours = codec.quantize(xt, impt).numpy()
        ref = ggml_ref.quantize_chunk(codec.ggml_type, x, impc)
        same = float(
            (ours.reshape(-1, codec.type_size) == ref.reshape(-1, codec.type_size)).all(-1).mean()
        )
        t_ours = best_time(lambda c=codec: c.quantize(xt, impt), args.repeats)
        t_ref = best_time(
            lambda c=codec: ggml_ref.quantize_chunk(c.ggml_type, x, impc), args.repeats
        )
        mp_ours, mp_ref = x.size / t_ours / 1e6, x.size / t_ref / 1e6
        rows.append(
            [name, f"{same:.4%}", f"{mp_ours:.1f}", f"{mp_ref:.1f}", f"{mp_ours / mp_ref:.3f}"]
        )
        json_rows.append(
            {
                "type": name,
                "identical_blocks": same,
                "lowbit_mparams_s": mp_ours,
                "ggml_mparams_s": mp_ref,
            }
        )
    title = (
        f"quantize {x.shape[0]}x{x.shape[1]} SmolLM2 blk.0.ffn_down"
        f"{' with imatrix' if args.imatrix else ''}:"
        f" lowbit torch ({args.threads} threads) vs ggml C (1 thread)"
    )
    header = ["type", "blocks identical", "lowbit Mparams/s", "ggml C Mparams/s", "lowbit / ggml"]
    report.add(
        title, markdown_table(header, rows, title=title, footer=[f"`{report.command}`"]), json_rows
    )
    report.notes = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "ggml": f"llama.cpp {ggml_ref.LLAMA_CPP_COMMIT}, {ggml_ref.find_library()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report.print(as_json=args.json)


if __name__ == "__main__":
    main()
