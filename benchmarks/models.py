"""Benchmark models and the shared plumbing of the model-level speed benchmarks.

Random-weight models: fine for speed (a kernel does not care what the numbers mean), never for
accuracy claims. The SQNR column only says how far a quantized model's output moves from fp32.

- ``MLP``: Linear(1024, 4096) -> ReLU -> Linear(4096, 1024), the Linear-heavy case.
- ``ResNet18``: torchvision-shaped ResNet-18 (7x7 stem, maxpool, 4 stages x 2 BasicBlocks,
  avgpool, fc 512 -> 1000) with BatchNorm layers whose running statistics and affine parameters
  are random (``randomize_batchnorm``), in eval mode. The residual add is a module (``Add``:
  ``lowbit.nn.Add`` when importable, else a local float module with the same signature) so
  lowbit's static path can turn it into a quantized add; torch.ao FX traces through either.

Also: ``quiet_deprecations`` (local filters for torch.ao / quint8 warnings),
``lowbit_quantize`` (the lowbit entry point or the reason it is missing), ONNX export and
ONNX Runtime sessions, and ``format_model_table`` / ``add_model_table`` (case | ms | vs
torch fp32 | vs anchor | SQNR, into a ``_report.Report``). Timing itself is
``harness.compare``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _report import Report, markdown_table
from harness import Comparison, compare
from torch import nn

from lowbit.formats.sqnr import sqnr_db

# ----------------------------------------------------------------------------- warnings

_QUIET = [
    (r".*quantized tensor creation functions.*", UserWarning),
    (r"torch\.ao\.quantization is deprecated.*", DeprecationWarning),
    (r".*reduce_range will be deprecated.*", UserWarning),
    (r".*_check_is_valid_config_dict.*", UserWarning),
    (r".*TorchScript-based ONNX export.*", DeprecationWarning),
    (r".*legacy TorchScript-based ONNX export.*", UserWarning),
]


@contextlib.contextmanager
def quiet_deprecations() -> Iterator[None]:
    """Silence the torch.ao / quint8 / legacy-ONNX-export deprecation warnings, locally."""
    with warnings.catch_warnings():
        for msg, cat in _QUIET:
            warnings.filterwarnings("ignore", message=msg, category=cat)
        yield


# ----------------------------------------------------------------------------- models


class MLP(nn.Module):
    """Linear(d, hidden) -> ReLU -> Linear(hidden, d)."""

    def __init__(self, d: int = 1024, hidden: int = 4096) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


class _LocalAdd(nn.Module):
    """Fallback residual add with lowbit.nn.Add's signature: forward(a, b) = a + b (+ ReLU)."""

    def __init__(self, relu: bool = False) -> None:
        super().__init__()
        self.relu = relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = a + b
        return F.relu(y) if self.relu else y


try:
    from lowbit.nn import Add

    ADD_SOURCE = "lowbit.nn.Add"
except ImportError:
    Add = _LocalAdd
    ADD_SOURCE = "local Add fallback (lowbit.nn.Add not importable)"


class BasicBlock(nn.Module):
    """ResNet BasicBlock: conv-bn-relu, conv-bn, (+ downsample conv-bn), add + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.add = Add(relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.add(y, identity)


class ResNet18(nn.Module):
    """torchvision-shaped ResNet-18 for 3x224x224 inputs."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial random statistics and affine parameters.

    running_mean ~ N(0, 0.1), running_var ~ U(0.5, 2), weight ~ U(0.5, 1.5), bias ~ N(0, 0.1):
    far enough from the identity that folding matters, tame enough that 18 layers stay finite.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def make_mlp(seed: int = 0) -> MLP:
    """The benchmark MLP, default (Kaiming-uniform) random init, eval mode."""
    torch.manual_seed(seed)
    return MLP().eval()


def make_resnet18(seed: int = 0) -> ResNet18:
    """ResNet-18 with Kaiming-normal convs (as torchvision) and random BatchNorm, eval mode."""
    torch.manual_seed(seed)
    model = ResNet18()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


