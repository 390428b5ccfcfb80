"""SmolLM2-135M int4 as ONNX decoders in ONNX Runtime, side by side in one run: lowbit's
export (RTN and GPTQ, group 32 and 128) vs ORT's own MatMulNBitsQuantizer applied to the
same fp32 decoder graph (so the graph structure is identical), and the fp32 graph itself.
Perplexity on the evaluation split (every file scored by the same lowbit protocol, ctx 512
stride 512, on the same tokens) and batch-1 greedy decode tokens/s (2 threads, interleaved).

    python benchmarks/bench_onnx_llm.py [--blocks 32 128] [--max-tokens 4096]
        [--calib-samples 32] [--decode-tokens 32] [--repeats 5] [--json]

llama.cpp Q4_0 is not measured by this script (see the notes it prints).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _report import Report, markdown_table

import lowbit
from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.eval.calibration import token_windows
from lowbit.eval.latency import median_ratio, time_interleaved
from lowbit.eval.text import calibration_text, evaluation_text
from lowbit.export.onnx.decoder import export_decoder
from lowbit.export.onnx.decoder_session import DecoderSession, generate_greedy, ort_perplexity
from lowbit.io.hf import load_model

LLAMA_CPP = Path.home() / ".cache" / "lowbit" / "llama.cpp-0c1e570" / "bin"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="*", default=[32, 128])
    parser.add_argument("--algos", nargs="*", default=["rtn", "gptq"], choices=["rtn", "gptq"])
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
    prompt = tok("The quick brown fox", return_tensors="pt").input_ids
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
            for algo in args.algos:
                for head in args.heads:
                    preset = f"w4a16-g{block}" + ("-gptq" if algo == "gptq" else "")
                    name = f"lowbit {preset} head {head}"
                    start = time.perf_counter()
                    source = untied(model) if head == "int4" else copy.deepcopy(model)
                    q = lowbit.quantize(
                        source, preset, calib_data=calib if algo == "gptq" else None
                    )
                    files[name] = tmp / f"{preset}-{head}.onnx"
                    result = export_decoder(q, None, files[name])
                    row = {"model": name, "block": block, "algo": algo, "head": head}
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
    for r in rows:
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
    header = ["ONNX model", "perplexity", "vs fp32", "file MB", "decode tok/s", "vs ORT int4"]
    text = markdown_table(header, cells, title="SmolLM2-135M int4 ONNX in ONNX Runtime")
    report.add("smollm2_onnx", text, rows)
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
    llama = "present" if (LLAMA_CPP / "llama-perplexity").is_file() else "not built"
    report.notes.update(
        {
            "command": report.command,
            "eval": f"first {args.max_tokens} tokens of the evaluation split, ctx 512, stride "
            f"512 ({rows[0]['ppl_tokens']} scored), lowbit.eval.perplexity on ORT logits",
            "calibration": f"GPTQ: {args.calib_samples} x {args.seq_len} tokens of the "
            "calibration split",
            "decode": f"batch 1, {args.decode_tokens} new tokens after a 5-token prompt, "
            f"2 intra-op threads, median of {args.repeats} interleaved rounds",
            "ORT int4": "MatMulNBitsQuantizer defaults (asymmetric RTN, accuracy_level "
            "unset) on the fp32 decoder graph; embedding stays fp32, lm_head int4",
            "lowbit": "export_decoder with verify=True (greedy tokens and perplexity checked "
            "against lowbit's PyTorch model); embedding int8 per row; head int8: the preset's "
            "tied head (int8 per row, written as exact Cast+MatMul unless ORT's int8-input "
            "MatMulNBits agrees), head int4: lm_head untied and quantized like the layers",
            "llama.cpp Q4_0": f"not measured by this script (tools {llama}: {LLAMA_CPP})",
            "versions": f"torch {torch.__version__}, onnxruntime "
            f"{__import__('onnxruntime').__version__}, {time.strftime('%Y-%m-%d %H:%M')}",
        }
    )
    report.print(as_json=args.json)


if __name__ == "__main__":
    main()
