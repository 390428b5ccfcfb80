"""``lowbit inspect FILE.onnx``: every weight of an ONNX file with its range, outlier
channels and SQNR in each candidate format, or the bits per weight it is stored in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowbit.cli.output import print_json, print_table

SQNR_SHOWN = 3


def inspect_onnx(path: Path, candidates: tuple[str, ...], json_output: bool) -> None:
    """Print (or --json) the weights of the ONNX file at ``path``."""
    from lowbit.export.onnx.weights import onnx_weights
    from lowbit.formats.sqnr import sqnr_db
    from lowbit.recipes.sensitivity import outlier_ratio, parse_candidates

    parsed = parse_candidates(candidates)
    rows: list[dict[str, Any]] = []
    for w in onnx_weights(path):
        row: dict[str, Any] = {"name": w.name, "op": w.op, "stored_bits": w.stored_bits}
        if w.weight is not None:
            t = w.weight
            row.update(shape=list(t.shape), params=t.numel(), outlier_ratio=outlier_ratio(t),
                       weight_range=[t.min().item(), t.max().item()], sqnr_db={})  # fmt: skip
            for c in parsed:
                q = c.quantized(t) if c.name != "float" else None
                if q is not None:
                    row["sqnr_db"][c.name] = sqnr_db(t, q)
        rows.append(row)
    if json_output:
        print_json({"path": str(path), "candidates": [c.name for c in parsed], "weights": rows})
        return
    shown = [c.name for c in parsed if c.name != "float"][:SQNR_SHOWN]
    table = []
    for r in rows:
        if r["stored_bits"] is not None:
            stored = f"stored: {r['stored_bits']:.2f} bits/weight"
            table.append([r["name"], r["op"], "", "", stored, *([""] * len(shown))])
            continue
        sqnr = [f"{r['sqnr_db'][c]:.1f}" if c in r["sqnr_db"] else "-" for c in shown]
        table.append([r["name"], r["op"], "x".join(map(str, r["shape"])), f"{r['params']:,}",
                      f"outliers {r['outlier_ratio']:.1f}", *sqnr])  # fmt: skip
    head = ["weight", "op", "shape", "params", "", *(f"SQNR {c}" for c in shown)]
    print_table(f"{path}: weights", head, table, min_width=140)
