"""Kernel selection: priorities, reasons, forced kernels, references for every kind, explain."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lowbit.algorithms import rtn_tensor
from lowbit.errors import InvalidSpecError
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.qtypes import BINARY, FP8_E4M3, NF4, TERNARY, IntType
from lowbit.formats.weight_format import WeightFormat
from lowbit.kernels import (
    DEFAULT_REGISTRY,
    MODES,
    REFERENCE_NAME,
    KernelEntry,
    LayerSpec,
    activation_qparams,
    explain,
    explain_choice,
    select_kernel,
)
from lowbit_testkit.kernel_helpers import int8_weight, minmax_qparams

QP = activation_qparams(0.05, 128)


def static_facts() -> dict:
    return {"input_qparams": QP, "output_qparams": QP}


def facts(mode: str) -> dict:
    return static_facts() if mode == "static" else {}


REFERENCE_ONLY = {
    "nf4": lambda: rtn_tensor(torch.randn(32, 64), WeightFormat(NF4, PerGroup(32))),
    "binary": lambda: rtn_tensor(torch.randn(32, 64), WeightFormat(BINARY, PerAxis(0))),
    "ternary": lambda: rtn_tensor(torch.randn(32, 64), WeightFormat(TERNARY, PerTensor())),
    "fp8": lambda: rtn_tensor(torch.randn(32, 64), WeightFormat(FP8_E4M3, PerTensor())),
    "int8-per-group": lambda: rtn_tensor(
        torch.randn(32, 64), WeightFormat(IntType(8, True), PerGroup(32))
    ),
}


@pytest.mark.parametrize("kind", list(REFERENCE_ONLY))
@pytest.mark.parametrize("mode", MODES)
def test_kinds_without_fast_kernels_get_the_reference(kind: str, mode: str) -> None:
    w = REFERENCE_ONLY[kind]()
    entry, considered = select_kernel("linear", w, mode, **facts(mode))
    assert entry.name == REFERENCE_NAME and entry.reference
    assert sum(c.chosen for c in considered) == 1
    # every fast entry says why it does not apply
    assert all(c.reason for c in considered if not c.chosen)
    x = torch.randn(3, 64)
    y = entry.run(entry.prepare(w, None, LayerSpec("linear", mode, **facts(mode))), x)
    if mode == "weight_only":  # the reference is dequantize + float op, exactly
        torch.testing.assert_close(y, x @ w.dequantize().T)


def test_priorities_pick_the_fast_kernel_per_mode() -> None:
    w = int8_weight(32, 64)
    names = {m: select_kernel("linear", w, m, **facts(m))[0].name for m in MODES}
    assert names["dynamic"].startswith("int8 dynamic")
    assert names["static"].startswith("int8 static")
    assert names["weight_only"].startswith("int8 weight-only")
    assert select_kernel("conv2d", int8_weight(8, 4, 3, 3), "static", **static_facts())[
        0
    ].name.startswith("int8 static")
    assert select_kernel("conv2d", int8_weight(8, 4, 3, 3), "dynamic")[0].name == REFERENCE_NAME


def test_considered_lists_every_entry_of_the_op_with_reasons() -> None:
    w = rtn_tensor(torch.randn(20, 64), WeightFormat(IntType(4, True), PerGroup(32)))
    entry, considered = select_kernel("linear", w, "weight_only")
    assert entry.name == REFERENCE_NAME
    assert {c.name for c in considered} == {e.name for e in DEFAULT_REGISTRY.for_op("linear")}
    why = explain_choice(considered)
    assert "out_features % 16" in why  # the int4 kernel's reason is shown ...
    assert "runs mode=" not in why  # ... the other modes' kernels are not


def test_forced_kernel() -> None:
    w = int8_weight(32, 64)
    entry, considered = select_kernel("linear", w, "dynamic", kernel=REFERENCE_NAME)
    assert entry.name == REFERENCE_NAME
    assert "requested" in explain_choice(considered)
    w8 = "int8 weight-only (aten._weight_int8pack_mm, bf16)"
    with pytest.raises(InvalidSpecError, match="weight_only"):
        select_kernel("linear", w, "dynamic", kernel=w8)
    with pytest.raises(InvalidSpecError, match="known"):
        select_kernel("linear", w, "dynamic", kernel="no such kernel")


def test_custom_registry_entry_wins_by_priority_and_duplicates_fail() -> None:
    custom = KernelEntry(
        op="linear",
        name="test double",
        priority=1000,
        applies=lambda w, s: None,
        prepare=lambda w, b, s: w,
        run=lambda state, x: torch.zeros(x.shape[0], state.shape[0]),
        summary="zeros",
    )
    reg = DEFAULT_REGISTRY.with_entries(custom)
    entry, _ = select_kernel("linear", int8_weight(8, 16), "dynamic", registry=reg)
    assert entry is custom
    assert select_kernel("linear", int8_weight(8, 16), "dynamic")[0] is not custom
    with pytest.raises(InvalidSpecError, match="twice"):
        reg.with_entries(custom)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(op="matmul", mode="dynamic"), "unknown op"),
        (dict(op="linear", mode="int8"), "unknown mode"),
        (dict(op="linear", mode="static"), "output_qparams"),
        (dict(op="linear", mode="dynamic", output_qparams=QP), "static"),
        (dict(op="add", mode="dynamic"), "static"),
    ],
)
def test_layer_spec_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidSpecError, match=match):
        LayerSpec(**kwargs)


def test_activation_qparams_must_be_uint8_zero_point() -> None:
    from lowbit.formats.affine import choose_qparams

    signed = choose_qparams(torch.randn(10), IntType(8, True))
    with pytest.raises(InvalidSpecError, match="uint8"):
        LayerSpec("linear", "static", output_qparams=signed)
    with pytest.raises(InvalidSpecError, match="zero point"):
        activation_qparams(0.1, 300)
    assert minmax_qparams(torch.randn(5)).qtype == IntType(8, False)


class _Reporting(torch.nn.Module):
    """Duck-typed: explain must not depend on lowbit.nn."""

    def kernel_report(self) -> dict:
        return {"op": "linear", "weight": "w|x", "mode": "dynamic", "kernel": "k", "why": "y"}


def test_explain_rows_markdown_and_rich() -> None:
    from rich.console import Console

    model = torch.nn.Sequential(torch.nn.ReLU(), _Reporting(), torch.nn.Sequential(_Reporting()))
    table = explain(model)
    assert [r.module for r in table] == ["1", "2.0"]
    md = str(table).splitlines()
    assert md[0].startswith("| module | op |") and len(md) == 4
    assert "w\\|x" in md[2]  # pipes escaped
    console = Console(record=True, width=200)
    console.print(table)
    assert "lowbit kernels" in console.export_text()


def test_quantized_paths_run_under_warnings_as_errors() -> None:
    """torch's quint8 deprecation warnings are silenced locally, so -W error still works
    (a subprocess: the C++ warning fires once per process)."""
    code = (
        "import torch; from lowbit.nn import QuantLinear, QuantConv2d;"
        "from lowbit.kernels import activation_qparams as a;"
        "from lowbit.algorithms import rtn_tensor as T;"
        "from lowbit.formats.granularity import PerAxis; from lowbit.formats.qtypes import IntType;"
        "from lowbit.formats import WeightFormat as F;"
        "w = T(torch.randn(8, 16), F(IntType(8, True), PerAxis(0)));"
        "QuantLinear(w, mode='dynamic')(torch.randn(2, 16));"
        "QuantLinear(w, mode='static', input_qparams=a(.05, 128), output_qparams=a(.05, 128),"
        " keep_quantized_output=True)(torch.randn(2, 16)).dequantize();"
        "c = T(torch.randn(4, 2, 3, 3), F(IntType(8, True), PerAxis(0)));"
        "QuantConv2d(c, mode='static', input_qparams=a(.05, 128),"
        " output_qparams=a(.05, 128))(torch.randn(1, 2, 5, 5))"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
