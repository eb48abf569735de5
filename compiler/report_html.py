"""The HTML rendering of a report: one self-contained page, plots embedded as base64 PNG (matplotlib).

Plots: per-layer bits and format; sensitivity vs bits (from the precision plan); the latency
breakdown (per layer, predicted and measured; where the measured time goes; bitsmith next to ONNX
Runtime); the Pareto front of the precision search. A plot whose data the report lacks is replaced by
a line saying "not computed" and why.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .report import NOT_COMPUTED, fmt_num, latency_label, render_markdown  # noqa: E402

FORMAT_COLOURS = {"fp32": "#7f7f7f", "int8": "#1f77b4", "uint8": "#1f77b4", "int4": "#ff7f0e", "uint4": "#ff7f0e",
                  "int16": "#2ca02c", "fp8_e4m3": "#d62728", "fp8_e5m2": "#9467bd", "fp4_e2m1": "#8c564b",
                  "mxfp8": "#e377c2", "mxfp4": "#bcbd22", "nvfp4": "#17becf"}


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(title: str, png: str) -> str:
    return (f'<figure><img class="plot" alt="{html.escape(title)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>")


def _missing(title: str, why: str) -> str:
    return f'<p class="missing"><b>{html.escape(title)}</b>: {NOT_COMPUTED} ({html.escape(why)}).</p>'


def plot_bits(layers: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(10, 3.2))
    index = range(len(layers))
    colours = [FORMAT_COLOURS.get(r["weight_format"], "#333333") for r in layers]
    ax.bar(index, [r["weight_bits"] for r in layers], color=colours)
    ax.plot(index, [r["activation_bits"] for r in layers], "k_", markersize=8, label="activation bits")
    for fmt in sorted({r["weight_format"] for r in layers}):
        ax.bar([0], [0], color=FORMAT_COLOURS.get(fmt, "#333333"), label=f"weights {fmt}")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("bits")
    ax.set_title("Per-layer bits and format")
    ax.legend(fontsize=7, ncol=4, loc="upper right")
    return _png(fig)


def plot_sensitivity(layers: list[dict[str, Any]]) -> str:
    rows = [r for r in layers if r.get("sensitivity") and r["sensitivity"].get("trace") is not None]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.scatter([r["weight_bits"] for r in rows], [r["sensitivity"]["trace"] for r in rows],
               c=[FORMAT_COLOURS.get(r["weight_format"], "#333333") for r in rows])
    ax.set_yscale("log")
    ax.set_xlabel("weight bits chosen")
    ax.set_ylabel("Hessian trace / n (Hutchinson)")
    ax.set_title("Sensitivity vs bits")
    return _png(fig)


def plot_layer_latency(layers: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(10, 3.2))
    index = list(range(len(layers)))
    ax.bar([i - 0.2 for i in index], [r.get("predicted_ms") or 0 for r in layers], width=0.4, label="predicted")
    if any(r.get("measured_ms") is not None for r in layers):
        ax.bar([i + 0.2 for i in index], [r.get("measured_ms") or 0 for r in layers], width=0.4, label="measured")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("ms")
    ax.set_title("Per-layer latency")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_breakdown(d: dict[str, Any]) -> str:
    """Where the time goes (layers, other kernels, VM) and bitsmith next to ONNX Runtime."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    latency = d["latency"]
    kernels = d.get("kernels", [])
    layer_ms = sum(r.get("measured_ms") or 0 for r in d["layers"]) if kernels else sum(
        r.get("predicted_ms") or 0 for r in d["layers"])
    kernel_ms = sum(k["measured_ms"] for k in kernels if k["kind"] == "kernel")
    vm_ms = sum(k["measured_ms"] for k in kernels if k["kind"] == "vm")
    if kernels:
        parts = {"weighted layers": layer_ms, "other kernels": max(kernel_ms - layer_ms, 0.0), "VM built-ins": vm_ms}
        left.set_title("Measured time by kind (instrumented run)")
    else:
        parts = {"weighted layers": layer_ms, "other ops": max((latency.get("predicted_ms") or 0) - layer_ms, 0.0)}
        left.set_title("Predicted time by kind (roofline)")
    bottom = 0.0
    for name, ms in parts.items():
        left.bar([0], [ms], bottom=bottom, label=f"{name}: {ms:.3f} ms")
        bottom += ms
    left.set_xticks([])
    left.set_ylabel("ms")
    left.legend(fontsize=8)
    names, p50s = ["bitsmith"], [latency.get("p50_ms") or 0]
    for name, entry in d.get("baselines", {}).items():
        if entry.get("status") == "measured":
            names.append(name.replace("onnxruntime_", "ORT "))
            p50s.append(entry["p50_ms"])
    right.bar(names, p50s, color=["#1f77b4"] + ["#7f7f7f"] * (len(names) - 1))
    right.set_ylabel("p50 ms")
    right.set_title("p50 latency" + ("" if latency["source"] == "measured" else " (predicted)"))
    return _png(fig)


