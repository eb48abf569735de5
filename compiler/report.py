"""A per-target benchmark report: JSON (schema "bitsmith-report", versioned), Markdown and HTML.

    report = reports[0]                     # from bitsmith.bench.bench or Artifact.report
    report.save("out/report")               # report.json, report.md, report.html
    report.gate_values()["p50_ms"]          # the numbers --fail-if gates read

The JSON schema is documented in docs/report_schema.md; SCHEMA_VERSION changes whenever a field
changes meaning or goes away (adding a field does not change it). The Markdown and the HTML page are
renderings of the same JSON; the HTML page (report_html.py) embeds its plots as PNG data, so it is
one self-contained file.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import OutputError, UsageError

SCHEMA = "bitsmith-report"
SCHEMA_VERSION = 1
NOT_COMPUTED = "not computed"

# gate name -> what it reads (docs/report_schema.md lists them for users)
GATE_FIELDS: dict[str, str] = {
    "metric_drop": "relative drop of the accuracy metric vs FP32 (accuracy.drop)",
    "metric": "the accuracy metric of the artifact (accuracy.value)",
    "p50_ms": "median latency, ms (latency.p50_ms; measured, or predicted where the target does not run here)",
    "p95_ms": "95th percentile latency, ms",
    "p99_ms": "99th percentile latency, ms",
    "mean_ms": "mean latency, ms",
    "predicted_ms": "the roofline model's latency, ms",
    "throughput": "samples per second (throughput.samples_per_s)",
    "size_mb": "artifact size on disk, MB (artifact.size_bytes / 1e6)",
    "weights_mb": "weights file size, MB",
    "peak_memory_mb": "peak resident memory of loading and running the artifact, MB (memory.peak_mb)",
    "min_sqnr_db": "the lowest per-layer SQNR vs FP32, dB",
    "speedup_vs_ort_fp32": "ONNX Runtime FP32 p50 / bitsmith p50",
    "speedup_vs_ort_int8": "ONNX Runtime INT8 p50 / bitsmith p50",
}


def _finite(x: Any) -> Any:
    """JSON has no inf/nan: they are written as strings ("inf", "-inf", "nan")."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


class Report:
    """One target's report. `data` is the JSON document (docs/report_schema.md)."""

    def __init__(self, data: dict[str, Any]) -> None:
        if data.get("schema") != SCHEMA:
            raise UsageError(f"not a bitsmith report (schema={data.get('schema')!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise UsageError(f"bitsmith report schema version {data.get('schema_version')!r} is not "
                             f"{SCHEMA_VERSION}; regenerate the report with this bitsmith")
        self.data = data

    @classmethod
    def create(cls, body: dict[str, Any]) -> "Report":
        header = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                  "generated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        return cls({**header, **body, "gates": body.get("gates", [])})

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        return cls(json.loads(Path(path).read_text()))

    @property
    def target(self) -> str:
        return str(self.data["target"]["name"])

    # -- gates ----------------------------------------------------------------------------------
    def gate_values(self) -> dict[str, float | None]:
        """The numbers gates compare (GATE_FIELDS); None where the report has no such number."""
        d = self.data
        latency, baselines = d["latency"], d.get("baselines", {})
        sqnrs = [r["sqnr_db"] for r in d.get("layers", []) if isinstance(r.get("sqnr_db"), (int, float))]

        def speedup(name: str) -> float | None:
            entry = baselines.get(name, {})
            return entry.get("bitsmith_speedup") if entry.get("status") == "measured" else None

        return {
            "metric_drop": d["accuracy"].get("drop"), "metric": d["accuracy"].get("value"),
            "p50_ms": latency.get("p50_ms"), "p95_ms": latency.get("p95_ms"), "p99_ms": latency.get("p99_ms"),
            "mean_ms": latency.get("mean_ms"), "predicted_ms": latency.get("predicted_ms"),
            "throughput": d["throughput"].get("samples_per_s"),
            "size_mb": d["artifact"]["size_bytes"] / 1e6, "weights_mb": d["artifact"]["weights_bytes"] / 1e6,
            "peak_memory_mb": d["memory"].get("peak_mb"),
            "min_sqnr_db": min(sqnrs) if sqnrs else None,
            "speedup_vs_ort_fp32": speedup("onnxruntime_fp32"), "speedup_vs_ort_int8": speedup("onnxruntime_int8"),
        }

    # -- renderings -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return _finite(self.data)

    def to_markdown(self) -> str:
        return render_markdown(self.data)

    def to_html(self) -> str:
        from .report_html import render_html

        return render_html(self.data)

    def save(self, directory: str | Path, formats: tuple[str, ...] = ("json", "md", "html")) -> dict[str, Path]:
        """Write report.json / report.md / report.html into `directory`; returns the paths written."""
        out = Path(directory)
        writers = {"json": lambda: json.dumps(self.to_json(), indent=1), "md": self.to_markdown, "html": self.to_html}
        written = {}
        try:
            out.mkdir(parents=True, exist_ok=True)
            for fmt in formats:
                path = out / f"report.{fmt}"
                path.write_text(writers[fmt]())
                written[fmt] = path
        except OSError as exc:
            raise OutputError(f"cannot write the report to {out}: {exc}; choose a writable directory") from None
        return written


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def fmt_num(x: Any, digits: int = 3, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and math.isinf(x):
        return "exact" if x > 0 else "-inf"
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.3g}{unit}"
    text = f"{x:,.{digits}f}" if abs(x) < 1e4 else f"{x:,.0f}"
    return f"{text}{unit}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def latency_label(latency: dict[str, Any]) -> str:
    if latency["source"] == "measured":
        return f"measured, {latency['runs']} runs, {latency.get('threads', '?')} threads"
    scaled = latency.get("predicted_scaled_ms")
    extra = f"; scaled by {latency['scaled_by']}'s measured/predicted: {fmt_num(scaled)} ms" if scaled else ""
    return f"PREDICTED by the {latency['model']}, not measured{extra}"


