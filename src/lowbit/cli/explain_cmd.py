"""``lowbit explain``: walk through the quantization arithmetic for a few numbers."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from lowbit.cli.output import print_json, print_table
from lowbit.formats.explain import explain_values


def _short(values: list) -> str:
    return (
        "[" + ", ".join(str(round(v, 2)) if isinstance(v, float) else str(v) for v in values) + "]"
    )


def explain(
    values: Annotated[
        list[float], typer.Argument(help="Numbers to quantize (put negative numbers after --).")
    ],
    bits: Annotated[int, typer.Option(help="Bits per code (integer formats), 1..8.")] = 8,
    format: Annotated[
        str,
        typer.Option(
            "--format", help="int, nf4, binary, ternary, fp8_e4m3, fp8_e5m2, fp16 or bf16."
        ),
    ] = "int",
    asymmetric: Annotated[
        bool,
        typer.Option(
            "--asymmetric", help="Asymmetric: a clip range [min, max] instead of [-L, L]."
        ),
    ] = False,
    zero_point: Annotated[
        bool,
        typer.Option(
            "--zero-point",
            help="Asymmetric with an integer zero point (x' = s·(q − z)) instead "
            "of the float offset form (x' = s·q + min).",
        ),
    ] = False,
    full_range: Annotated[
        bool,
        typer.Option(
            "--full-range",
            help="Symmetric over all codes -2^(b-1)..2^(b-1)-1 instead of ±(2^(b-1)-1).",
        ),
    ] = False,
    clip_range: Annotated[
        float | None,
        typer.Option("--range", help="Symmetric clip range L: values are clipped to [-L, L]."),
    ] = None,
    clip_min: Annotated[float | None, typer.Option("--min", help="Clip range minimum.")] = None,
    clip_max: Annotated[float | None, typer.Option("--max", help="Clip range maximum.")] = None,
    rounding: Annotated[
        str, typer.Option(help="Tie rule: half_even (default), half_away or half_up.")
    ] = "half_even",
    json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Show scale, clipping, rounding, codes, dequantized values and error, step by step.

    Example: lowbit explain --bits 3 --range 2 1.1 2.4 -0.3 0.8
    """
    result = explain_values(
        values,
        format=format,
        bits=bits,
        symmetric=not (asymmetric or zero_point),
        restricted=not full_range,
        form="zero_point" if zero_point else "offset",
        clip_range=clip_range,
        clip_min=clip_min,
        clip_max=clip_max,
        rounding=rounding,  # type: ignore[arg-type]
    )
    if json:
        print_json(result.to_json())
        return
    console = Console()
    console.print(f"[bold]{result.format}[/bold] ({result.bits} bits)")
    for line in result.formulas:
        console.print(f"  {line}")
    columns = list(result.columns)
    rows = [
        [f"{v:.4g}" if isinstance(v, float) else v for v in row]
        for row in zip(*result.columns.values(), strict=True)
    ]
    print_table("step by step, one row per value", columns, rows)
    console.print(f"s = {result.params['scale']:.3g}")
    for key in ("zero_point", "offset"):
        if key in result.params:
            console.print(f"{key.replace('_', ' ')} = {result.params[key]:.4g}")
    console.print(f"codes = {_short(result.columns['q'])}")
    console.print(f"dequantized = {_short(result.columns['dequantized'])}")
    summary = result.summary
    console.print(
        f"max |error| = {summary['max_abs_error']:.4g}, SQNR = {summary['sqnr_db']:.1f} dB"
    )