def plot_pareto(plan: dict[str, Any]) -> str:
    points = plan.get("pareto", [])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    sizes = [p.get("size_bytes", 0) / 1e6 for p in points]
    losses = [p.get("predicted_loss", 0) for p in points]
    ax.plot(sizes, losses, "o-", markersize=4, label="Pareto front")
    totals = plan.get("totals") or {}
    if "size_bytes" in totals and plan.get("predicted_loss") is not None:
        ax.plot([totals["size_bytes"] / 1e6], [plan["predicted_loss"]], "r*", markersize=12, label="chosen")
    ax.set_xlabel("weight size, MB")
    ax.set_ylabel("predicted loss increase")
    ax.set_title("Precision search: Pareto front")
    ax.legend(fontsize=8)
    return _png(fig)


def plots(d: dict[str, Any]) -> list[str]:
    """The report's figures as HTML fragments, in page order."""
    layers = d.get("layers", [])
    out = [_img("Per-layer bits and format", plot_bits(layers)) if layers else
           _missing("Per-layer bits and format", "the artifact has no graph.json")]
    if any(r.get("sensitivity") for r in layers):
        out.append(_img("Sensitivity vs bits", plot_sensitivity(layers)))
    else:
        out.append(_missing("Sensitivity vs bits", "no precision plan: compile with constraints to run the search"))
    out.append(_img("Latency breakdown", plot_breakdown(d)))
    if layers:
        out.append(_img("Per-layer latency", plot_layer_latency(layers)))
    plan = d.get("precision_plan")
    out.append(_img("Pareto front", plot_pareto(plan)) if plan and plan.get("pareto") else
               _missing("Pareto front", "no precision plan: compile with constraints to run the search"))
    return out


STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
th { background: #eee; }
figure { display: inline-block; margin: 0.5em; }
img.plot { max-width: 100%; }
.missing { color: #8a5a00; }
.predicted { color: #b00; font-weight: bold; }
pre { font-size: 11px; white-space: pre-wrap; }
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _markdown_tables(markdown: str) -> str:
    """The Markdown rendering turned into HTML: headings, paragraphs and pipe tables."""
    out: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            out.append(_html_table(table[0], table[2:] if len(table) > 1 else []))
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split("|")]
            table.append(cells)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def render_html(d: dict[str, Any]) -> str:
    title = f"{d['model']['name']} on {d['target']['name']}"
    label = latency_label(d["latency"])
    banner = (f'<p class="predicted">Latency is {html.escape(label)}.</p>' if d["latency"]["source"] != "measured"
              else f"<p>Latency {html.escape(label)}: p50 {fmt_num(d['latency']['p50_ms'])} ms.</p>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>bitsmith report: {html.escape(title)}</title><style>{STYLE}</style></head><body>",
        banner, _markdown_tables(render_markdown(d)), "<h2>Plots</h2>", *plots(d), "</body></html>",
    ])
