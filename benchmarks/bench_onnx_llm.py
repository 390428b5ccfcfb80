"""SmolLM2-135M int4 as ONNX decoders in ONNX Runtime, side by side in one run: lowbit's
export (RTN and GPTQ; symmetric and with zero points; group 32 and 128) vs ORT's own
MatMulNBitsQuantizer applied to the same fp32 decoder graph (so the graph structure is
identical), and the fp32 graph itself.
Perplexity on the evaluation split (every file scored by the same lowbit protocol, ctx 512
stride 512, on the same tokens) and batch-1 greedy decode tokens/s (2 threads, interleaved).

One more row: llama.cpp Q4_0, the file llama-quantize makes from the bundled SmolLM2 GGUF.
Its perplexity is lowbit's protocol on the same tokens (the file loaded by load_gguf, Q4_0
codes bit for bit); its decode tokens/s is llama-completion's own timing (2 threads, median
of --repeats runs), a different harness from the ORT rows, so that ratio is indicative.
Skipped with a note when llama.cpp's tools are not built (`make llama-tools`).

    python benchmarks/bench_onnx_llm.py [--blocks 32 128] [--max-tokens 4096]
        [--zero-points sym asym] [--calib-samples 32] [--decode-tokens 32] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _report import Report, markdown_table

import lowbit
from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.eval.calibration import token_windows
from lowbit.eval.latency import median_ratio, time_interleaved
from lowbit.eval.perplexity import perplexity
from lowbit.eval.text import calibration_text, evaluation_text
from lowbit.export.onnx.decoder import export_decoder
from lowbit.export.onnx.decoder_session import DecoderSession, generate_greedy, ort_perplexity
from lowbit.io.gguf import load_gguf, read_gguf
from lowbit.io.hf import load_model
from lowbit.kernels import REFERENCE_NAME
from lowbit_testkit.llama_cpp import llama_cpp_dir

LLAMA_CPP = llama_cpp_dir() / "bin"  # `make llama-tools`, or $LOWBIT_LLAMA_CPP_DIR
LLAMA_TOOLS = ("llama-quantize", "llama-completion")
LLAMA_ROW = "llama.cpp Q4_0 (llama-completion timing)"
PROMPT = "The quick brown fox"
# llama_perf_context_print: "eval time = X ms / N runs (Y ms per token, Z tokens per second)";
# the prompt's line counts "tokens", not "runs".
EVAL_TIME = re.compile(r"eval time =\s*[0-9.]+ ms /\s*(\d+) runs.*?([0-9.]+) tokens per second")


def ort_int4(fp32_path: Path, out: Path, block: int) -> None:
    """ORT's own int4 model: MatMulNBitsQuantizer (defaults: asymmetric, RTN, accuracy_level
    unset) on every MatMul of the fp32 decoder graph, lm_head included."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(fp32_path), bits=4, block_size=block)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)