def _summary(d: dict[str, Any]) -> list[str]:
    lat, acc, mem, art = d["latency"], d["accuracy"], d["memory"], d["artifact"]
    accuracy = (f"{acc['metric']} {fmt_num(acc['value'], 4)} vs FP32 {fmt_num(acc['fp32'], 4)} "
                f"(drop {fmt_num(100 * acc['drop'], 2)}%)"
                + (f", {acc['samples']} samples" if acc.get("samples") else "") + f", from the {acc['source']}"
                if acc.get("status") == "measured" else acc.get("status", NOT_COMPUTED))
    peak = (f"{fmt_num(mem['peak_mb'], 1)} MB measured" if mem.get("peak_mb") is not None else mem.get("source", "—"))
    return _table(["quantity", "value"], [
        ["latency p50 / p95 / p99", f"{fmt_num(lat['p50_ms'])} / {fmt_num(lat['p95_ms'])} / {fmt_num(lat['p99_ms'])} ms "
                                    f"({latency_label(lat)})"],
        ["predicted latency (roofline)", f"{fmt_num(lat.get('predicted_ms'))} ms"],
        ["throughput", f"{fmt_num(d['throughput']['samples_per_s'], 1)} samples/s (batch {d['batch']}, "
                       f"{d['throughput']['source']})"],
        ["artifact size", f"{fmt_num(art['size_bytes'] / 1e6, 2)} MB (weights {fmt_num(art['weights_bytes'] / 1e6, 2)} MB)"],
        ["peak memory", f"{peak}; activations predicted {fmt_num(mem.get('predicted_peak_activation_mb'), 2)} MB"],
        ["accuracy", accuracy],
        ["precision", f"{art['precision']}" + (f" ({_recipe_text(art['recipe'])})" if art.get("recipe") else "")],
    ])


def _recipe_text(recipe: dict[str, Any]) -> str:
    parts = [f"weights {recipe.get('weights') or 'per layer (precision plan)'}",
             f"activations {recipe.get('activations') or 'float'}"]
    if recipe.get("algorithms"):
        parts.append("algorithms " + ", ".join(recipe["algorithms"]))
    if recipe.get("emulated"):
        execution = recipe.get("execution") or {}
        parts.append("emulated (no native kernel on the target) " + ", ".join(
            fmt + (f": {'; '.join(execution[fmt])}" if execution.get(fmt) else "") for fmt in recipe["emulated"]))
    return "; ".join(parts)


def _baselines(d: dict[str, Any]) -> list[str]:
    lat, acc = d["latency"], d["accuracy"]
    rows = [["bitsmith", fmt_num(lat["p50_ms"]), fmt_num(lat["p95_ms"]), fmt_num(lat["p99_ms"]),
             fmt_num(acc.get("value"), 4), "1.00", lat["source"]]]
    for name, entry in d.get("baselines", {}).items():
        if entry.get("status") != "measured":
            rows.append([name, "—", "—", "—", "—", "—", entry.get("status", "")])
            continue
        metric = entry.get("accuracy", {}).get("value")
        rows.append([name, fmt_num(entry["p50_ms"]), fmt_num(entry["p95_ms"]), fmt_num(entry["p99_ms"]),
                     fmt_num(metric, 4), fmt_num(entry["bitsmith_speedup"], 2), entry.get("notes") or "measured"])
    return _table(["runtime", "p50 ms", "p95 ms", "p99 ms", f"{acc.get('metric') or 'metric'} vs FP32",
                   "bitsmith speedup (its p50 / bitsmith p50)", "notes"], rows)


