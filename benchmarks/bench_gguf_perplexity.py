"""GGUF files of SmolLM2 measured by llama.cpp itself: lowbit's methods vs llama-quantize.

Per type (default q4_0, q4_k_m, q3_k_m, q2_k), side by side in one run: llama-quantize
without an imatrix, llama-quantize with an imatrix that llama-imatrix made from the same
calibration text lowbit uses, and `lowbit export --method M` for every method lowbit has
(rtn, imatrix, gptq, awq). Every file is scored by llama-perplexity on the same evaluation
text (lowbit's evaluation split, never used for calibration), same ctx and chunks; file
sizes come from the files. Also: `lowbit eval --scoring llama.cpp` of the q4_0 rtn file
against llama-perplexity's figure (the issue asks within 2%).

Needs llama.cpp's tools (`make llama-tools`; LOWBIT_LLAMA_CPP_DIR to use another build).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _report import Report, markdown_table

from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.eval.text import calibration_text, evaluation_text
from lowbit.export import GGUF_METHODS
from lowbit_testkit.llama_cpp import llama_cpp_dir

PPL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")


def run(cmd: list[str], log: Path) -> str:
    """Run a tool, its output appended to ``log``; raise with the tail when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return done.stdout + done.stderr


def llama_perplexity(model: Path, text: Path, args, log: Path) -> tuple[float, float]:
    out = run(
        [str(tool("llama-perplexity")), "-m", str(model), "-f", str(text), "-c", str(args.ctx),
         "--chunks", str(args.chunks), "-t", str(args.threads)], log,
    )  # fmt: skip
    m = PPL.search(out)
    if m is None:
        raise SystemExit(f"no perplexity in llama-perplexity's output for {model}")
    return float(m.group(1)), float(m.group(2))


def tool(name: str) -> Path:
    path = llama_cpp_dir() / "bin" / name
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `make llama-tools` first")
    return path


def lowbit_eval_agreement(model: Path, text: Path, args, llama_ppl: float) -> dict:
    """`lowbit eval --scoring llama.cpp` of ``model`` on the same chunks as llama-perplexity."""
    cmd = [sys.executable, "-m", "lowbit.cli.main", "eval", str(model), "--task", "perplexity",
           "--text", str(text), "--scoring", "llama.cpp", "--ctx", str(args.ctx),
           "--max-tokens", str(args.chunks * args.ctx), "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    ours = json.loads(done.stdout)["perplexity"]
    return {"file": model.name, "lowbit_eval": ours, "llama_perplexity": llama_ppl,
            "difference": ours / llama_ppl - 1}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="*", default=["q4_0", "q4_k_m", "q3_k_m", "q2_k"])
    parser.add_argument("--methods", nargs="*", default=list(GGUF_METHODS))
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=20, help="llama-perplexity --chunks")
    parser.add_argument("--imatrix-chunks", type=int, default=64, help="llama-imatrix --chunks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("bench-gguf-ppl"))
    parser.add_argument("--no-eval-check", action="store_true", help="skip lowbit eval's check")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    log = work / "tools.log"
    src = smollm2_gguf_path()
    calib, text = work / "calib.txt", work / "eval.txt"
    calib.write_text(calibration_text())
    text.write_text(evaluation_text())
    imatrix = work / "imatrix.gguf"
    run([str(tool("llama-imatrix")), "-m", str(src), "-f", str(calib), "-o", str(imatrix),
         "-c", str(args.ctx), "--chunks", str(args.imatrix_chunks), "-t", str(args.threads)],
        log)  # fmt: skip
    source_ppl = llama_perplexity(src, text, args, log)
    report = Report()
    rows, json_rows = [], []
    agreement = None
    for file_type in args.types:
        files: list[tuple[str, Path, float]] = []
        for label, extra in (
            ("llama.cpp", []),
            ("llama.cpp + imatrix", ["--imatrix", str(imatrix)]),
        ):
            out = work / f"{file_type}-{label.replace(' + ', '-').replace('.', '')}.gguf"
            started = time.perf_counter()
            run([str(tool("llama-quantize")), "--allow-requantize", *extra, str(src), str(out),
                 file_type.upper(), str(args.threads)], log)  # fmt: skip
            files.append((label, out, time.perf_counter() - started))
        for method in args.methods:
            out = work / f"{file_type}-lowbit-{method}.gguf"
            cmd = [sys.executable, "-m", "lowbit.cli.main", "export", str(src), "--format",
                   "gguf", "--type", file_type, "--method", method, "--out", str(out)]  # fmt: skip
            if method != "rtn":
                cmd += ["--calib", str(calib)]
            started = time.perf_counter()
            run(cmd, log)
            files.append((f"lowbit {method}", out, time.perf_counter() - started))
        scored = []
        for label, path, seconds in files:
            ppl, err = llama_perplexity(path, text, args, log)
            scored.append((label, path, seconds, ppl, err))
        if file_type == "q4_0" and not args.no_eval_check and "rtn" in args.methods:
            rtn = next(s for s in scored if s[0] == "lowbit rtn")
            agreement = lowbit_eval_agreement(rtn[1], text, args, rtn[3])
        best_llama = min(s[3] for s in scored if s[0].startswith("llama.cpp"))
        for label, path, seconds, ppl, err in scored:
            size = path.stat().st_size
            rows.append([file_type, label, f"{size / 1e6:.2f}", f"{ppl:.4f} ± {err:.4f}",
                         f"{100 * (ppl / best_llama - 1):+.2f}%", f"{seconds:.0f}"])  # fmt: skip
            json_rows.append({"type": file_type, "file": label, "bytes": size, "ppl": ppl,
                              "ppl_err": err, "seconds": seconds})  # fmt: skip
    title = (
        f"SmolLM2-135M GGUF perplexity (llama-perplexity, c={args.ctx}, {args.chunks} chunks "
        "of the evaluation split)"
    )
    header = ["type", "file", "MB", "perplexity", "vs best llama.cpp file", "make s"]
    report.add(title, markdown_table(header, rows, title=title, footer=[f"`{report.command}`"]),
               json_rows)  # fmt: skip
    if agreement is not None:
        title2 = "lowbit eval --scoring llama.cpp vs llama-perplexity (same file, same chunks)"
        a = agreement
        report.add(title2, markdown_table(
            ["file", "lowbit eval", "llama-perplexity", "difference"],
            [[a["file"], f"{a['lowbit_eval']:.4f}", f"{a['llama_perplexity']:.4f}",
              f"{100 * a['difference']:+.2f}%"]], title=title2), [a])  # fmt: skip
    report.notes = {
        "source": f"{src.name} (Q4_1): llama-perplexity {source_ppl[0]:.4f} ± {source_ppl[1]:.4f}",
        "calibration": f"lowbit's calibration split; llama-imatrix -c {args.ctx} --chunks "
        f"{args.imatrix_chunks}; lowbit's calibrated methods at their defaults",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
        "llama.cpp": str(llama_cpp_dir()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report.print(as_json=args.json)


if __name__ == "__main__":
    main()