def untied(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose lm_head has its own copy of the embedding table, so lowbit quantizes it
    as a Linear (int4, like ORT's quantizer does) while the embedding stays int8 per row."""
    model = copy.deepcopy(model)
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return model


def run_llama(tool: str, *args: str) -> str:
    """Run a llama.cpp tool (its shared libraries beside it), stdout and stderr together;
    raises with the output's tail when it fails."""
    libs = os.pathsep.join(filter(None, [str(LLAMA_CPP), os.environ.get("LD_LIBRARY_PATH")]))
    done = subprocess.run(
        [str(LLAMA_CPP / tool), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "LD_LIBRARY_PATH": libs},
    )
    if done.returncode:
        raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout + done.stderr


def llama_q4_0(out: Path) -> None:
    """llama.cpp's own Q4_0 file: llama-quantize requantizes the bundled Q4_1 GGUF, i.e. the
    weights the fp32 rows are (that file dequantized)."""
    run_llama("llama-quantize", "--allow-requantize", str(smollm2_gguf_path()), str(out), "q4_0")


def gguf_types(path: Path) -> str:
    """The file's tensor types with counts, naming the tensors of the rarer quantized types
    (llama-quantize keeps token_embd at another type), e.g. "Q4_0 x210, F32 x61, Q8_0 x1
    (token_embd.weight)"."""
    by_type: dict[str, list[str]] = {}
    for t in read_gguf(path).tensors:
        by_type.setdefault(t.type.name, []).append(t.name)
    return ", ".join(
        f"{kind} x{len(names)}" + (f" ({', '.join(names)})" if len(names) < 4 else "")
        for kind, names in sorted(by_type.items(), key=lambda item: -len(item[1]))
    )


def llama_decode_tps(path: Path, tokens: int) -> float:
    """llama.cpp's decode speed as it measures it: tokens/s of llama-completion's eval-time
    line (batch 1, 2 threads, greedy, EOS ignored; the tokens after the first, one per call,
    prompt excluded)."""
    out = run_llama(
        "llama-completion", "-m", str(path), "-t", "2", "-n", str(tokens), "--temp", "0",
        "-p", PROMPT, "-no-cnv", "--ignore-eos",
    )  # fmt: skip
    match = EVAL_TIME.search(out)
    if match is None:
        raise RuntimeError(f"no eval-time line in llama-completion's output: {out[-2000:]}")
    return float(match[2])


def llama_row(path: Path, eval_ids: torch.Tensor, tokens: int, repeats: int) -> dict:
    """The llama.cpp Q4_0 row: perplexity of the file by lowbit's protocol on the ORT rows'
    tokens (load_gguf keeps Q4_0 codes and scales bit for bit; the reference kernel computes
    in fp32, as ORT's MatMulNBits does with accuracy_level unset), and the median of
    ``repeats`` llama-completion decode speeds."""
    result = perplexity(load_gguf(path, kernel=REFERENCE_NAME), eval_ids)
    print(f"{LLAMA_ROW}: ppl {result.ppl:.3f}", file=sys.stderr, flush=True)
    runs = [llama_decode_tps(path, tokens) for _ in range(repeats)]
    return {
        "model": LLAMA_ROW,
        "block": 32,
        "ppl": result.ppl,
        "ppl_tokens": result.n_tokens,
        "file_mb": path.stat().st_size / 1e6,
        "decode_tps": statistics.median(runs),
        "decode_tps_runs": runs,
        "tensor_types": gguf_types(path),
    }


def vs_llama(rows: list[dict], llama: dict) -> str:
    """Decode speed of the fastest lowbit row (among the GPTQ rows when there are any) over
    llama.cpp Q4_0's."""
    lowbit_rows = [r for r in rows if "algo" in r]
    if not lowbit_rows:
        return "no lowbit row measured"
    best = max(
        [r for r in lowbit_rows if r["algo"] == "gptq"] or lowbit_rows,
        key=lambda r: r["decode_tps"],
    )
    return (
        f"{best['model']} {best['decode_tps']:.1f} tok/s = "
        f"{best['decode_tps'] / llama['decode_tps']:.2f}x llama.cpp Q4_0's "
        f"{llama['decode_tps']:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="*", default=[32, 128])
    parser.add_argument("--algos", nargs="*", default=["rtn", "gptq"], choices=["rtn", "gptq"])
    parser.add_argument(
        "--zero-points",
        nargs="*",
        default=["sym", "asym"],
        choices=["sym", "asym"],
        help="lowbit's int4 codes symmetric (w4a16-gN) and/or with zero points (-asym, as ORT's)",
    )
    parser.add_argument(
        "--heads",
        nargs="*",
        default=["int8", "int4"],
        choices=["int8", "int4"],
        help="lm_head as lowbit's preset leaves it (tied: int8 per row) and/or untied int4",
    )
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    loaded = load_model(smollm2_gguf_path())
    model, tok = loaded.model, loaded.tokenizer
    eval_ids = tok(evaluation_text(), return_tensors="pt").input_ids[0][: args.max_tokens]
    prompt = tok(PROMPT, return_tensors="pt").input_ids
    calib = None
    if "gptq" in args.algos:
        calib = token_windows(
            tok, calibration_text(), samples=args.calib_samples, seq_len=args.seq_len
        )
    rows: list[dict] = []
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        export_decoder(model, None, tmp / "fp32.onnx", verify=False)
        files["fp32"] = tmp / "fp32.onnx"
        rows.append({"model": "fp32", "block": None, "export_s": time.perf_counter() - start})
        for block in args.blocks:
            start = time.perf_counter()
            name = f"ORT MatMulNBitsQuantizer g{block}"
            files[name] = tmp / f"ort_g{block}.onnx"
            ort_int4(files["fp32"], files[name], block)
            rows.append({"model": name, "block": block, "export_s": time.perf_counter() - start})
            for algo, zero_point, head in itertools.product(
                args.algos, args.zero_points, args.heads
            ):
                preset = (
                    f"w4a16-g{block}"
                    + ("-asym" if zero_point == "asym" else "")
                    + ("-gptq" if algo == "gptq" else "")
                )
                name = f"lowbit {preset} head {head}"
                start = time.perf_counter()
                source = untied(model) if head == "int4" else copy.deepcopy(model)
                q = lowbit.quantize(source, preset, calib_data=calib if algo == "gptq" else None)
                files[name] = tmp / f"{preset}-{head}.onnx"
                result = export_decoder(q, None, files[name])
                row = {
                    "model": name,
                    "block": block,
                    "algo": algo,
                    "zero_points": zero_point,
                    "head": head,
                }
                row["export_s"] = time.perf_counter() - start
                row["verification"] = result.verification.detail
                rows.append(row)
                print(f"{name}: {result.verification.detail}", file=sys.stderr, flush=True)
                del q, source
        del model
        sessions = {name: DecoderSession(path, threads=2) for name, path in files.items()}
        for row in rows:
            result = ort_perplexity(sessions[row["model"]], eval_ids)
            row.update(ppl=result.ppl, ppl_tokens=result.n_tokens)
            row["file_mb"] = files[row["model"]].stat().st_size / 1e6
            print(f"{row['model']}: ppl {result.ppl:.3f}", file=sys.stderr, flush=True)
        cases = {
            name: (lambda s=s: generate_greedy(s, prompt, args.decode_tokens))
            for name, s in sessions.items()
        }
        samples = time_interleaved(cases, warmup=1, repeats=args.repeats, threads=2)
        del sessions, cases
        missing = [t for t in LLAMA_TOOLS if not (LLAMA_CPP / t).is_file()]
        llama = None
        if missing:
            print(f"{LLAMA_ROW}: skipped, {', '.join(missing)} not built", file=sys.stderr)
        else:
            llama_q4_0(tmp / "q4_0.gguf")
            llama = llama_row(tmp / "q4_0.gguf", eval_ids, args.decode_tokens, args.repeats)
    for row in rows:
        s = samples[row["model"]]
        row["decode_tps"] = args.decode_tokens / sorted(s)[len(s) // 2]
        if row["block"] is not None:
            row["decode_vs_ort"] = median_ratio(
                samples[f"ORT MatMulNBitsQuantizer g{row['block']}"], s
            )
    report = Report(checks=[])
    base = rows[0]["ppl"]
    cells = []
    for r in rows + ([llama] if llama else []):
        ratio = ""
        if "decode_vs_ort" in r:
            med, lo, hi = r["decode_vs_ort"]
            ratio = f"{med:.2f}x ({lo:.2f}–{hi:.2f})"
        cells.append(
            [
                r["model"],
                f"{r['ppl']:.3f}",
                f"{100 * (r['ppl'] / base - 1):+.1f}%",
                f"{r['file_mb']:.1f}",
                f"{r['decode_tps']:.1f}",
                ratio,
            ]
        )
    header = ["model", "perplexity", "vs fp32", "file MB", "decode tok/s", "vs ORT int4"]
    title = "SmolLM2-135M int4: ONNX in ONNX Runtime, and llama.cpp Q4_0"
    text = markdown_table(header, cells, title=title)
    report.add("smollm2_onnx", text, rows + ([llama] if llama else []))
    by_name = {r["model"]: r for r in rows}
    for r in rows:
        if r.get("algo") != "gptq":
            continue
        ort_row = by_name[f"ORT MatMulNBitsQuantizer g{r['block']}"]
        speed = r["decode_vs_ort"][0]
        ok = r["ppl"] < ort_row["ppl"] and speed >= 0.9
        report.checks.append(
            f"{'PASS' if ok else 'FAIL'} {r['model']}: ppl {r['ppl']:.3f} < ORT g{r['block']} "
            f"{ort_row['ppl']:.3f} at decode speed {speed:.2f}x ORT's (>= 0.90)"
        )
    if llama:
        llama_note = (
            f"llama-quantize --allow-requantize of the bundled Q4_1 file to q4_0 "
            f"({llama['tensor_types']}; head tied to token_embd); perplexity: the file by "
            "lowbit.io.gguf.load_gguf (Q4_0 codes and scales bit for bit, reference kernel, "
            "fp32 math; llama.cpp itself multiplies Q4_0 by Q8_0 activations), same tokens "
            "and protocol as the ORT rows; decode: tokens per second of llama-completion's "
            f"eval-time line (-t 2 -n {args.decode_tokens} --temp 0, prompt excluded, its own "
            f"warm-up), median of {args.repeats} runs "
            f"({', '.join(f'{x:.1f}' for x in llama['decode_tps_runs'])}); the ORT rows time "
            "prompt + new tokens in an interleaved loop, so the two harnesses differ and "
            f"ratios are indicative; {vs_llama(rows, llama)}; tools: {LLAMA_CPP}"
        )
    else:
        llama_note = f"NOT RUN: {', '.join(missing)} not found in {LLAMA_CPP} (make llama-tools)"
    report.notes.update(
        {
            "command": report.command,
            "eval": f"first {args.max_tokens} tokens of the evaluation split, ctx 512, stride "
            f"512 ({rows[0]['ppl_tokens']} scored), lowbit.eval.perplexity on ORT logits",
            "calibration": f"GPTQ: {args.calib_samples} x {args.seq_len} tokens of the "
            "calibration split",
            "decode": f"batch 1, {args.decode_tokens} new tokens after a "
            f"{prompt.shape[1]}-token prompt, 2 intra-op threads, median of {args.repeats} "
            "interleaved rounds",
            "ORT int4": "MatMulNBitsQuantizer defaults (asymmetric RTN, accuracy_level "
            "unset) on the fp32 decoder graph; embedding stays fp32, lm_head int4",
            "lowbit": "export_decoder with verify=True (greedy tokens and perplexity checked "
            "against lowbit's PyTorch model); embedding int8 per row; head int8: the preset's "
            "tied head (int8 per row, written as exact Cast+MatMul unless ORT's int8-input "
            "MatMulNBits agrees), head int4: lm_head untied and quantized like the layers",
            "llama.cpp Q4_0": llama_note,
            "versions": f"torch {torch.__version__}, onnxruntime "
            f"{__import__('onnxruntime').__version__}, {time.strftime('%Y-%m-%d %H:%M')}",
        }
    )
    report.print(as_json=args.json)


if __name__ == "__main__":
    main()