# ----------------------------------------------------------------------------- lowbit


class LowbitMissingError(Exception):
    """lowbit.quantize is not there (yet): a benchmark then runs its baselines only."""


def lowbit_quantize() -> Callable:
    """``lowbit.quantize``, or LowbitMissingError saying why it cannot be had."""
    try:
        import lowbit
    except ImportError as e:
        raise LowbitMissingError(f"`import lowbit` failed: {e}") from e
    try:
        return lowbit.quantize
    except AttributeError as e:
        raise LowbitMissingError("lowbit.quantize does not exist yet (recipes/ not written)") from e
    except ImportError as e:  # lowbit resolves quantize lazily; a half-written recipes/ fails
        raise LowbitMissingError(f"lowbit.quantize is not importable yet: {e}") from e


def try_lowbit(build: Callable[[], nn.Module]) -> tuple[nn.Module | None, str, int]:
    """Run ``build`` (the script's lowbit case) -> (model or None, note, exit status).

    Missing lowbit.quantize: a clear note, status 0. Any other error is a real failure: its
    traceback goes to stderr and the status is 1; either way the baselines still run.
    """
    try:
        return build(), "", 0
    except LowbitMissingError as e:
        print(f"NOTE: lowbit case not run: {e}. Baselines only.", file=sys.stderr)
        return None, f"NOT RUN: {e}", 0
    except Exception as e:
        print("ERROR: the lowbit case failed; running the baselines only:", file=sys.stderr)
        traceback.print_exc()
        return None, f"FAILED: {type(e).__name__}: {e}", 1


# ----------------------------------------------------------------------------- ONNX


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Export with a dynamic batch axis (input "x", output "y"); returns the exporter used.

    Tries the TorchScript exporter (dynamo=False) first, then the dynamo exporter.
    """
    dyn = {"x": {0: "batch"}, "y": {0: "batch"}}
    errors = []
    with quiet_deprecations(), torch.no_grad():
        try:
            torch.onnx.export(
                model, (example,), str(path), input_names=["x"], output_names=["y"],
                dynamic_axes=dyn, opset_version=17, dynamo=False,
            )  # fmt: skip
            return "torch.onnx.export(dynamo=False), opset 17"
        except Exception as e:  # exporter availability differs between torch releases
            errors.append(f"dynamo=False: {e}")
        try:
            batch = torch.export.Dim("batch")
            torch.onnx.export(
                model, (example,), str(path), input_names=["x"], output_names=["y"],
                dynamic_shapes=({0: batch},), dynamo=True,
            )  # fmt: skip
            return "torch.onnx.export(dynamo=True)"
        except Exception as e:
            errors.append(f"dynamo=True: {e}")
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))


def ort_session(path: Path, threads: int):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime CPU session with all graph optimizations and ``threads`` intra-op
    threads (one inter-op thread, sequential execution).

    Spin-waiting is off: ORT's idle pool threads would otherwise keep spinning on the 2 cores
    while the next case (a torch one) runs, and slow it down several times.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_op_counts(path: Path) -> str:
    """Op counts ("OpType xN, ...") of a saved ONNX graph: what a quantizer really made."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


