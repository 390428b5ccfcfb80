"""Determinism (issue 15): the same model, recipe and calibration give byte-identical files
(sha256) with 1 and 2 torch threads, for every recipe family (RTN, GPTQ, AWQ, SmoothQuant)
and every export format the CLI writes (lowbit save folders, GGUF with each method, ONNX).
Two thread counts cover reruns too: a rerun is the same computation with the same count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lowbit.cli.main import main
from lowbit_testkit.digests import output_digests
from lowbit_testkit.models import tiny_llama_folder

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::lowbit.errors.LowbitWarning")]

CALIB = ["--samples", "4", "--seq-len", "32"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("det") / "llama")


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    """A short calibration text: the imatrix method reads every window of its text."""
    from lowbit.eval.text import calibration_text

    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(calibration_text()[:3000])
    return path


def _run_twice(tmp_path: Path, args: list[str], name: str) -> None:
    before = torch.get_num_threads()
    digests = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = tmp_path / f"t{threads}" / name
            out.parent.mkdir()
            main([*args, "--out", str(out)])
            digests.append(output_digests(out))
    finally:
        torch.set_num_threads(before)
    assert digests[0] == digests[1]


@pytest.mark.parametrize("recipe", ["w4a16-g32", "w4a16-g32-gptq", "w4a16-g32-awq",
                                    "w8a8-smoothquant"])  # fmt: skip
def test_quantize_is_byte_identical(tmp_path: Path, folder: Path, recipe: str) -> None:
    args = ["quantize", str(folder), "--recipe", recipe, *CALIB, "--threads"]
    before = torch.get_num_threads()
    digests = []
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        main([*args, str(threads), "--out", str(out)])
        digests.append(output_digests(out))
    torch.set_num_threads(before)
    assert digests[0] == digests[1]


@pytest.mark.parametrize("method", ["rtn", "imatrix", "gptq", "awq"])
def test_gguf_export_is_byte_identical(
    tmp_path: Path, folder: Path, calib: Path, method: str
) -> None:
    args = ["export", str(folder), "--format", "gguf", "--type", "q4_k_m", "--method", method]
    if method != "rtn":
        args += ["--calib", str(calib), "--calib-windows", "4", "--seq-len", "32"]
    _run_twice(tmp_path, args, "m.gguf")


def test_onnx_export_is_byte_identical(tmp_path: Path, folder: Path) -> None:
    args = ["export", str(folder), "--format", "onnx", "--recipe", "w4a16-g32"]
    _run_twice(tmp_path, args, "m.onnx")


def test_cnn_onnx_and_tflite_are_byte_identical(tmp_path: Path) -> None:
    """The module-graph ONNX exporter (QDQ, torch.export) and the LiteRT writer, on an
    int8-static CNN (the decoder above is ONNX's other builder)."""
    from torch import nn

    import lowbit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4)).eval()  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    static = lowbit.quantize(
        model, "int8-static", calib_data=[torch.randn(16, 3, 8, 8, generator=gen)]
    )
    x = torch.randn(2, 3, 8, 8, generator=gen)
    before = torch.get_num_threads()
    digests = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            onnx = lowbit.export_onnx(static, x, tmp_path / f"t{threads}.onnx").path
            tflite = lowbit.export_tflite(static, x, tmp_path / f"t{threads}.tflite").path
            digests.append((output_digests(onnx)[onnx.name], output_digests(tflite)[tflite.name]))
    finally:
        torch.set_num_threads(before)
    assert digests[0] == digests[1]
