"""Evidence for the integer-only lowering and the low-precision formats, per model and format.

For every model (default: the zoo models the lowering covers) this script
  - quantizes the FP32 graph with the recipe (default w8a8) on real calibration inputs and lowers it
    to integer ops (passes/lower_integer.py): the integer reference, run by bitsmith.interpreter;
  - compiles the same model with bitsmith.compile(recipe=..., calibration=...) for this CPU;
  - compares the artifact's outputs with the reference's on real evaluation inputs, byte for byte;
  - runs the integer-exact Simulator (`Simulator(graph, integer_exact=True)`) and reports its largest
    difference from the integer reference (`sim_vs_integer_max_abs_diff`, 0 when bit-exact);
  - finds where the default fake-quant Simulator departs from the integer reference: every integer op
    is fed the reference's own inputs, and its fake-quant result is compared with the reference's
    codes (per lowered op kind: how many codes differ, by how many steps at most);
  - reports the fidelity of the integer model against the fake-quant Simulator and FP32 (max abs diff
    relative to the FP32 output range, top-1 agreement, accuracy on labelled data, and for a text
    detector the IoU of its text masks), graph sizes
    (ops before and after lowering, Quantize/Dequantize nodes left), artifact and ONNX bytes, and the
    latency of the W8A8 and FP32 artifacts (same thread count, median of alternating runs);
  - then, per format (FORMAT_RECIPES: w8a8 and the low-precision recipes), compiles the model with that
    recipe and compares the artifact on fewer evaluation inputs (FORMAT_EVAL_BATCHES) with its reference:
    the integer reference (recipes with integer activations and integer kernels: bit-exact expected) or
    the fake-quant Simulator (float formats: equal within float rounding, see FLOAT_ROUNDING), naming which; with
    the graph sizes, the weight bytes as stored (4-bit codes two per byte) and the formats emulated on
    this target.

Writes docs/results/integer_parity.json and .md:
    .venv/bin/python scripts/integer_parity.py [--models mtcnn_rnet ...] [--recipe w8a8] [--formats w4a8 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import bitsmith
from bitsmith import zoo
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import execute, run_graph
from bitsmith.ir import Graph
from bitsmith.measure import median, time_alternating
from bitsmith.passes.lower_integer import lower_integer
from bitsmith.passes.quant_points import WIDE_FORMAT
from bitsmith.pipeline import Compiled, compile_traced, resolve_recipe, versions
from bitsmith.quantize import quantize
from bitsmith.simulate import Simulator

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
# model -> (batch, calibration batches, evaluation batches)
PLAN = {"mtcnn_rnet": (50, 2, 4), "mtcnn_onet": (50, 2, 4), "mobilenet_v2": (8, 2, 4), "ppocr_cls": (16, 2, 4),
        "ppocr_det": (1, 2, 4), "minilm_l6": (8, 2, 4), "magika": (16, 2, 4)}
# the output holding class scores (top-1 agreement, accuracy on labelled data)
CLASS_OUTPUT = {"mtcnn_rnet": "prob", "mtcnn_onet": "prob", "mobilenet_v2": "logits",
                "ppocr_cls": "save_infer_model/scale_0.tmp_1", "magika": "target_label"}
# the output holding a text probability map (IoU of the text masks, probability > TEXT_THRESHOLD)
MASK_OUTPUT = {"ppocr_det": "sigmoid_0.tmp_0"}
TEXT_THRESHOLD = 0.3  # PP-OCR's DB post-processing threshold
# models whose class output has labels to measure accuracy with (zoo.labels)
LABELLED = ("mtcnn_rnet", "mtcnn_onet", "ppocr_cls")
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "QuantizeFloat", "DequantizeFloat")
LOAD_OPS = ("DequantizeWeight", "UnpackCodes")  # weight decoding: run once, when the weights are loaded
# the per-format table: recipes (bitsmith.PRESETS) and how many evaluation batches each gets
FORMAT_RECIPES = ("w8a8", "w4a8", "fp8_e4m3", "mxfp4_weights", "nvfp4_weights", "fp4_weights", "w8_weight_only")
FORMAT_EVAL_BATCHES = 2
# Float formats against the Simulator (tests/test_lowprecision.py explains and measures): both run the same
# float ops on bit-identical weights and differ in float32 rounding only: the order of sums, and the last
# ulp of transcendental functions (measured on 32,768 values: TVM's GELU 8.6e-7 from float64 against torch's
# 4.5e-7, tanh 2.7e-7 against 3e-8; LayerNorm, Softmax, Exp, Erf and 1/sqrt as accurate as torch).
# "Equal within float rounding" is measured against the computation itself: the Simulator run in float64
# (Simulator(float64=True)) is the nearly exact value, and its distance from the float32 Simulator is how
# far float32 rounding moves this model's outputs on these inputs. The artifact is within tolerance when it
# is within FLOAT_ROUNDING of the FP32 output range of the Simulator, or within FLOAT_NOISE_FACTOR (an order
# of magnitude) of the float32 Simulator's distance from the float64 computation. Deep nets and FP8
# activations need the second: a rounding difference can move an activation across an FP8 rounding boundary
# (one FP8 code), and the following layers carry it to that sample's outputs; the float32 Simulator crosses
# such boundaries against float64 just as the artifact does (measured: MiniLM's FP8 outputs move by 11% of
# their range between float32 and float64). The kernels' own rounding (QuantizeFloat's ties, subnormals and
# saturation) is tested bit for bit on sweeps (tests/test_lowprecision.py). Such a crossing is a rare event:
# on a shallow net the float32 Simulator may happen to cross none against float64 on the samples where the
# artifact crosses one (onet: 2 of 100 samples). So FP8 rows are also within tolerance when the crossings stay
# on few samples: at least FP8_SAMPLES_WITHIN of them within FLOAT_ROUNDING of the Simulator, and no output
# farther from it than FP8_ERROR_SHARE of FP8's own error, max |Simulator - FP32|.
FLOAT_ROUNDING = 1e-5
FLOAT_NOISE_FACTOR = 10.0
FP8_SAMPLES_WITHIN = 0.95
FP8_ERROR_SHARE = 0.25


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the text masks (probability > TEXT_THRESHOLD) of two probability maps, pooled over the samples."""
    mask_a, mask_b = a > TEXT_THRESHOLD, b > TEXT_THRESHOLD
    union = int((mask_a | mask_b).sum())
    return 1.0 if union == 0 else int((mask_a & mask_b).sum()) / union


