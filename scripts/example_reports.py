"""Example benchmark reports: MobileNetV2 and MiniLM-L6 compiled for the x86 targets, on real data.

For each model `bitsmith.bench` compiles the FP32 ONNX model for x86-avx2 and x86-avx512 under a
size budget (the precision search picks INT8 or FP32 per layer; its sensitivities and Pareto front go
into the report), then measures each artifact: latency where the target runs on this machine, else
the roofline prediction (labelled), size, peak memory, accuracy against FP32 on the evaluation split,
the per-layer table, and ONNX Runtime FP32 / INT8 side by side.

Writes docs/examples/<model>/<target>/report.{json,md,html} and docs/examples/README.md. Slow
(tens of minutes on 2 cores). Re-run: `.venv/bin/python scripts/example_reports.py`; `--render-only`
re-renders the Markdown and HTML from the JSON after a change of the renderer.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import bitsmith
from bitsmith import zoo
from bitsmith.measure import cosine, mean_pooled, ort_run, ort_session

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
TARGETS = ("x86-avx2", "x86-avx512")


@dataclass
class Example:
    zoo_name: str
    calib_feeds: int
    eval_feeds: int
    size_mb: float  # the budget: room for a few sensitive layers in FP32 above all-INT8


EXAMPLES_BY_DIR = {
    # all-INT8 weights: 3.5 MB (MobileNetV2); 58 MB (MiniLM: its 47 MB of FP32 token embeddings are a
    # lookup table, not a weighted layer)
    "mobilenet_v2": Example("mobilenet_v2", 16, 64, size_mb=4.6),
    "minilm": Example("minilm_l6", 8, 32, size_mb=62.0),
}


def embedding_cosine(evaluation: list[dict[str, np.ndarray]]) -> Callable[[Callable], float]:
    """MiniLM's metric: cosine of the mean-pooled (attention-masked) sentence embeddings with FP32's."""
    session = ort_session(zoo.onnx_path("minilm_l6"), threads=2)
    reference = [mean_pooled(ort_run(session, f)["last_hidden_state"], f["attention_mask"]) for f in evaluation]

    def embedding_cosine_vs_fp32(run: Callable) -> float:
        sims = [cosine(mean_pooled(run(f)["last_hidden_state"], f["attention_mask"]), ref)
                for f, ref in zip(evaluation, reference)]
        return float(np.concatenate(sims).mean())

    return embedding_cosine_vs_fp32


def bench_example(name: str, example: Example, repeat: int, workdir: Path) -> list[Any]:
    calibration = zoo.inputs(example.zoo_name, example.calib_feeds, split="calib")
    evaluation = zoo.inputs(example.zoo_name, example.eval_feeds, split="eval")
    eval_fn = embedding_cosine(evaluation) if example.zoo_name == "minilm_l6" else None
    start = time.perf_counter()
    reports = bitsmith.bench(zoo.onnx_path(example.zoo_name), list(TARGETS), data=evaluation,
                             calibration=calibration, constraints=bitsmith.Constraints(size_mb=example.size_mb),
                             eval_fn=eval_fn, input_shapes=zoo.input_shapes(example.zoo_name),
                             output_dir=workdir / name, settings=bitsmith.BenchSettings(repeat=repeat))
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    for report in reports:
        report.data["artifact"]["path"] = f"(temporary) {Path(report.data['artifact']['path']).name}"
        report.save(EXAMPLES / name / report.target)
    return reports


def index(rows: list[tuple[str, Any]]) -> str:
    lines = ["# Example reports", "",
             "Written by `scripts/example_reports.py` (re-run it to regenerate). Each model is compiled for "
             "both x86 targets under a size budget; latency is measured where the target runs on the "
             "machine that wrote the report and predicted by the roofline model elsewhere (the report says "
             "which). Schema: [../report_schema.md](../report_schema.md).", "",
             "| model | target | latency p50 ms | source | ORT FP32 p50 ms | ORT INT8 p50 ms | size MB | metric | value |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, report in rows:
        d = report.data
        base = d["baselines"]
        ort = [f"{base[k]['p50_ms']:.3f}" if base.get(k, {}).get("status") == "measured" else "—"
               for k in ("onnxruntime_fp32", "onnxruntime_int8")]
        link = f"[{name}]({name}/{report.target}/report.md)"
        lines.append(f"| {link} | {report.target} | {d['latency']['p50_ms']:.3f} | {d['latency']['source']} | "
                     f"{ort[0]} | {ort[1]} | {d['artifact']['size_bytes'] / 1e6:.2f} | {d['accuracy']['metric']} | "
                     f"{d['accuracy']['value']:.4f} |")
    lines += ["", f"Host load average when written: {os.getloadavg()}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=list(EXAMPLES_BY_DIR))
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: re-render report.md / report.html from the report.json files")
    args = parser.parse_args()
    if args.render_only:
        for path in sorted(EXAMPLES.glob("*/*/report.json")):
            bitsmith.Report.load(path).save(path.parent, formats=("md", "html"))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bitsmith-examples-") as tmp:
        for name in args.models:
            rows += [(name, r) for r in bench_example(name, EXAMPLES_BY_DIR[name], args.repeat, Path(tmp))]
    existing = {(n, t.name) for n in EXAMPLES_BY_DIR for t in (EXAMPLES / n).glob("*") if t.is_dir()}
    done = {(n, r.target) for n, r in rows}
    rows += [(n, bitsmith.Report.load(EXAMPLES / n / t / "report.json")) for n, t in sorted(existing - done)]
    rows.sort(key=lambda row: (row[0], row[1].target))
    (EXAMPLES / "README.md").write_text(index(rows))
    print(index(rows))


if __name__ == "__main__":
    main()
