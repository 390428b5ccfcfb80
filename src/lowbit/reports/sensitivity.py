"""The per-layer sensitivity report as a self-contained HTML page: a summary, sensitivity
bars (estimated and measured), per-layer SQNR of every candidate format, and weight
histograms of the most sensitive layers with each observer's clipping range drawn on.

Every plot is an inline PNG, so the page reads offline and from an e-mail attachment.
"""

from __future__ import annotations

import html
import math
from typing import Any

import torch

from lowbit.observers.registry import make_observer
from lowbit.reports.html import figure_png, img, page, pyplot, table

# The clipping ranges drawn on the histograms: observer name, options, line style.
HISTOGRAM_OBSERVERS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("minmax", {}, "-"),
    ("percentile", {"percentile": 99.9}, "--"),
    ("mse", {"bits": 4}, ":"),
)
HISTOGRAM_LAYERS = 6  # the most sensitive layers get a histogram


def reference_candidate(doc: dict[str, Any]) -> str:
    """The candidate sensitivities are ranked by: the measured one, else the smallest
    integer format every layer can take."""
    for layer in doc["layers"]:
        for name, option in layer["options"].items():
            if option["measured"] is not None:
                return name
    common = set.intersection(*(set(layer["options"]) for layer in doc["layers"]))
    sized = [(sum(layer["options"][c]["bytes"] for layer in doc["layers"]), c) for c in common]
    return min((s, c) for s, c in sized if c != "float")[1] if len(sized) > 1 else sized[0][1]


def _sensitivity_plot(doc: dict[str, Any], reference: str) -> bytes:
    plt = pyplot()
    layers = doc["layers"]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    x = range(len(layers))
    estimate = [layer["options"].get(reference, {}).get("estimate") or 0.0 for layer in layers]
    ax.bar(x, estimate, color="#4c72b0", label=f"estimated ({reference})")
    measured = [layer["options"].get(reference, {}).get("measured") for layer in layers]
    points = [(i, m) for i, m in enumerate(measured) if m is not None]
    if points:
        ax.scatter(*zip(*points, strict=True), color="#dd8452", s=12, zorder=3, label="measured")
    ax.set_yscale("log")
    ax.set_xlabel("layer (model order)")
    ax.set_ylabel("output change D" + (" (KL, nats)" if doc["distance"] == "kl" else ""))
    ax.set_title(f"Sensitivity: the output change with only that layer in {reference}")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return figure_png(fig)


def _sqnr_plot(doc: dict[str, Any]) -> bytes:
    plt = pyplot()
    layers = doc["layers"]
    names = [c for c in doc["candidates"] if c != "float"]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        values = [
            (i, layer["options"][name]["sqnr_db"])
            for i, layer in enumerate(layers)
            if layer["options"].get(name, {}).get("sqnr_db") is not None
        ]
        if values:
            xs, ys = zip(*values, strict=True)
            ax.bar([x - 0.4 + (k + 0.5) * width for x in xs], ys, width=width, label=name)
    ax.set_xlabel("layer (model order)")
    ax.set_ylabel("weight SQNR (dB)")
    ax.set_title("Weight SQNR of each candidate format, per layer")
    ax.legend(fontsize=8, ncol=min(len(names), 6))
    ax.grid(True, axis="y", alpha=0.3)
    return figure_png(fig)


def _histogram(name: str, weight: torch.Tensor) -> bytes:
    plt = pyplot()
    values = weight.detach().float().flatten()
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.hist(values.numpy(), bins=120, color="#999999", log=True)
    for observer, options, style in HISTOGRAM_OBSERVERS:
        obs = make_observer(observer, **options)
        obs.observe(values)
        lo, hi = (float(v) for v in obs.clip_range(symmetric=True))
        label = observer + "".join(f" {v}" for v in options.values())
        ax.axvline(hi, linestyle=style, color="#c44e52", label=f"{label}: ±{hi:.3g}")
        ax.axvline(lo, linestyle=style, color="#c44e52")
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=7)
    return figure_png(fig)


def _range(pair: list[float] | None) -> str:
    return "-" if pair is None else f"{pair[0]:.3g} .. {pair[1]:.3g}"


def _sqnr_cell(options: dict[str, Any], name: str) -> str:
    if name not in options:
        return "-"  # the format does not apply to this layer's shape
    value = options[name]["sqnr_db"]
    return "inf" if value is None else f"{value:.1f}"


def _layer_table(doc: dict[str, Any], reference: str) -> str:
    candidates = list(doc["candidates"])
    head = ["layer", "kind", "shape", "params", "weight range", "outliers (max/mean)",
            "input range", *(f"SQNR {c}" for c in candidates), f"D est. {reference}",
            f"D measured {reference}"]  # fmt: skip
    rows = []
    for layer in doc["layers"]:
        opts = layer["options"]
        ref = opts.get(reference, {})
        rows.append(
            [layer["name"], layer["kind"], "x".join(map(str, layer["shape"])),
             f"{layer['params']:,}", _range(layer["weight_range"]),
             f"{layer['outlier_ratio']:.1f}", _range(layer["input_range"]),
             *(_sqnr_cell(opts, c) for c in candidates),
             _number(ref.get("estimate")), _number(ref.get("measured"))]
        )  # fmt: skip
    return table(head, rows)


def _number(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g}"


def sensitivity_html(
    title: str, doc: dict[str, Any], weights: dict[str, torch.Tensor] | None = None
) -> str:
    """The page for a sensitivity document (``SensitivityReport.to_dict()``); ``weights``
    (layer name -> weight) get histograms, the most sensitive HISTOGRAM_LAYERS of them."""
    reference = reference_candidate(doc)
    distance = {"kl": "the mean KL divergence per position"}.get(
        doc["distance"], "the relative squared error"
    )
    summary = (
        f"<p>{len(doc['layers'])} layers, {doc['params']:,} parameters; output change D is "
        f"{distance} of the model's output; candidates: "
        f"{html.escape(', '.join(doc['candidates']))}. "
        f"Estimated D: diagonal Fisher / Gauss-Newton weighting of each layer's rounding "
        f"error; measured D: the model run with only that layer quantized.</p>"
    )  # fmt: skip
    parts = [
        summary,
        "<h2>Sensitivity</h2>",
        img(_sensitivity_plot(doc, reference), "sensitivity per layer"),
        "<h2>Weight SQNR per format</h2>",
        img(_sqnr_plot(doc), "SQNR per layer"),
    ]
    if weights:
        ranked = sorted(
            (layer for layer in doc["layers"] if layer["name"] in weights),
            key=lambda layer: -(layer["options"].get(reference, {}).get("estimate") or 0.0),
        )[:HISTOGRAM_LAYERS]
        parts.append("<h2>Weight histograms of the most sensitive layers, clipping ranges</h2>")
        for layer in ranked:
            name = layer["name"]
            parts.append(img(_histogram(name, weights[name]), f"histogram {name}"))
    parts += ["<h2>Every layer</h2>", _layer_table(doc, reference)]
    return page(title, "".join(parts))
