"""Evidence for the foundation: every dev zoo model imported, run on the IR interpreter and compiled
for this CPU, compared with ONNX Runtime FP32 on real inputs, and timed side by side.

Writes docs/results/zoo_import.json and docs/results/zoo_import.md. Re-run: `make results`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import bitsmith
from bitsmith import targets, zoo
from bitsmith.errors import BitsmithError
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import run_graph
from bitsmith.measure import max_rel_err, median, ort_run, ort_session, time_alternating

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def measure(name: str, target: targets.Target, samples: int, repeat: int, workdir: Path) -> dict:
    shapes = zoo.input_shapes(name)
    try:
        graph = import_onnx(zoo.onnx_path(name), shapes)
    except BitsmithError as exc:
        return {"imports": False, "error": str(exc)}
    session = ort_session(zoo.onnx_path(name), threads=target.cores)
    start = time.perf_counter()
    artifact = bitsmith.compile(graph, target, output_dir=workdir / name, quiet=True)
    compile_s = time.perf_counter() - start
    feeds = zoo.inputs(name, samples)
    ir_err = tvm_err = 0.0
    for f in feeds:
        ref = ort_run(session, f)
        ir_err = max(ir_err, max_rel_err(run_graph(graph, f), ref))
        tvm_err = max(tvm_err, max_rel_err(artifact.run(f), ref))
    times = time_alternating({"bitsmith": lambda: artifact.run(feeds[0]), "ort": lambda: ort_run(session, feeds[0])},
                             repeat=repeat, warmup=3)
    ours, ort = median(times["bitsmith"]), median(times["ort"])
    return {
        "imports": True, "inputs": {k: list(v) for k, v in shapes.items()}, "nodes": len(graph.nodes),
        "samples": len(feeds), "ir_vs_ort_max_rel_err": ir_err, "tvm_vs_ort_max_rel_err": tvm_err,
        "ort_fp32_ms": ort, "bitsmith_fp32_ms": ours, "bitsmith_over_ort": ours / ort,
        "compile_seconds": round(compile_s, 2),
    }


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def render(doc: dict) -> str:
    lines = [
        "# Zoo import: IR interpreter and x86 FP32 artifact vs ONNX Runtime",
        "",
        f"Target `{doc['target']}` on {doc['cpu']}, {doc['threads']} threads for both, {doc['repeat']} alternating "
        f"runs (medians), batch 1, real inputs; 1-minute load average {doc['load_average_1min'][0]} before, "
        f"{doc['load_average_1min'][1]} after. Written by `scripts/zoo_import.py`.",
        "",
        "| model | imports | IR vs ORT (max rel) | TVM vs ORT (max rel) | ORT FP32 ms | bitsmith FP32 ms | ratio | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in doc["models"].items():
        if not r["imports"]:
            lines.append(f"| {name} | no: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {name} | yes | {r['ir_vs_ort_max_rel_err']:.1e} | {r['tvm_vs_ort_max_rel_err']:.1e} | "
                     f"{r['ort_fp32_ms']:.2f} | {r['bitsmith_fp32_ms']:.2f} | {r['bitsmith_over_ort']:.1f} | "
                     f"{r['compile_seconds']} |")
    lines += ["", "FP32 speed is not this issue's goal: the x86 schedules issue owns it. The ratio is "
              "bitsmith / ORT latency (lower is better).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--models", nargs="*", default=list(zoo.ZOO_MODELS))
    args = parser.parse_args()
    target = targets.load("host")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bitsmith-zoo-") as tmp:
        models = {name: measure(name, target, args.samples, args.repeat, Path(tmp)) for name in args.models}
    doc = {"target": target.name, "threads": target.cores, "repeat": args.repeat, "cpu": cpu_name(),
           "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
           "bitsmith_version": bitsmith.__version__, "models": models}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "zoo_import.json").write_text(json.dumps(doc, indent=1))
    (RESULTS / "zoo_import.md").write_text(render(doc))
    print(render(doc))


if __name__ == "__main__":
    main()
