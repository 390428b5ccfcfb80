"""Mixed-precision GGUF files of SmolLM2 against uniform ones, measured by llama.cpp itself.

For each llama.cpp type (default q2_k, q4_0, q3_k_m, q4_k_m): llama-quantize's file without
and with an imatrix (llama-imatrix on lowbit's calibration split), lowbit's uniform file of
that type (--method M), and lowbit's mixed-precision file (`lowbit export --target-size` =
the size of llama.cpp's imatrix file, --method M); plus mixed files at the bits-per-weight
targets where llama.cpp has no file (default 4.5). Every file is scored by llama-perplexity
on the evaluation split (never used for calibration). Prints the table, the frontier (bits
per weight of the whole file -> perplexity, relative to the source) and writes the plot.

Files already in --workdir (e.g. from bench_gguf_perplexity.py with the same settings) are
reused, never re-made: point --workdir at that run's folder to add the mixed rows to it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _report import Report, markdown_table
from bench_gguf_perplexity import llama_perplexity, run, tool

from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.eval.text import calibration_text, evaluation_text
from lowbit.io.gguf.reader import read_gguf
from lowbit_testkit.llama_cpp import llama_cpp_dir


def _make(path: Path, cmd: list[str], log: Path) -> float:
    """Run ``cmd`` unless ``path`` exists; the seconds it took (0 when reused)."""
    if path.exists():
        return 0.0
    started = time.perf_counter()
    run(cmd, log)
    return time.perf_counter() - started


def _lowbit(src: Path, out: Path, calib: Path, method: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "lowbit.cli.main", "export", str(src), "--format", "gguf",
            "--method", method, "--calib", str(calib), "--out", str(out), *extra]  # fmt: skip


def _plot(points: dict[str, list[tuple[float, float]]], source_ppl: float, out: Path) -> None:
    from lowbit.reports.html import figure_png, pyplot

    fig, ax = pyplot().subplots(figsize=(8, 5), dpi=110)
    for label, xy in points.items():
        xy = sorted(xy)
        ax.plot([x for x, _ in xy], [100 * (y / source_ppl - 1) for _, y in xy], "o-", label=label)
    ax.set_xlabel("bits per weight of the whole file (embeddings, norms, metadata counted)")
    ax.set_ylabel("perplexity vs the source file (%)")
    ax.set_title("SmolLM2-135M GGUF in llama-perplexity: size vs quality")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    out.write_bytes(figure_png(fig))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="*", default=["q2_k", "q4_0", "q3_k_m", "q4_k_m"])
    parser.add_argument("--bpw", nargs="*", type=float, default=[4.5])
    parser.add_argument("--method", default="gptq")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--imatrix-chunks", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("bench-gguf-ppl"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the frontier")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    log = work / "tools.log"
    src = smollm2_gguf_path()
    calib, text = work / "calib.txt", work / "eval.txt"
    for path, content in ((calib, calibration_text()), (text, evaluation_text())):
        if not path.exists():
            path.write_text(content)
    imatrix = work / "imatrix.gguf"
    _make(imatrix, [str(tool("llama-imatrix")), "-m", str(src), "-f", str(calib), "-o",
                    str(imatrix), "-c", str(args.ctx), "--chunks", str(args.imatrix_chunks),
                    "-t", str(args.threads)], log)  # fmt: skip
    files: list[tuple[str, str, Path, float]] = []  # (row, kind, path, seconds)

    def add(row: str, kind: str, out: Path, cmd: list[str]) -> None:
        files.append((row, kind, out, _make(out, cmd, log)))

    quantize = [str(tool("llama-quantize")), "--allow-requantize"]
    mixed_kind = f"lowbit mixed {args.method}"
    for t in args.types:
        plain, with_imatrix = work / f"{t}-llamacpp.gguf", work / f"{t}-llamacpp-imatrix.gguf"
        add(t, "llama.cpp", plain, [*quantize, str(src), str(plain), t.upper(), str(args.threads)])
        add(t, "llama.cpp + imatrix", with_imatrix,
            [*quantize, "--imatrix", str(imatrix), str(src), str(with_imatrix), t.upper(),
             str(args.threads)])  # fmt: skip
        uniform = work / f"{t}-lowbit-{args.method}.gguf"
        add(t, f"lowbit {args.method}", uniform,
            _lowbit(src, uniform, calib, args.method, ["--type", t]))  # fmt: skip
        mixed = work / f"{t}-size-lowbit-mixed-{args.method}.gguf"
        target = ["--target-size", str(with_imatrix.stat().st_size)]
        add(t, mixed_kind, mixed, _lowbit(src, mixed, calib, args.method, target))
    for bpw in args.bpw:
        mixed = work / f"bpw{bpw}-lowbit-mixed-{args.method}.gguf"
        target = ["--target-bpw", str(bpw)]
        add(f"{bpw} bpw", mixed_kind, mixed, _lowbit(src, mixed, calib, args.method, target))
    source_ppl, source_err = llama_perplexity(src, text, args, log)
    # every tensor of the source file (the tied output counted once), read from its header
    n_params = sum(math.prod(t.shape) for t in read_gguf(src).tensors)
    rows, json_rows = [], []
    points: dict[str, list[tuple[float, float]]] = {}
    for row, kind, path, seconds in files:
        ppl, err = llama_perplexity(path, text, args, log)
        size = path.stat().st_size
        bpw = 8 * size / n_params
        made = f"{seconds:.0f}" if seconds else "reused"
        rows.append([row, kind, f"{size:,}", f"{bpw:.2f}", f"{ppl:.4f} ± {err:.4f}",
                     f"{100 * (ppl / source_ppl - 1):+.1f}%", made])  # fmt: skip
        json_rows.append({"row": row, "file": kind, "bytes": size, "bpw": bpw, "ppl": ppl,
                          "ppl_err": err, "seconds": seconds})  # fmt: skip
        points.setdefault(kind, []).append((bpw, ppl))
    report = Report()
    title = (f"SmolLM2-135M GGUF, mixed vs uniform (llama-perplexity, c={args.ctx}, "
             f"{args.chunks} chunks of the evaluation split)")  # fmt: skip
    header = ["size of", "file", "bytes", "bpw", "perplexity", "vs source", "make s"]
    report.add(title, markdown_table(header, rows, title=title, footer=[f"`{report.command}`"]),
               json_rows)  # fmt: skip
    if args.plot is not None:
        _plot(points, source_ppl, args.plot)
    report.notes = {
        "source": f"{src.name} (Q4_1): llama-perplexity {source_ppl:.4f} ± {source_err:.4f}",
        "mixed": "lowbit export --target-size (the llama.cpp imatrix file's bytes) or "
        "--target-bpw; default candidates; sensitivities on 8 calibration windows",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
        "llama.cpp": str(llama_cpp_dir()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report.print(as_json=args.json)


if __name__ == "__main__":
    main()