def local_divergence(simulator: Simulator, feeds: list[dict[str, np.ndarray]]) -> dict[str, dict]:
    """Per lowered op kind producing codes: the default fake-quant result of each quantized value, computed
    from the integer reference's inputs (so no earlier difference propagates), against the reference's codes."""
    reference = simulator.integer
    producers = reference.lowered.producers()
    kind = {src: producers[dst].op for src, dst in reference.where.codes.items()}
    stats: dict[str, dict] = {}

    def compare(name: str, tensor: torch.Tensor) -> torch.Tensor:
        simulated = simulator.quantize_value(name, tensor)
        if name not in exact or name not in reference.where.codes:
            return exact.get(name, simulated)
        step = float(np.float32(simulator.specs[name].scale.reshape(-1)[0]))
        steps = torch.round((simulated - exact[name]).abs() / step)
        entry = stats.setdefault(kind[name], {"values": set(), "codes": 0, "differing": 0, "max_steps": 0})
        entry["values"].add(name)
        entry["codes"] += steps.numel()
        entry["differing"] += int((steps > 0).sum())
        entry["max_steps"] = max(entry["max_steps"], int(steps.max()))
        return exact[name]

    with torch.no_grad():
        for f in feeds:
            inputs = {k: torch.from_numpy(np.array(v)) for k, v in f.items()}
            exact = reference.values(inputs)
            execute(simulator.graph, {**simulator.constants, **inputs}, set(), compare)
    return {op: {"values": len(e["values"]), "codes": e["codes"], "differing": e["differing"],
                 "differing_fraction": e["differing"] / max(e["codes"], 1), "max_steps": e["max_steps"]}
            for op, e in sorted(stats.items())}