class CalibrationReader:
    """onnxruntime.quantization.CalibrationDataReader over a list of batches (input "x")."""

    def __init__(self, calib: list[torch.Tensor], name: str = "x") -> None:
        self._it = iter([{name: xb.numpy()} for xb in calib])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def ort_quantize_static(
    model: nn.Module, calib: list[torch.Tensor], tmp: Path, stem: str
) -> tuple[Path, Path, dict[str, str]]:
    """fp32 ONNX export (+ ORT's quant_pre_process) and its ORT ``quantize_static`` QDQ
    version (per-channel int8 weights, uint8 activations, MinMax on ``calib``); notes say
    which exporter ran and what the quantizer produced."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    raw, fp32, q = tmp / f"{stem}_raw.onnx", tmp / f"{stem}.onnx", tmp / f"{stem}_qdq.onnx"
    exporter = export_onnx(model, calib[0], raw)
    quant_pre_process(str(raw), str(fp32))
    quantize_static(
        fp32,
        q,
        CalibrationReader(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return fp32, q, {"onnx exporter": exporter, "ORT QDQ graph": onnx_op_counts(q)}


# ----------------------------------------------------------------------------- table


@dataclass
class ModelCase:
    """One timed case: its name, one forward pass, and its output SQNR vs fp32."""

    name: str
    fn: Callable[[], object]
    sqnr: float | None = None  # None: the fp32 reference itself


def as_tensor(out: object) -> torch.Tensor:
    """A case's output (torch tensor or ONNX Runtime's numpy array) as a float tensor."""
    return (out if isinstance(out, torch.Tensor) else torch.from_numpy(out)).float()


def calls_per_sample(fn: Callable[[], object], target_s: float = 0.01) -> int:
    """How many calls of ``fn`` make one timed sample of ~``target_s``, so that
    sub-millisecond forwards are not lost in timer noise."""
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, round(target_s / max(time.perf_counter() - t0, 1e-6)))


def _repeat(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(calls):
            fn()

    return run


def _cpu_busy(interval_s: float) -> float:
    """Fraction of all cores busy over ``interval_s`` (from /proc/stat; 0.0 where absent)."""

    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t0, i0 = snap()
        time.sleep(interval_s)
        t1, i1 = snap()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_for_quiet_cpu(max_wait_s: float = 60.0, busy_below: float = 0.1) -> str:
    """Wait (up to ``max_wait_s``) until other processes leave the CPU nearly idle.

    Call it while this process is idle. On this shared 2-core machine a neighbour at 100% of
    one core makes every 2-thread OpenMP region wait for a time slice: torch's small int8
    forwards then take ~10-20 ms instead of ~0.2 ms. Returns a note for the table.
    """
    start = time.perf_counter()
    while (busy := _cpu_busy(0.5)) >= busy_below:
        if time.perf_counter() - start > max_wait_s:
            return f"CPU still {busy:.0%} busy with other work after {max_wait_s:.0f} s: noisy"
    return f"CPU quiet after {time.perf_counter() - start:.0f} s of waiting"


def bench_cases(
    fns: dict[str, Callable[[], object]],
    *,
    ref: torch.Tensor,
    fp32: str,
    threads: int,
    warmup: int,
    repeats: int,
) -> tuple[Comparison, list[ModelCase], int]:
    """SQNR of every case against ``ref``, then ``harness.compare`` round-robin once the CPU
    is quiet (``wait_for_quiet_cpu``; its note goes to ``Comparison.notes["cpu"]``).

    Each harness sample runs ``calls`` forward passes (the same number for every case, sized
    on the ``fp32`` case); returns (comparison, cases, calls).
    """
    cases = [ModelCase(n, fn, None if n == fp32 else sqnr_db(ref, as_tensor(fn()))) for n, fn in
             fns.items()]  # fmt: skip
    calls = calls_per_sample(fns[fp32])
    quiet = wait_for_quiet_cpu()
    res = compare(
        {c.name: _repeat(c.fn, calls) for c in cases},
        fp32,
        warmup=warmup,
        repeats=repeats,
        threads=threads,
    )
    res.notes["cpu"] = quiet
    return res, cases, calls


def format_model_table(
    res: Comparison,
    cases: Sequence[ModelCase],
    *,
    fp32: str,
    anchor: str,
    calls: int,
    title: str,
    command: str,
) -> str:
    """Markdown table: case | ms | speed vs ``fp32`` | vs ``anchor`` | SQNR dB.

    ms = median sample / calls. Speeds are per-round ratios (other case's time / this case's
    time, > 1 = faster) as median (min–max).
    """
    header = ["case", "ms", f"speed vs {fp32}", f"vs {anchor} (anchor)", "SQNR dB vs fp32"]
    cells = []
    for row in table_rows(res, cases, fp32=fp32, anchor=anchor, calls=calls):
        cols = [f"{m:.2f}x ({lo:.2f}–{hi:.2f})" for m, lo, hi in (row["vs_fp32"], row["vs_anchor"])]
        sq = "ref" if row["sqnr_db"] is None else f"{row['sqnr_db']:.1f}"
        cells.append([row["case"], f"{row['ms']:.3g}", *cols, sq])
    footer = [f"command: `{command}`", *(f"{k}: {v}" for k, v in res.notes.items())]
    return markdown_table(header, cells, title=title, footer=footer)


def add_model_table(
    report: Report,
    res: Comparison,
    cases: Sequence[ModelCase],
    *,
    title: str,
    anchor: str,
    calls: int,
    lowbit: str | None = None,
    targets: Sequence[tuple[str, float]] = (),
    min_sqnr: float | None = None,
    fp32: str = "torch fp32",
) -> None:
    """Add one model table to ``report`` (markdown, JSON rows with the cpu note) and, when
    the ``lowbit`` case ran, its PASS/FAIL ``acceptance`` lines to ``report.checks``."""
    kw = {"fp32": fp32, "anchor": anchor, "calls": calls}
    rows: list = table_rows(res, cases, **kw)
    rows.append({"cpu": res.notes["cpu"]})
    report.add(
        title, format_model_table(res, cases, title=title, command=report.command, **kw), rows
    )
    if lowbit is not None and report.checks is not None:
        report.checks += acceptance(res, cases, lowbit, targets, title=title, min_sqnr=min_sqnr)


def table_rows(
    res: Comparison, cases: Sequence[ModelCase], *, fp32: str, anchor: str, calls: int
) -> list[dict]:
    """The table as JSON-able dicts (ms, (median, min, max) ratios, SQNR)."""
    return [
        {
            "case": c.name,
            "ms": res.cases[c.name].median * 1e3 / calls,
            "vs_fp32": res.ratio(c.name, fp32),
            "vs_anchor": res.ratio(c.name, anchor),
            "sqnr_db": c.sqnr,
        }
        for c in cases
    ]


def acceptance(
    res: Comparison,
    cases: Sequence[ModelCase],
    lowbit: str,
    targets: Sequence[tuple[str, float]],
    *,
    title: str,
    min_sqnr: float | None = None,
) -> list[str]:
    """PASS/FAIL lines: median per-round speed of ``lowbit`` over each (case, target)."""
    out = []
    for ref, target in targets:
        med = res.ratio(lowbit, ref)[0]
        verdict = "PASS" if med >= target else "FAIL"
        out.append(f"{verdict}: {title}: {lowbit} {med:.2f}x {ref} (target >= {target}x)")
    sq = {c.name: c.sqnr for c in cases}[lowbit]
    if min_sqnr is None:
        out.append(f"info: {title}: {lowbit} output SQNR {sq:.1f} dB")
    else:
        verdict = "PASS" if sq >= min_sqnr else "FAIL"
        out.append(f"{verdict}: {title}: {lowbit} output SQNR {sq:.1f} dB (target >= {min_sqnr})")
    return out


def environment_notes(warmup: int, repeats: int) -> dict[str, str]:
    """Machine, versions, timing settings, date and the load average (a busy neighbour makes
    2-thread OpenMP runs collapse: every barrier waits for a time slice)."""
    import importlib.metadata

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "onnxruntime": importlib.metadata.version("onnxruntime"),
        "timing": f"{warmup} warm-up + {repeats} timed rounds, round-robin",
        "load average 1/5/15 min at the end": load,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def print_model_report(
    report: Report, notes: dict[str, str], args, lowbit_note: str | None
) -> None:
    """The end of the model benchmarks: ``notes`` (exporter, data...), then the environment
    (``environment_notes``) and the lowbit note, then tables or JSON (``args.json``)."""
    report.notes = {**notes, **environment_notes(args.warmup, args.repeats)}
    if lowbit_note:
        report.notes["lowbit"] = lowbit_note
    report.print(as_json=args.json)