def _layers(d: dict[str, Any]) -> list[str]:
    rows = []
    for r in d.get("layers", []):
        sens = r.get("sensitivity")
        rows.append([f"`{r['name']}`", r["op"], r["kernel"], f"{r['weight_format']} / {r['activation_format']}",
                     f"{r['weight_bits']} / {r['activation_bits']}", fmt_num(r["params"], 0),
                     fmt_num(sens.get("omega"), 4) if sens else NOT_COMPUTED,
                     fmt_num(r.get("sqnr_db"), 1) if r.get("sqnr_db") is not None else NOT_COMPUTED,
                     fmt_num(r.get("predicted_ms"), 4), fmt_num(r.get("measured_ms"), 4),
                     (r.get("fallback") or "—") + f" ({r['device']})"])
    return _table(["layer", "op", "kernel", "format w / a", "bits w / a", "params", "sensitivity Ω", "SQNR dB",
                   "predicted ms", "measured ms", "fallback (device)"], rows)


def _plan_lines(plan: dict[str, Any]) -> list[str]:
    totals = plan.get("totals") or {}
    chosen: dict[str, int] = {}
    for choice in (plan.get("choices") or {}).values():
        key = str(choice.get("format") or "float")
        chosen[key] = chosen.get(key, 0) + 1
    lines = [f"Searched on target {plan.get('target')} among {', '.join(plan.get('candidates', []))} under "
             f"{plan.get('constraints') or 'the default budget'}: weights {fmt_num(totals.get('size_bytes', 0) / 1e6, 3)} MB, "
             f"predicted loss increase {fmt_num(plan.get('predicted_loss'), 5)}; formats chosen: "
             + ", ".join(f"{fmt} ×{n}" for fmt, n in sorted(chosen.items()))
             + f"; {len(plan.get('pareto', []))} points on the size / predicted-loss Pareto front.", ""]
    return lines + [f"- {note}" for note in plan.get("notes", [])] + ([""] if plan.get("notes") else [])


def render_markdown(d: dict[str, Any]) -> str:
    lines = [f"# {d['model']['name']} on {d['target']['name']}", "",
             f"{d['target']['description']}. Generated {d['generated']} by bitsmith {d['host']['bitsmith']} on "
             f"{d['host']['cpu']} ({d['host']['cpus']} CPUs, load average {d['host']['load_average']}); "
             f"target {'runs' if d['target']['runs_here'] else 'does not run'} on this machine.", "",
             "## Summary", "", *_summary(d), "",
             "## Side by side with ONNX Runtime", "", "Same feed, same thread count, runs alternating.", "",
             *_baselines(d), "", "## Layers", "",
             "Sensitivity Ω is HAWQ-V2's Tr(H)/n · ‖Q(W) − W‖² from the precision plan; SQNR is the layer "
             "output's signal-to-quantization-noise ratio against FP32 on the evaluation data; measured ms is "
             "the layer's kernel, timed through the VM's instrument hook.", "", *_layers(d), ""]
    if d.get("float_ops"):
        lines += ["Ops computed in float between dequantize / quantize borders: "
                  + ", ".join(f"{op} ×{n}" for op, n in d["float_ops"].items()), ""]
    kernels = [k for k in d.get("kernels", []) if k["kind"] == "kernel"][:10]
    if kernels:
        lines += ["## Slowest kernels", "", *_table(["kernel", "calls", "measured ms"],
                                                     [[f"`{k['symbol'][:80]}`", str(k["calls"]), fmt_num(k["measured_ms"], 4)]
                                                      for k in kernels]), ""]
    plan = d.get("precision_plan")
    lines += ["## Precision plan", ""]
    lines += (_plan_lines(plan) if plan else
              [f"{NOT_COMPUTED}: the artifact was compiled without constraints (no precision search).", ""])
    if d.get("gates"):
        lines += ["## Gates", "", *_table(["gate", "value", "result"],
                                          [[f"`{g['expression']}`", fmt_num(g["value"]), "FAILED" if g["failed"] else "passed"]
                                           for g in d["gates"]]), ""]
    return "\n".join(lines)