def measure(name: str, recipe_name: str, workdir: Path, repeat: int) -> dict:
    recipe = resolve_recipe(recipe_name)
    batch, calibration_batches, evaluation_batches = PLAN[name]
    shapes = zoo.input_shapes(name, batch)
    graph = import_onnx(zoo.onnx_path(name), shapes)
    calibration = zoo.inputs(name, calibration_batches, batch, split="calib")
    feeds = zoo.inputs(name, evaluation_batches, batch, split="eval")

    start = time.perf_counter()
    quantized = quantize(graph, recipe, calibration)
    lowered = lower_integer(quantized)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    artifact = bitsmith.compile(zoo.onnx_path(name), "host", input_shapes=shapes, recipe=recipe,
                                calibration=calibration, output_dir=workdir / f"{name}-{recipe.name}", quiet=True)
    compile_s = time.perf_counter() - start
    fp32_artifact = bitsmith.compile(zoo.onnx_path(name), "host", input_shapes=shapes,
                                     output_dir=workdir / f"{name}-fp32", quiet=True)

    simulator, fp32 = Simulator(quantized), Simulator(graph, quantized=False)
    exact_simulator = Simulator(quantized, integer_exact=True)
    outputs = {o: {"tvm": [], "reference": [], "simulator": [], "exact_simulator": [], "fp32": []}
               for o in graph.outputs}
    for f in feeds:
        for kind, result in (("tvm", artifact.run(f)), ("reference", run_graph(lowered, f)),
                             ("simulator", simulator.run(f)), ("exact_simulator", exact_simulator.run(f)),
                             ("fp32", fp32.run(f))):
            for o in graph.outputs:
                outputs[o][kind].append(result[o])
    bit_exact, max_abs_diff, sim_max_abs_diff, per_output = True, 0.0, 0.0, {}
    for o, kinds in outputs.items():
        arrays = {k: np.concatenate(v) for k, v in kinds.items()}
        ours, reference = arrays["tvm"], arrays["reference"]
        same = ours.dtype == reference.dtype and ours.shape == reference.shape and ours.tobytes() == reference.tobytes()
        bit_exact &= same
        max_abs_diff = max(max_abs_diff, float(np.abs(ours.astype(np.float64) - reference).max()))
        sim_diff = float(np.abs(arrays["exact_simulator"].astype(np.float64) - reference).max())
        sim_max_abs_diff = max(sim_max_abs_diff, sim_diff)
        span = float(np.abs(arrays["fp32"]).max()) or 1.0

        def relative(a: str, b: str) -> float:
            return float(np.abs(arrays[a] - arrays[b]).max()) / span  # noqa: B023 (used at once)

        entry = {"bit_exact": same, "sim_vs_integer_max_abs_diff": sim_diff,
                 "sim_vs_integer_bit_exact": arrays["exact_simulator"].tobytes() == reference.tobytes(),
                 "int_vs_simulator_max_abs_diff_rel": relative("reference", "simulator"),
                 "int_vs_fp32_max_abs_diff_rel": relative("reference", "fp32"),
                 "simulator_vs_fp32_max_abs_diff_rel": relative("simulator", "fp32")}
        if o == MASK_OUTPUT.get(name):
            for a, b, key in (("reference", "simulator", "int_vs_simulator"), ("reference", "fp32", "int_vs_fp32"),
                              ("simulator", "fp32", "simulator_vs_fp32")):
                entry[f"mask_iou_{key}"] = mask_iou(arrays[a], arrays[b])
        if o == CLASS_OUTPUT.get(name):
            top1 = {k: a.argmax(-1) for k, a in arrays.items()}
            entry["top1_int_vs_simulator"] = float(np.mean(top1["reference"] == top1["simulator"]))
            entry["top1_int_vs_fp32"] = float(np.mean(top1["reference"] == top1["fp32"]))
            entry["top1_simulator_vs_fp32"] = float(np.mean(top1["simulator"] == top1["fp32"]))
            if name in LABELLED:
                labels = np.concatenate(zoo.labels(name, evaluation_batches, batch, split="eval"))
                entry["accuracy"] = {k: float(np.mean(top1[k] == labels)) for k in ("reference", "simulator", "fp32")}
        per_output[o] = entry

    counts = lowered.op_counts()
    times = time_alternating({"int": lambda: artifact.run(feeds[0]), "fp32": lambda: fp32_artifact.run(feeds[0])},
                             repeat=repeat, warmup=3)
    record = format_record(name, recipe.name, Compiled(artifact, graph, quantized, lowered), outputs, feeds,
                           fp32_artifact, max(repeat // 4, 3), compile_s)  # the per-format table's row of this recipe
    return {
        "formats": {recipe.name: record},
        "recipe": recipe.name, "batch": batch, "samples": batch * evaluation_batches,
        "calibration_samples": batch * calibration_batches,
        "bit_exact": bool(bit_exact), "max_abs_diff": max_abs_diff, "sim_vs_integer_max_abs_diff": sim_max_abs_diff,
        "fake_quant_divergence": local_divergence(exact_simulator, feeds),
        "ops_before_fusion": len(graph.nodes), "ops_after_fusion": len(lowered.nodes) - load_ops(lowered),
        "quant_ops_left": sum(counts.get(op, 0) for op in QUANT_OPS),
        "lowered_ops": counts, "manifest_ops_match": artifact.manifest["formats"]["ops"] == counts,
        "emulated_formats": artifact.manifest["formats"]["emulated"],
        "artifact_bytes": artifact.size_bytes(), "fp32_artifact_bytes": fp32_artifact.size_bytes(),
        "fp32_onnx_bytes": zoo.onnx_path(name).stat().st_size,
        "int_ms": median(times["int"]), "fp32_ms": median(times["fp32"]),
        "quantize_and_lower_seconds": round(lower_s, 1), "compile_seconds": round(compile_s, 1),
        "outputs": per_output,
    }


def load_ops(lowered: Graph) -> int:
    counts = lowered.op_counts()
    return sum(counts.get(op, 0) for op in LOAD_OPS)


def integer_kernels(quantized: Graph) -> bool:
    """Whether the artifact is compared bit for bit with the integer reference: activations in 8-bit
    integers (and int16 wide residual streams). Otherwise (float activations, FP8) it computes in float and
    is compared with the Simulator."""
    formats = {v.quant.format for n, v in quantized.values.items() if v.quant is not None and n not in quantized.constants}
    return bool(formats) and formats <= {"int8", "uint8", WIDE_FORMAT}


def stored_weight_bytes(lowered: Graph, quantized: Graph) -> dict:
    """The quantized weights, and the bytes the artifact stores for them: codes (4-bit two per byte) and,
    for weights decoded at load, their scales; weights of QConv / QMatMul keep their scales in the epilogue."""
    weights = code_bytes = scale_bytes = 0
    decoded = {n.inputs[0]: n for n in lowered.nodes if n.op in LOAD_OPS}
    for name, value in quantized.values.items():
        if value.quant is None or name not in quantized.constants:
            continue
        weights += quantized.constants[name].size
    for codes, node in decoded.items():
        code_bytes += lowered.constants[codes].nbytes
        scale_bytes += sum(lowered.constants[i].nbytes for i in node.inputs[1:])
    integer_codes = [n for n in lowered.nodes if n.op in ("QConv", "QMatMul") and n.inputs[1] in lowered.constants]
    code_bytes += sum(lowered.constants[n.inputs[1]].nbytes for n in integer_codes)
    return {"quantized_weights": weights, "code_bytes": code_bytes, "scale_bytes": scale_bytes,
            "bytes_per_weight": (code_bytes + scale_bytes) / max(weights, 1)}


def measure_format(name: str, recipe_name: str, workdir: Path, fp32_artifact: bitsmith.Artifact, repeat: int) -> dict:
    """One model with one recipe: the artifact against its reference on FORMAT_EVAL_BATCHES batches."""
    batch, calibration_batches, evaluation_batches = PLAN[name]
    evaluation_batches = min(evaluation_batches, FORMAT_EVAL_BATCHES)
    shapes = zoo.input_shapes(name, batch)
    calibration = zoo.inputs(name, calibration_batches, batch, split="calib")
    feeds = zoo.inputs(name, evaluation_batches, batch, split="eval")
    start = time.perf_counter()
    compiled = compile_traced(zoo.onnx_path(name), "host", input_shapes=shapes, recipe=recipe_name,
                              calibration=calibration, output_dir=workdir / f"{name}-{recipe_name}", quiet=True)
    compile_s = time.perf_counter() - start
    assert compiled.quantized is not None
    simulator, fp32 = Simulator(compiled.quantized), Simulator(compiled.graph, quantized=False)
    runners = {"tvm": compiled.artifact.run, "reference": lambda f: run_graph(compiled.lowered, f),
               "simulator": simulator.run, "fp32": fp32.run}
    if not integer_kernels(compiled.quantized):  # the float64 yardstick of the float formats (FLOAT_ROUNDING)
        runners["float64"] = Simulator(compiled.quantized, float64=True).run
    runs: dict[str, dict[str, list[np.ndarray]]] = {o: {kind: [] for kind in runners} for o in compiled.graph.outputs}
    for f in feeds:
        for kind, run in runners.items():
            result = run(f)
            for o in compiled.graph.outputs:
                runs[o][kind].append(result[o])
    return format_record(name, recipe_name, compiled, runs, feeds, fp32_artifact, repeat, compile_s)


def format_record(name: str, recipe_name: str, compiled: Compiled, runs: dict[str, dict[str, list[np.ndarray]]],
                  feeds: list[dict[str, np.ndarray]], fp32_artifact: bitsmith.Artifact, repeat: int,
                  compile_s: float) -> dict:
    """The per-format record from the outputs of the artifact ("tvm"), the reference interpreter on the
    lowered graph, the fake-quant Simulator in float32 and float64 and FP32 (`runs`: output -> kind -> one
    array per feed)."""
    quantized, lowered, artifact = compiled.quantized, compiled.lowered, compiled.artifact
    assert quantized is not None
    batch = PLAN[name][0]
    exact = integer_kernels(quantized)
    compared_with = "reference" if exact else "simulator"
    fp8 = not exact and resolve_recipe(recipe_name).activations is not None
    bit_exact, max_abs_diff, max_rel, within_tolerance, per_output = True, 0.0, 0.0, True, {}
    for o, kinds in runs.items():
        arrays = {k: np.concatenate(v) for k, v in kinds.items()}
        ours, theirs = arrays["tvm"], arrays[compared_with]
        span = float(np.abs(arrays["fp32"]).max()) or 1.0
        same = ours.dtype == theirs.dtype and ours.shape == theirs.shape and ours.tobytes() == theirs.tobytes()
        diff = float(np.abs(ours.astype(np.float64) - theirs).max())
        bit_exact &= same
        max_abs_diff, max_rel = max(max_abs_diff, diff), max(max_rel, diff / span)
        entry = {"bit_exact": same, "max_abs_diff": diff, "max_abs_diff_rel": diff / span,
                 "reference_vs_simulator_bit_exact": arrays["reference"].tobytes() == arrays["simulator"].tobytes(),
                 "artifact_vs_fp32_max_abs_diff_rel": float(np.abs(ours - arrays["fp32"]).max()) / span}
        if exact:
            within_tolerance &= same
        else:
            entry.update(float_rounding_check(ours, arrays, span))
            if fp8:
                per_sample = np.abs(ours - theirs).reshape(len(ours), -1).max(axis=1)
                error = float(np.abs(arrays["simulator"] - arrays["fp32"]).max()) or 1.0
                entry["samples_within_float_rounding"] = float(np.mean(per_sample <= FLOAT_ROUNDING * span))
                entry["diff_over_fp8_error"] = diff / error
                entry["within_float_rounding"] |= (entry["samples_within_float_rounding"] >= FP8_SAMPLES_WITHIN
                                                   and entry["diff_over_fp8_error"] <= FP8_ERROR_SHARE)
            within_tolerance &= entry["within_float_rounding"]
        if o == CLASS_OUTPUT.get(name):
            top1 = {k: a.argmax(-1) for k, a in arrays.items()}
            entry["top1_artifact_vs_fp32"] = float(np.mean(top1["tvm"] == top1["fp32"]))
            if name in LABELLED:
                labels = np.concatenate(zoo.labels(name, len(feeds), batch, split="eval"))
                entry["accuracy"] = {k: float(np.mean(top1[k] == labels)) for k in ("tvm", "fp32")}
        per_output[o] = entry
    counts = lowered.op_counts()
    formats = artifact.manifest["formats"]
    times = time_alternating({"artifact": lambda: artifact.run(feeds[0]), "fp32": lambda: fp32_artifact.run(feeds[0])},
                             repeat=repeat, warmup=2)
    return {
        "recipe": recipe_name, "weights": formats["weights"], "activations": formats["activations"],
        "compared_with": "integer reference" if exact else "fake-quant Simulator",
        "samples": batch * len(feeds), "bit_exact": bool(bit_exact), "max_abs_diff": max_abs_diff,
        "max_abs_diff_rel": max_rel, "within_tolerance": bool(within_tolerance),
        "ops_before_fusion": len(compiled.graph.nodes), "ops_after_fusion": len(lowered.nodes) - load_ops(lowered),
        "load_ops": load_ops(lowered), "quant_ops_left": sum(counts.get(op, 0) for op in QUANT_OPS),
        "lowered_ops": counts, "emulated_formats": formats["emulated"], "execution": formats.get("execution", {}),
        "artifact_bytes": artifact.size_bytes(), "weights_file_bytes": (artifact.path / artifact.manifest["weights"]).stat().st_size,
        "fp32_artifact_bytes": fp32_artifact.size_bytes(), "fp32_onnx_bytes": zoo.onnx_path(name).stat().st_size,
        "stored_weights": stored_weight_bytes(lowered, quantized),
        "ms": median(times["artifact"]), "fp32_ms": median(times["fp32"]), "compile_seconds": round(compile_s, 1),
        "outputs": per_output,
    }


def float_rounding_check(ours: np.ndarray, arrays: dict[str, np.ndarray], span: float) -> dict:
    """How the artifact's output `ours` compares with the float32 Simulator's and both with the float64
    computation (FLOAT_ROUNDING explains the rule)."""
    exact = arrays["float64"].astype(np.float64)
    simulator_noise = float(np.abs(arrays["simulator"] - exact).max())
    artifact_noise = float(np.abs(ours - exact).max())
    near = float(np.abs(ours.astype(np.float64) - arrays["simulator"]).max()) <= FLOAT_ROUNDING * span
    return {"simulator_vs_float64_max_abs_diff": simulator_noise, "artifact_vs_float64_max_abs_diff": artifact_noise,
            "within_float_rounding": bool(near or artifact_noise <= FLOAT_NOISE_FACTOR * simulator_noise)}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def write_markdown(results: dict, path: Path) -> None:
    lines = [
        "# Integer-only lowering: artifact vs integer reference",
        "",
        f"Recipe {results['recipe']}; each model quantized on real calibration inputs, lowered to integer ops "
        "(passes/lower_integer.py) and compiled by `bitsmith.compile(recipe=..., calibration=...)`; the artifact's "
        "outputs are compared byte for byte with `run_graph` on the lowered graph (the integer reference), on "
        f"real evaluation inputs. CPU: {results['cpu']}, {results['cpus']} logical CPUs (shared: timings drift; "
        f"load average {results['load_average_start'][0]:.1f} at the start, {results['load_average_end'][0]:.1f} "
        "at the end). "
        "Written by `scripts/integer_parity.py`." + (
            f" Kept from an earlier run (this run measured the others): {', '.join(results['kept_from_earlier_run'])}."
            if results.get("kept_from_earlier_run") else ""),
        "",
        "| model | samples | bit-exact | max abs diff | integer-exact sim vs integer: max abs diff "
        "| ops before / after lowering | Q/DQ left | artifact bytes (W8A8 / FP32) | FP32 ONNX bytes "
        "| ms per batch (W8A8 / FP32) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        lines.append(f"| {name} | {r['samples']} | {'yes' if r['bit_exact'] else 'NO'} | {r['max_abs_diff']:g} | "
                     f"{r['sim_vs_integer_max_abs_diff']:g} | "
                     f"{r['ops_before_fusion']} / {r['ops_after_fusion']} | {r['quant_ops_left']} | "
                     f"{r['artifact_bytes']:,} / {r['fp32_artifact_bytes']:,} | {r['fp32_onnx_bytes']:,} | "
                     f"{r['int_ms']:.2f} / {r['fp32_ms']:.2f} |")
    lines += ["", "Fidelity of the integer model (int) against the fake-quant Simulator (sim) and FP32 (fp): max abs "
              "diff relative to the largest |FP32 output|; top-1 agreement and accuracy on the class output; on a "
              f"text probability map, the IoU of the text masks (probability > {TEXT_THRESHOLD}, pooled over the "
              "samples) in the top-1 column.", "",
              "| model | output | int vs sim | int vs fp | sim vs fp | top-1 int=sim / int=fp / sim=fp "
              "| accuracy int / sim / fp |",
              "|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        for output, o in r["outputs"].items():
            top1 = " / ".join(f"{o[k]:.3f}" for k in ("top1_int_vs_simulator", "top1_int_vs_fp32",
                                                     "top1_simulator_vs_fp32") if k in o)
            if "mask_iou_int_vs_fp32" in o:
                top1 = "mask IoU " + " / ".join(f"{o[k]:.3f}" for k in (
                    "mask_iou_int_vs_simulator", "mask_iou_int_vs_fp32", "mask_iou_simulator_vs_fp32"))
            accuracy = " / ".join(f"{o['accuracy'][k]:.3f}" for k in ("reference", "simulator", "fp32")) \
                if "accuracy" in o else ""
            lines.append(f"| {name} | {output} | {o['int_vs_simulator_max_abs_diff_rel']:.4f} | "
                         f"{o['int_vs_fp32_max_abs_diff_rel']:.4f} | {o['simulator_vs_fp32_max_abs_diff_rel']:.4f} | "
                         f"{top1} | {accuracy} |")
    lines += ["", "Where the default fake-quant Simulator departs from the integer reference: each integer op is fed the "
              "reference's own inputs and its fake-quant result compared with the reference's codes, so nothing "
              "propagates from earlier ops (`Simulator(integer_exact=True)` has none of these differences).", "",
              "| model | integer op | values | codes compared | codes differing | max steps |", "|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        for op, d in r["fake_quant_divergence"].items():
            lines.append(f"| {name} | {op} | {d['values']} | {d['codes']:,} | {d['differing']:,} "
                         f"({100 * d['differing_fraction']:.3f}%) | {d['max_steps']} |")
    lines += per_format_markdown(results)
    lines += ["", "ops before lowering: IR nodes of the imported FP32 graph; after: nodes of the lowered integer graph "
              "(Conv + bias + activation, PRelu / HardSwish / HardSigmoid subgraphs and Softmax each become one op). "
              "Q/DQ left: QuantizeLinear + DequantizeLinear nodes, i.e. the borders (one per input, one per quantized "
              "output; final MatMuls with a float epilogue need none). The W8A8 kernels subtract zero points and "
              "accumulate int8 products in int32 without u8 x s8 dot-product schedules yet, so latency is not the "
              "point of this table."]
    path.write_text("\n".join(lines) + "\n")


def float64_columns(record: dict) -> str:
    """The largest artifact / Simulator distances from the float64 computation over the outputs ("-" for
    records compared with the integer reference)."""
    outputs = [o for o in record["outputs"].values() if "artifact_vs_float64_max_abs_diff" in o]
    if not outputs:
        return "-"
    return " / ".join(f"{max(o[key] for o in outputs):.3g}" for key in
                      ("artifact_vs_float64_max_abs_diff", "simulator_vs_float64_max_abs_diff"))


def per_format_markdown(results: dict) -> list[str]:
    rows = [(name, r) for name, m in results["models"].items() for r in m.get("formats", {}).values()]
    if not rows:
        return []
    lines = ["", f"Per model and format: each recipe compiled by `bitsmith.compile` and its artifact compared on "
             f"{results['format_eval_batches']} evaluation batches with the integer reference (8-bit integer "
             "activations: bit-exact expected) or with the fake-quant Simulator (float or FP8 activations: equal "
             f"within float rounding: max |diff| / max |FP32 output| at most {FLOAT_ROUNDING:g}, or the artifact no "
             f"farther than {FLOAT_NOISE_FACTOR:g}x the float32 Simulator from the same computation in float64, "
             "the columns artifact / Simulator vs float64; deep nets and FP8 activations, whose rounding boundaries "
             "a float32 sum-order difference can cross, need the second; or, with FP8 activations, crossings on few "
             f"samples: at least {FP8_SAMPLES_WITHIN:.0%} of them within {FLOAT_ROUNDING:g} and every difference at "
             f"most {FP8_ERROR_SHARE:g} of FP8's own error max |Simulator - FP32|). Weights: the bytes stored per "
             "quantized weight (codes, 4-bit ones two per "
             "byte, plus the scales of weights decoded at load); ops after lowering count those run per "
             "inference, + those run once at load (weight decoding). Emulated: formats without a native kernel "
             "on this CPU (the manifest's list).", "",
             "| model | recipe | compared with | bit-exact | max abs diff (rel) | vs float64: artifact / Simulator "
             "| within tolerance | ops before / after "
             "(+ at load) | Q/DQ left | weight bytes per weight | artifact bytes | FP32 ONNX bytes | emulated "
             "| top-1 = FP32 | ms per batch (this / FP32) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | {r['recipe']} | not compiled: {r['error']} |" + " |" * 12)
            continue
        top1 = next((f"{o['top1_artifact_vs_fp32']:.3f}" for o in r["outputs"].values() if "top1_artifact_vs_fp32" in o), "")
        lines.append(f"| {name} | {r['recipe']} | {r['compared_with']} | {'yes' if r['bit_exact'] else 'no'} | "
                     f"{r['max_abs_diff']:.3g} ({r['max_abs_diff_rel']:.2g}) | {float64_columns(r)} | "
                     f"{'yes' if r['within_tolerance'] else 'NO'} | "
                     f"{r['ops_before_fusion']} / {r['ops_after_fusion']} (+ {r['load_ops']}) | {r['quant_ops_left']} | "
                     f"{r['stored_weights']['bytes_per_weight']:.3f} | {r['artifact_bytes']:,} | {r['fp32_onnx_bytes']:,} | "
                     f"{', '.join(r['emulated_formats']) or '-'} | {top1} | {r['ms']:.2f} / {r['fp32_ms']:.2f} |")
    return lines


def previous_models(args: argparse.Namespace) -> dict:
    """The models of an earlier run with the same recipe and formats, kept when this run measures only
    some of them (--models); re-measured ones are replaced."""
    path = args.results / "integer_parity.json"
    if set(args.models) == set(PLAN) or not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("recipe") != args.recipe or earlier.get("formats") != args.formats:
        return {}
    return {name: record for name, record in earlier["models"].items() if name not in args.models}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(PLAN), choices=list(PLAN))
    parser.add_argument("--recipe", default="w8a8")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--formats", nargs="*", default=list(FORMAT_RECIPES), choices=list(bitsmith.PRESETS),
                        help="recipes of the per-format table (none: skip it)")
    parser.add_argument("--format-repeat", type=int, default=5, help="timed runs per format")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON and Markdown go")
    args = parser.parse_args()
    results = {"recipe": args.recipe, "formats": args.formats, "format_eval_batches": FORMAT_EVAL_BATCHES,
               "cpu": cpu_name(), "cpus": os.cpu_count(), "versions": versions(),
               "load_average_start": os.getloadavg(), "models": previous_models(args)}
    results["kept_from_earlier_run"] = sorted(results["models"])
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            start = time.perf_counter()
            results["models"][name] = measure(name, args.recipe, Path(tmp), args.repeat)
            print(f"{name}: bit_exact={results['models'][name]['bit_exact']} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
            fp32_artifact = bitsmith.Artifact.load(Path(tmp) / f"{name}-fp32")  # measure's FP32 build
            per_format = results["models"][name]["formats"]  # measure's recipe is in already
            for recipe in (r for r in args.formats if r not in per_format):
                start = time.perf_counter()
                try:
                    per_format[recipe] = measure_format(name, recipe, Path(tmp) / "formats", fp32_artifact,
                                                        args.format_repeat)
                except bitsmith.BitsmithError as exc:  # recorded, and the table says so
                    per_format[recipe] = {"recipe": recipe, "error": f"{type(exc).__name__}: {exc}"[:1000]}
                    print(f"{name} {recipe}: {per_format[recipe]['error']}", flush=True)
                    continue
                r = per_format[recipe]
                print(f"{name} {recipe}: vs {r['compared_with']}: bit_exact={r['bit_exact']} max_abs_diff_rel="
                      f"{r['max_abs_diff_rel']:.3g} ({time.perf_counter() - start:.0f} s)", flush=True)
    results["load_average_end"] = os.getloadavg()
    results["models"] = {n: results["models"][n] for n in PLAN if n in results["models"]}  # kept ones mixed in
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "integer_parity.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    write_markdown(results, args.results / "integer_parity.md")


if __name__ == "__main__":
    main()
