"""`make demo`: compile MobileNetV2 (real ImageNet weights) for this CPU and write a short report.

Writes <output>/mobilenet_v2/ (the artifact) and <output>/report.md + report.json: the artifact's
verified hashes, its outputs against ONNX Runtime FP32 on real photos, and latency side by side.
Exits non-zero if the artifact's outputs do not match ONNX Runtime within 1e-4 relative.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import bitsmith
from bitsmith import targets, zoo
from bitsmith.measure import max_rel_err, median, ort_run, ort_session, time_alternating

MODEL = "mobilenet_v2"
TOLERANCE = 1e-4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="demo-out")
    parser.add_argument("--images", type=int, default=16, help="real photo crops to compare on")
    args = parser.parse_args()
    out = Path(args.output)

    target = targets.load("host")
    start = time.perf_counter()
    artifact = bitsmith.compile(zoo.onnx_path(MODEL), target, input_shapes=zoo.input_shapes(MODEL),
                                output_dir=out / MODEL)
    compile_s = time.perf_counter() - start
    artifact = bitsmith.Artifact.load(artifact.path)  # re-verifies every SHA-256 before loading code

    session = ort_session(zoo.onnx_path(MODEL), threads=target.cores)
    feeds = zoo.inputs(MODEL, args.images)
    errors, agree = [], 0
    for f in feeds:
        ours, ref = artifact.run(f), ort_run(session, f)
        errors.append(max_rel_err(ours, ref))
        agree += int(np.argmax(ours["logits"]) == np.argmax(ref["logits"]))
    times = time_alternating({"bitsmith": lambda: artifact.run(feeds[0]), "ort": lambda: ort_run(session, feeds[0])},
                             repeat=20, warmup=3)

    report = {
        "model": MODEL, "target": target.name, "artifact": str(artifact.path),
        "artifact_bytes": artifact.size_bytes(), "hashes_verified": True, "compile_seconds": round(compile_s, 2),
        "images": len(feeds), "max_rel_err_vs_ort": max(errors), "top1_agreement_vs_ort": agree / len(feeds),
        "bitsmith_fp32_ms": median(times["bitsmith"]), "ort_fp32_ms": median(times["ort"]),
    }
    report["latency_ratio_bitsmith_over_ort"] = report["bitsmith_fp32_ms"] / report["ort_fp32_ms"]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render(report))
    print(render(report))
    return 0 if report["max_rel_err_vs_ort"] < TOLERANCE else 1


def render(r: dict) -> str:
    return "\n".join([
        f"# bitsmith demo: {r['model']} on {r['target']}",
        "",
        f"- artifact: `{r['artifact']}` ({r['artifact_bytes'] / 1e6:.2f} MB), every file's SHA-256 verified on load",
        f"- compile time: {r['compile_seconds']} s",
        f"- outputs vs ONNX Runtime FP32 on {r['images']} real photo crops: max relative error "
        f"{r['max_rel_err_vs_ort']:.2e} (tolerance {TOLERANCE:g}), top-1 agreement {r['top1_agreement_vs_ort']:.0%}",
        f"- latency, batch 1, median of 20 alternating runs: bitsmith FP32 {r['bitsmith_fp32_ms']:.2f} ms, "
        f"ONNX Runtime FP32 {r['ort_fp32_ms']:.2f} ms (ratio {r['latency_ratio_bitsmith_over_ort']:.2f})",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
