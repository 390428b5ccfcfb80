"""One golden vector per weight format (every entry of ``lowbit.formats.qtypes.QTYPES``).

Regression pins, not an independent oracle: each case is what lowbit's RTN stored for a fixed
2x8 input when the file was written (the integer arithmetic is checked independently against
hand-worked values in affine_worked_examples.json, NF4's levels against bitsandbytes' table).
A change to any format's arithmetic or storage shows up as a diff of this file, and a format
without a case fails tests/test_formats/test_weight_format.py.

Regenerate (only after checking that a change is intended):
    python tests/lowbit_testkit/format_goldens.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.qtypes import QTYPES, FloatType, IntType
from lowbit.formats.weight_format import WeightFormat

FILE = Path(__file__).parent / "golden" / "weight_formats.json"
INPUT = (
    (0.31, -1.7, 0.0, 2.25, -0.05, 0.9, -3.1, 1.4),
    (-0.6, 0.12, 5.5, -2.0, 0.33, -0.71, 1.05, -4.4),
)


def golden_format(name: str) -> WeightFormat:
    """The format each QTYPES entry is pinned in: signed integers symmetric per row, unsigned
    asymmetric in groups of 4, scaled floats per tensor, the others in groups of 4."""
    qtype = QTYPES[name]
    if isinstance(qtype, IntType):
        if qtype.signed:
            return WeightFormat(qtype, PerAxis(0), restricted=qtype.bits > 1)
        return WeightFormat(qtype, PerGroup(4), symmetric=False)
    if isinstance(qtype, FloatType):
        return WeightFormat(qtype, PerTensor())
    return WeightFormat(qtype, PerGroup(4))


def golden_case(name: str) -> dict:
    """What RTN stores for INPUT in ``golden_format(name)``: tensors and dequantized values."""
    from lowbit.algorithms import rtn_tensor

    qt = rtn_tensor(torch.tensor(INPUT), golden_format(name))
    return {
        "kind": qt.kind,
        "nbytes": qt.nbytes,
        "tensors": {k: t.float().flatten().tolist() for k, t in sorted(qt.tensors().items())},
        "dequantized": qt.dequantize().flatten().tolist(),
    }


def main() -> None:
    data = {
        "provenance": (
            "lowbit's RTN (algorithms/rtn.py) on the 2x8 input below, as of the commit that "
            "last changed this file (git log -- this file); written by "
            "tests/lowbit_testkit/format_goldens.py. Regression pins: see that file's docstring."
        ),
        "input": INPUT,
        "cases": {name: golden_case(name) for name in QTYPES},
    }
    FILE.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {len(data['cases'])} cases to {FILE}")


if __name__ == "__main__":
    main()
