"""Whole-model GGUF quantization throughput: lowbit's RTN codecs vs llama-quantize, per type.

Issue #13's measure: params/s of lowbit's RTN over all of SmolLM2's tensors for a file type
(each tensor in llama-quantize's type for it, the k-quant fallbacks included), against
llama-quantize's own reported "quantize time" for the same type and thread count, on the
same f32 GGUF source (SmolLM2-135M written as F32 by lowbit from the bundled Q4_1 GGUF).

Per type and repeat, interleaved (the machine may be shared, so every pair runs back to
back and the table gives medians): llama-quantize SRC OUT TYPE THREADS, its printed
"quantize time" (which includes reading the source and writing the file); then a fresh
Python process that times lowbit's codecs on every tensor (`encode_tensor`, torch threads =
THREADS; the source read through a memory map before the clock starts), and with --export
also the whole `write_gguf` of the same file. --rss: the peak RSS of `lowbit export MODEL
--format gguf --type q4_k_m` in a fresh process, against the source file size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _report import Report, markdown_table

from lowbit.eval.bundled import smollm2_gguf_path

LLAMA_DIR = Path(
    os.environ.get("LOWBIT_LLAMA_CPP_DIR", Path.home() / ".cache" / "lowbit" / "llama.cpp-0c1e570")
)
TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k"]
TYPES += ["iq4_nl"]


def f32_source(work: Path) -> Path:
    """SmolLM2-135M as an F32 GGUF (lowbit's f32 export of the bundled Q4_1 file), made once."""
    path = work / "smollm2-f32.gguf"
    if not path.is_file():
        from lowbit.io.gguf.writer import write_gguf

        work.mkdir(parents=True, exist_ok=True)
        write_gguf(smollm2_gguf_path(), path, "f32")
    return path


def llama_quantize(src: Path, out: Path, file_type: str, threads: int) -> float:
    """Seconds of llama-quantize's own "quantize time" line."""
    exe = LLAMA_DIR / "bin" / "llama-quantize"
    run = subprocess.run(
        [str(exe), str(src), str(out), file_type.upper(), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"quantize time =\s*([0-9.]+) ms", run.stdout + run.stderr)
    if m is None:
        raise RuntimeError(f"no 'quantize time' in llama-quantize's output:\n{run.stderr[-2000:]}")
    return float(m.group(1)) / 1000


def lowbit_worker(src: Path, file_type: str, threads: int, export: bool) -> dict:
    """In this (fresh) process: seconds of lowbit's codecs on every tensor of the model, and
    with ``export`` of the whole write_gguf of the same file."""
    import gguf
    import numpy as np
    import torch

    from lowbit.io.gguf.writer import encode_tensor, plan_types, write_gguf

    torch.set_num_threads(threads)
    reader = gguf.GGUFReader(src)
    infos, types = plan_types(reader, file_type)
    by_name = {t.name: t for t in reader.tensors}
    work = [
        (np.asarray(by_name[i.name].data).reshape(-1, i.shape[0]), t)
        for i, t in zip(infos, types, strict=True)
        if t != i.type  # llama-quantize copies the tensors it keeps (the F32 norms)
    ]
    for w, _ in work:  # page the memory map in before the clock starts
        float(w.sum())
    t0 = time.perf_counter()
    for w, t in work:
        encode_tensor(t, w)
    codec_s = time.perf_counter() - t0
    result = {"codec_s": codec_s, "n_params": sum(int(np.prod(i.shape)) for i in infos)}
    if export:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_gguf(src, Path(tmp) / "out.gguf", file_type)
            result["export_s"] = time.perf_counter() - t0
    return result


def run_worker(src: Path, file_type: str, threads: int, export: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", file_type, "--source", str(src)]
    cmd += ["--threads", str(threads)] + (["--export"] if export else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def export_peak_rss(model: Path, file_type: str, threads: int) -> int:
    """Peak RSS in bytes of `lowbit export MODEL --format gguf --type T` in a fresh process."""
    code = (
        "import resource, sys, torch; torch.set_num_threads(int(sys.argv[1]));"
        "from lowbit.cli.main import main; rc = main(sys.argv[2:]);"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); sys.exit(rc)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        args = [str(model), "--format", "gguf", "--type", file_type, "--out", f"{tmp}/o.gguf"]
        run = subprocess.run(
            [sys.executable, "-c", code, str(threads), "export", *args],
            capture_output=True,
            text=True,
            check=True,
        )
    return int(re.search(r"PEAK (\d+)", run.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="*", default=TYPES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--export", action="store_true", help="also time lowbit's write_gguf")
    parser.add_argument("--rss", action="store_true", help="peak RSS of lowbit export q4_k_m")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "lowbit" / "bench")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(lowbit_worker(args.source, args.worker, args.threads, args.export)))
        return
    src = f32_source(args.work)
    report = Report()
    rows, json_rows = [], []
    for file_type in args.types:
        ours, theirs, exports = [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                theirs.append(llama_quantize(src, Path(tmp) / "o.gguf", file_type, args.threads))
            r = run_worker(src, file_type, args.threads, args.export)
            ours.append(r["codec_s"])
            exports.append(r.get("export_s"))
        n = r["n_params"]
        ratio = statistics.median(t / o for o, t in zip(ours, theirs, strict=True))
        row = {
            "type": file_type,
            "lowbit_mparams_s": n / statistics.median(ours) / 1e6,
            "llama_quantize_mparams_s": n / statistics.median(theirs) / 1e6,
            "ratio": ratio,
            "lowbit_codec_s": ours,
            "llama_quantize_s": theirs,
        }
        cells = [file_type, f"{row['lowbit_mparams_s']:.1f}"]
        if args.export:
            row["lowbit_export_s"] = exports
            row["lowbit_export_mparams_s"] = n / statistics.median(exports) / 1e6
            cells.append(f"{row['lowbit_export_mparams_s']:.1f}")
        cells += [f"{row['llama_quantize_mparams_s']:.1f}", f"{ratio:.2f}"]
        rows.append(cells)
        json_rows.append(row)
        print(" ".join(cells), file=sys.stderr, flush=True)
    title = (
        f"SmolLM2-135M ({n / 1e6:.1f}M params) from F32, {args.threads} threads each,"
        f" median of {args.repeats} interleaved runs"
    )
    header = ["type", "lowbit codecs Mparams/s"]
    header += ["lowbit write_gguf Mparams/s"] if args.export else []
    header += ["llama-quantize Mparams/s", "lowbit / llama-quantize (median of pairs)"]
    report.add(
        title, markdown_table(header, rows, title=title, footer=[f"`{report.command}`"]), json_rows
    )
    if args.rss:
        rss_rows, rss_json = [], []
        for model in (smollm2_gguf_path(), src):
            peak = export_peak_rss(Path(model), "q4_k_m", args.threads)
            size = Path(model).stat().st_size
            limit = 2 * size + 2**30
            rss_rows.append(
                [Path(model).name, f"{size / 1e6:.1f}", f"{peak / 1e6:.0f}", f"{limit / 1e6:.0f}"]
            )
            rss_json.append({"source": str(model), "bytes": size, "peak_rss": peak})
        rss_title = "Peak RSS of `lowbit export SOURCE --format gguf --type q4_k_m`"
        rss_head = ["source", "source MB", "peak RSS MB", "limit 2 x source + 1 GiB, MB"]
        report.add(rss_title, markdown_table(rss_head, rss_rows, title=rss_title), rss_json)
    report.notes = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
        f" load average at the end {os.getloadavg()[0]:.1f}",
        "llama-quantize": str(LLAMA_DIR / "bin" / "llama-quantize"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rusage": f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime:.0f} s user in children",
    }
    report.print(as_json=args.json)


if __name__ == "__main__":
    main()
