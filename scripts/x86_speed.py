"""Evidence for x86 speed: bitsmith FP32 and INT8 artifacts against ONNX Runtime FP32 and INT8.

For each case (MobileNetV2 batch 1 and 8, MiniLM-L6 seq 128 batch 1 and 8, PP-OCRv4 det batch 1) the
script compiles, for the host target, the FP32 model and two integer versions calibrated on the zoo's
calibration split: W8A8 (`recipe="w8a8"`) and W7A8 (`recipe="w7a8"`: int7 weights, ONNX Runtime's
reduce_range, for which AVX2's byte dot product vpmaddubsw is exact), and quantizes the ONNX model with ONNX Runtime's quantize_static (QDQ,
per-channel, uint8 activations / int8 weights, MinMax, on the same calibration feeds). Then, for 1 and
2 threads, it times the five contenders on one real evaluation input, alternating run by run
(bitsmith.measure.time_alternating), ONNX Runtime without spin-waiting (`ort_session(spin=False)`),
and reports medians. TVM's thread pool cannot be resized once used, so each thread count is timed in
a child process (`--time-threads N`) that loads the artifacts compiled by the parent.

Compile time is "templates only": bitsmith's default CPU schedules (backends/cpu_schedule.py), no
tuning. The host is shared: the load average before and after each timing is recorded next to it.

Achieved GOP/s of the main kernels: each bitsmith artifact's kernels are timed one by one (the Relax
VM's per-call profile, best of several runs) and their multiply-adds counted from the fused kernels'
reduction blocks (`kernel_work`); per kind of kernel (1x1 convolution, k x k convolution, depthwise
convolution, matmul) GOP/s = 2 x MACs / time, next to the peak computed from the ISA: threads x
lanes x FMA ports x 2 ops x clock, where a lane does one fp32 multiply-add per instruction or, for
int8, the exact dot product's products per int32 lane (AVX2 vpmaddwd: 2, AVX-512 VNNI vpdpbusd: 4),
and the clock is measured (a dependent chain of 1-cycle integer operations, `measure_clock_ghz`).
vpmaddubsw's 4 products per lane need a second multiply (vpmaddwd by ones), so the W7A8 kernels have
the same peak per multiply instruction as vpmaddwd.

Fidelity: each contender's first output on FIDELITY_BATCHES evaluation inputs against ONNX Runtime FP32
(relative L2 error; top-1 agreement for classifier logits), to show what each integer version costs.

Writes docs/results/x86_speed.json and .md (`--name` for another host's results beside them, e.g.
x86_speed_avx2). Re-run: `.venv/bin/python scripts/x86_speed.py`
(about 10-15 min on 2 busy cores; `--cases mobilenet_v2-b1` for one case, `--repeat` for more runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.version_converter

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
THREADS = (1, 2)
CALIBRATION_FEEDS = 4
PER_CHANNEL_MIN_OPSET = 13
# The issue's goal: bitsmith INT8 at most half of ORT FP32's time and no slower than ORT INT8.
GOAL_VS_ORT_FP32 = 0.5
GOAL_VS_ORT_INT8 = 1.0
# bitsmith's artifacts: kind -> recipe (None: FP32)
BITSMITH_KINDS = {"fp32": None, "int8": "w8a8", "int7": "w7a8"}
FIDELITY_BATCHES = 4
# The exact int8 dot product bitsmith's INT8 and W7 kernels run on, per host target.
DOT_PRODUCTS = {"x86-avx2": ("vpmaddwd", "vpmaddubsw"), "x86-avx512": ("AVX-512 VNNI vpdpbusd",) * 2,
                "x86-avx512-vbmi": ("AVX-512 VNNI vpdpbusd",) * 2}
ARTIFACT_LABELS = {"fp32": "FP32", "int8": "INT8", "int7": "W7"}


@dataclass(frozen=True)
class Case:
    model: str
    batch: int

    @property
    def name(self) -> str:
        return f"{self.model}-b{self.batch}"


CASES = [Case("mobilenet_v2", 1), Case("mobilenet_v2", 8), Case("minilm_l6", 1), Case("minilm_l6", 8),
         Case("ppocr_det", 1)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=[c.name for c in CASES])
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each contender after warm-up")
    parser.add_argument("--workdir", type=Path, help="where artifacts and ORT models go (default: a temporary one)")
    parser.add_argument("--name", default="x86_speed", help="results file name in docs/results (default x86_speed)")
    parser.add_argument("--time-threads", type=int, help=argparse.SUPPRESS)  # child process: time only
    return parser.parse_args()


# -- compile (parent) --------------------------------------------------------------------------------
def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def ort_int8_model(case: Case, calibration: list, workdir: Path) -> Path:
    """ONNX Runtime's own static INT8 (QDQ, per-channel), as scripts/quant_accuracy.py makes it. A model
    below opset 13 (PP-OCRv4 det: 12) is converted to 13 first: per-channel DequantizeLinear (its `axis`)
    needs it, and quantize_static writes an invalid model otherwise."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from bitsmith import zoo

    source = zoo.onnx_path(case.model)
    model = onnx.load(str(source))
    if _default_opset(model) < PER_CHANNEL_MIN_OPSET:
        source = workdir / f"{case.name}_opset{PER_CHANNEL_MIN_OPSET}.onnx"
        onnx.save(onnx.version_converter.convert_version(model, PER_CHANNEL_MIN_OPSET), str(source))
    prepared = workdir / f"{case.name}_prep.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    out = workdir / f"{case.name}_ort_int8.onnx"

    class Reader:
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

    def run(extra_options: dict) -> None:
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options=extra_options)

    try:
        run({})
    except ValueError:  # ORT 1.31's int32-bias weight adjustment fails on some per-channel convs
        run({"QDQDisableWeightAdjustForInt32Bias": True})
    return out


def compile_case(case: Case, workdir: Path) -> dict:
    """Build the two bitsmith artifacts and the ORT INT8 model of a case; their paths and compile times."""
    import bitsmith
    from bitsmith import zoo
    from bitsmith.pipeline import compile_traced

    shapes = zoo.input_shapes(case.model, batch=case.batch)
    calibration = zoo.inputs(case.model, CALIBRATION_FEEDS, batch=case.batch, split="calib")
    record: dict = {"case": case.name, "model": case.model, "batch": case.batch, "input_shapes": shapes}
    for kind, recipe in BITSMITH_KINDS.items():
        start = time.perf_counter()
        try:
            compiled = compile_traced(zoo.onnx_path(case.model), "host", recipe=recipe,
                                      calibration=calibration if recipe else None, input_shapes=shapes,
                                      output_dir=workdir / f"{case.name}-{kind}", quiet=True)
            record[f"bitsmith_{kind}_compile_s"] = round(time.perf_counter() - start, 1)
            record[f"bitsmith_{kind}_artifact"] = str(workdir / f"{case.name}-{kind}")
            record[f"bitsmith_{kind}_kernels"] = kernel_work(compiled.lowered)
        except bitsmith.BitsmithError as exc:
            record[f"bitsmith_{kind}_error"] = f"{type(exc).__name__}: {exc}"[:2000]
            record[f"bitsmith_{kind}_compile_s"] = round(time.perf_counter() - start, 1)
    batch1 = zoo.inputs(case.model, CALIBRATION_FEEDS, batch=1, split="calib")
    record["ort_int8_model"] = str(ort_int8_model(case, batch1, workdir))
    return record


# -- kernel work and peak ------------------------------------------------------------------------------
def kernel_work(graph) -> dict[str, dict]:
    """{kernel name: {"macs": multiply-adds per call, "kind": ...}} for the multiply-accumulate kernels
    the x86 backend builds from `graph`: the fused PrimFuncs before scheduling (the library's kernels
    carry the same names, "_prepacked" appended where weights are packed)."""
    import tvm
    from tvm import s_tir, tirx

    from bitsmith.backends import x86
    from bitsmith.backends.relax_emit import emit_relax
    from bitsmith.targets import load

    target = load("host")
    passes = x86.scheduling_passes(x86.cpu_shape(target))
    fused = [type(p).__name__ for p in passes].index("ScheduleCPU") - 1  # through AttachAttrLayoutFreeBuffers
    with x86.tvm_target(target):
        mod = tvm.transform.Sequential(passes[:fused])(emit_relax(graph).mod)
    work = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            found = _multiply_accumulate(s_tir.Schedule(func))
            if found is not None:
                work[gvar.name_hint] = found
    return work


def _multiply_accumulate(sch) -> dict | None:
    """MACs and kind of the function's multiply-accumulate reduction block (conv, matmul), or None.
    TOPI's NHWC convolutions reduce over (kernel rows, kernel columns, input channels of the group)."""
    from tvm import tirx

    for block in sch.get_child_blocks(sch.get_sblock("root")):
        stmt = sch.get(block)
        value = getattr(stmt.body, "value", None)
        reduce_extents = [int(iv.dom.extent) for iv in stmt.iter_vars if int(iv.iter_type) == tirx.IterVar.CommReduce]
        if not reduce_extents or not isinstance(value, tirx.Add) or not any(
                isinstance(term, tirx.Mul) for term in (value.a, value.b)):
            continue
        macs = 1
        for iv in stmt.iter_vars:
            macs *= int(iv.dom.extent)
        name = stmt.name_hint
        if "conv" not in name or len(reduce_extents) != 3:
            kind = "matmul"
        elif reduce_extents[2] == 1 and ("group" in name or "depthwise" in name):
            kind = "depthwise conv"
        else:
            kind = "conv 1x1" if reduce_extents[0] * reduce_extents[1] == 1 else "conv kxk"
        return {"macs": macs, "kind": kind}
    return None


def measure_clock_ghz(samples: int = 30, iterations: int = 20_000_000) -> float:
    """This core's clock: a loop-carried chain of two 1-cycle integer operations (xor, add) per iteration,
    compiled by TVM's LLVM, best of `samples` runs in thread CPU time."""
    import numpy as np
    import tvm
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def chain(a: T.Buffer((2,), "int64")):
        for i in range(a[1]):
            a[0] = (a[0] ^ i) + T.int64(1)

    executable = tvm.compile(tvm.IRModule({"main": chain}), tvm.target.Target({"kind": "llvm"}))
    run = executable.mod["main"]
    state = tvm.runtime.tensor(np.array([0, iterations], np.int64))
    best = float("inf")
    for _ in range(samples):
        start = time.thread_time()
        run(state)
        best = min(best, time.thread_time() - start)
    return 2 * iterations / best / 1e9


def peak_gops(threads: int, clock_ghz: float) -> dict[str, dict]:
    """Peak GOP/s per format on `threads` cores of the host target: threads x lanes x FMA ports x 2 x clock."""
    from bitsmith.backends import x86
    from bitsmith.targets import load

    target = load("host")
    lanes = target.vector_bits // 32
    dots = x86.cpu_shape(target).int8_dots
    general = [dot for dot in dots if dot.weight_code_max is None]  # see the module docstring on vpmaddubsw
    products = general[0].lanes * general[0].depth // lanes if general else 1
    peaks = {}
    for fmt, per_lane in (("fp32", 1), ("int8", products), ("int7", products)):
        macs_per_cycle = lanes * per_lane * target.fma_ports
        peaks[fmt] = {"gops": round(threads * macs_per_cycle * 2 * clock_ghz, 1), "threads": threads,
                      "lanes": lanes, "macs_per_lane": per_lane, "ports": target.fma_ports,
                      "clock_ghz": round(clock_ghz, 2)}
    return peaks


def kernel_rates(profile, work: dict[str, dict], runs: int = 10) -> dict:
    """Per kind of kernel: kernels, GMAC per inference, best-of-`runs` ms and GOP/s; and the three slowest
    kernels alone. `profile()` returns one inference's (symbol, ms) calls (TVMRunner.profile)."""
    best: dict[str, float] = {}
    counts: dict[str, int] = {}
    for _ in range(runs):
        calls: dict[str, float] = {}
        counts = {}
        for symbol, ms in profile():
            calls[symbol] = calls.get(symbol, 0.0) + ms
            counts[symbol] = counts.get(symbol, 0) + 1
        for symbol, ms in calls.items():
            best[symbol] = min(best.get(symbol, float("inf")), ms)
    kinds: dict[str, dict] = {}
    kernels = []
    for symbol, ms in best.items():
        entry = work.get(symbol.removesuffix("_prepacked"))
        if entry is None:
            continue
        gmac = entry["macs"] * counts[symbol] / 1e9
        kind = kinds.setdefault(entry["kind"], {"kernels": 0, "gmac": 0.0, "ms": 0.0})
        kind["kernels"] += counts[symbol]
        kind["gmac"] += gmac
        kind["ms"] += ms
        kernels.append({"kernel": symbol, "kind": entry["kind"], "calls": counts[symbol], "gmac": round(gmac, 4),
                        "ms": round(ms, 3), "gops": round(2 * gmac / (ms / 1e3), 1) if ms else None})
    for kind in kinds.values():
        kind["gops"] = round(2 * kind["gmac"] / (kind["ms"] / 1e3), 1) if kind["ms"] else None
        kind["gmac"], kind["ms"] = round(kind["gmac"], 4), round(kind["ms"], 3)
    kernels.sort(key=lambda k: -k["ms"])
    return {"kinds": kinds, "slowest": kernels[:3]}


# -- time (child) --------------------------------------------------------------------------------------
def time_case(record: dict, threads: int, repeat: int) -> dict:
    """Medians of the four contenders on one evaluation input, alternating run by run."""
    import bitsmith
    from bitsmith import zoo
    from bitsmith.measure import median, ort_session, time_alternating

    feed = zoo.inputs(record["model"], 1, batch=record["batch"], split="eval")[0]
    contenders, errors, profiles, runs = {}, {}, {}, {}
    for kind in BITSMITH_KINDS:
        if f"bitsmith_{kind}_artifact" in record:
            artifact = bitsmith.Artifact.load(record[f"bitsmith_{kind}_artifact"])
            runner, inputs, params = artifact._runner, artifact._ordered_inputs(feed), artifact._params
            if runner.threads != threads:
                raise RuntimeError(f"bitsmith runs {runner.threads} threads, not the {threads} asked for")
            args = runner.prepare(inputs, params)
            contenders[f"bitsmith_{kind}"] = (lambda main, args: lambda: main(*args))(runner._main, args)
            runs[f"bitsmith_{kind}"] = (lambda a: lambda f: list(a.run(f).values())[0])(artifact)
            profiles[kind] = (lambda r, i, p: lambda: r.profile(i, p))(runner, inputs, params)
    for kind, path in (("fp32", zoo.onnx_path(record["model"])), ("int8", record["ort_int8_model"])):
        try:
            session = ort_session(path, threads=threads, spin=False)
            names = [o.name for o in session.get_outputs()]
            session.run(names, feed)
        except Exception as exc:  # recorded; the other contenders are still timed
            errors[f"ort_{kind}_error"] = f"{type(exc).__name__}: {exc}"[:1000]
            continue
        contenders[f"ort_{kind}"] = (lambda s, n: lambda: s.run(n, feed))(session, names)
        runs[f"ort_{kind}"] = (lambda s, n: lambda f: s.run(n, f)[0])(session, names)
    load_before = os.getloadavg()[0]
    times = time_alternating(contenders, repeat=repeat, warmup=3)
    result = {f"{name}_ms": round(median(values), 3) for name, values in times.items()}
    result.update(errors)
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["kernels"] = {kind: kernel_rates(profile, record[f"bitsmith_{kind}_kernels"])
                         for kind, profile in profiles.items()}
    if threads == THREADS[0] and "ort_fp32" in runs:
        result["fidelity"] = fidelity(record, runs)
    return result


def fidelity(record: dict, runs: dict) -> dict:
    """Each contender's first output against ORT FP32's on FIDELITY_BATCHES evaluation inputs."""
    import numpy as np

    from bitsmith import zoo

    feeds = zoo.inputs(record["model"], FIDELITY_BATCHES, batch=record["batch"], split="eval")
    outputs = {name: np.concatenate([np.asarray(run(feed), np.float64) for feed in feeds]) for name, run in runs.items()}
    reference = outputs.pop("ort_fp32")
    result = {"samples": int(reference.shape[0])}
    for name, out in outputs.items():
        entry = {"relative_l2_error": round(float(np.linalg.norm(out - reference) / np.linalg.norm(reference)), 5)}
        if reference.ndim == 2 and reference.shape[1] > 1:  # classifier logits
            entry["top1_agree"] = round(float((out.argmax(1) == reference.argmax(1)).mean()), 4)
        result[name] = entry
    return result


def child_main(args: argparse.Namespace) -> None:
    from bitsmith.backends.runner import configure_threads

    configure_threads(args.time_threads)  # before any TVM work: the pool cannot be resized later
    records = json.loads((args.workdir / "compiled.json").read_text())
    timings: dict = {"clock_ghz": round(measure_clock_ghz(), 3)}
    for record in records:
        try:
            timings[record["case"]] = time_case(record, args.time_threads, args.repeat)
        except Exception as exc:  # a case that fails to run is reported, the others still timed
            timings[record["case"]] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            traceback.print_exc()
        print(f"  {args.time_threads} thread(s) {record['case']}: {timings[record['case']]}", flush=True)
    (args.workdir / f"timings-{args.time_threads}.json").write_text(json.dumps(timings, indent=1))


# -- report ----------------------------------------------------------------------------------------------
def ratios(timing: dict) -> dict:
    def ratio(a: str, b: str) -> float | None:
        return round(timing[a] / timing[b], 3) if a in timing and b in timing else None

    return {"int8_vs_ort_fp32": ratio("bitsmith_int8_ms", "ort_fp32_ms"),
            "int8_vs_ort_int8": ratio("bitsmith_int8_ms", "ort_int8_ms"),
            "int7_vs_ort_fp32": ratio("bitsmith_int7_ms", "ort_fp32_ms"),
            "int7_vs_ort_int8": ratio("bitsmith_int7_ms", "ort_int8_ms"),
            "fp32_vs_ort_fp32": ratio("bitsmith_fp32_ms", "ort_fp32_ms"),
            "int8_vs_bitsmith_fp32": ratio("bitsmith_int8_ms", "bitsmith_fp32_ms")}


def render(doc: dict) -> str:
    lines = ["# x86 speed: bitsmith FP32 / INT8 against ONNX Runtime FP32 / INT8", "",
             "Written by `scripts/x86_speed.py` (re-run it to regenerate). Host target "
             f"`{doc['target']}`, {doc['cpu']}; ONNX Runtime {doc['onnxruntime']}. Median ms of "
             f"{doc['repeat']} alternating runs after 3 warm-up runs, one real evaluation input, the same thread "
             "count for every contender. ORT INT8: quantize_static, QDQ, per-channel, MinMax (on AVX2 its u8 x s8 "
             "kernels use vpmaddubsw, which saturates int16 pair sums). bitsmith INT8: `recipe=\"w8a8\"`, "
             f"integer-lowered, exact ({DOT_PRODUCTS[doc['target']][0]}). bitsmith W7: `recipe=\"w7a8\"`, int7 "
             f"weights (reduce_range), exact with {DOT_PRODUCTS[doc['target']][1]}. Goal: INT8 <= "
             f"{GOAL_VS_ORT_FP32} x ORT FP32 and <= {GOAL_VS_ORT_INT8} x ORT INT8. The host is shared: load "
             "average (1 min, before / after) beside each row.", "",
             "| case | threads | bitsmith FP32 | bitsmith INT8 | bitsmith W7 | ORT FP32 | ORT INT8 | INT8 / ORT FP32 | "
             "INT8 / ORT INT8 | W7 / ORT FP32 | W7 / ORT INT8 | FP32 / ORT FP32 | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in doc["cases"]:
        for threads, timing in case["timings"].items():
            if "error" in timing:
                lines.append(f"| {case['case']} | {threads} | error: {timing['error'][:120]} | | | | | | | | | | |")
                continue
            r = timing["ratios"]

            def cell(key: str) -> str:
                return f"{timing[key]:.2f}" if key in timing else "—"

            def rcell(key: str) -> str:
                return f"{r[key]:.2f}" if r[key] is not None else "—"

            lines.append(f"| {case['case']} | {threads} | {cell('bitsmith_fp32_ms')} | {cell('bitsmith_int8_ms')} | "
                         f"{cell('bitsmith_int7_ms')} | {cell('ort_fp32_ms')} | {cell('ort_int8_ms')} | "
                         f"{rcell('int8_vs_ort_fp32')} | {rcell('int8_vs_ort_int8')} | {rcell('int7_vs_ort_fp32')} | "
                         f"{rcell('int7_vs_ort_int8')} | {rcell('fp32_vs_ort_fp32')} | {timing['load_average']} |")
    lines += render_fidelity(doc)
    lines += ["", "## Compile time (templates only: default schedules, no tuning)", "",
              "| case | bitsmith FP32 s | bitsmith INT8 s | bitsmith W7 s |", "|---|---|---|---|"]
    for case in doc["cases"]:
        lines.append(f"| {case['case']} | {case['bitsmith_fp32_compile_s']} | {case['bitsmith_int8_compile_s']} | "
                     f"{case.get('bitsmith_int7_compile_s', '—')} |")
    lines.append("")
    lines.append("INT8 and W7 times include calibration and quantization.")
    lines += render_kernel_rates(doc)
    errors = [(c["case"], f"bitsmith_{kind}_error", c[f"bitsmith_{kind}_error"]) for c in doc["cases"]
              for kind in BITSMITH_KINDS if f"bitsmith_{kind}_error" in c]
    errors += [(c["case"], k, t[k]) for c in doc["cases"] for t in list(c["timings"].values())[:1]
               for k in ("ort_fp32_error", "ort_int8_error") if k in t]
    if errors:
        lines += ["", "## Contenders that did not build or run", ""]
        lines += [f"- {name}, {key.removesuffix('_error')}: {message}" for name, key, message in errors]
    lines += ["", f"Load average at start / end: {doc['load_average']}.", ""]
    return "\n".join(lines)


def render_fidelity(doc: dict) -> list[str]:
    """Each contender's output against ORT FP32 (measured with the 1-thread timings)."""
    names = {"bitsmith_fp32": "bitsmith FP32", "bitsmith_int8": "bitsmith INT8", "bitsmith_int7": "bitsmith W7",
             "ort_int8": "ORT INT8"}
    lines = ["", "## Fidelity against ORT FP32", "",
             f"First output on {FIDELITY_BATCHES} evaluation inputs of the case's batch size: relative L2 error "
             "(top-1 agreement where the output is classifier logits).", "",
             "| case | samples | " + " | ".join(names.values()) + " |", "|---|---|" + "---|" * len(names)]
    for case in doc["cases"]:
        found = case["timings"].get(str(THREADS[0]), {}).get("fidelity")
        if not found:
            continue

        def cell(entry: dict | None) -> str:
            if entry is None:
                return "—"
            top1 = f" (top-1 {entry['top1_agree']:.3f})" if "top1_agree" in entry else ""
            return f"{entry['relative_l2_error']:.4f}{top1}"

        lines.append(f"| {case['case']} | {found['samples']} | " + " | ".join(cell(found.get(n)) for n in names) + " |")
    return lines


def render_kernel_rates(doc: dict) -> list[str]:
    """The GOP/s section: per case, thread count, artifact and kind of kernel, against the ISA peak."""
    peaks = doc["peak"]
    lines = ["", "## Achieved GOP/s of the main kernels", "",
             "Each kernel timed alone by the Relax VM's per-call profile (best of 10 inferences); multiply-adds "
             "counted from its reduction block; GOP/s = 2 x MACs / time. Peak = threads x lanes x FMA ports x "
             "2 ops x clock, computed from the ISA with the measured clock:", ""]
    for threads, peak in peaks.items():
        fp32, int8 = peak["fp32"], peak["int8"]
        lines.append(f"- {threads} thread(s), {fp32['clock_ghz']} GHz: FP32 {fp32['lanes']} lanes x "
                     f"{fp32['ports']} ports = {fp32['gops']} GOP/s; INT8 {int8['lanes']} lanes x "
                     f"{int8['macs_per_lane']} products x {int8['ports']} ports = {int8['gops']} GOP/s (INT8 and W7)")
    lines += ["", "| case | threads | artifact | kind | calls | GMAC | ms | GOP/s | % of peak |",
              "|---|---|---|---|---|---|---|---|---|"]
    for case in doc["cases"]:
        for threads, timing in case["timings"].items():
            for artifact, rates in timing.get("kernels", {}).items():
                peak = peaks[threads][artifact]["gops"]
                for kind, rate in sorted(rates["kinds"].items(), key=lambda kv: -kv[1]["ms"]):
                    share = f"{100 * rate['gops'] / peak:.0f}%" if rate["gops"] else "—"
                    lines.append(f"| {case['case']} | {threads} | {ARTIFACT_LABELS[artifact]} | {kind} | {rate['kernels']} | "
                                 f"{rate['gmac']:.3f} | {rate['ms']:.2f} | {rate['gops']} | {share} |")
    lines += ["", "Slowest kernels (1 thread):", "", "| case | artifact | kernel | kind | GMAC | ms | GOP/s |",
              "|---|---|---|---|---|---|---|"]
    for case in doc["cases"]:
        for artifact, rates in case["timings"].get("1", {}).get("kernels", {}).items():
            for k in rates["slowest"]:
                lines.append(f"| {case['case']} | {ARTIFACT_LABELS[artifact]} | `{k['kernel'][:60]}` | {k['kind']} | "
                             f"{k['gmac']:.3f} | {k['ms']:.3f} | {k['gops']} |")
    return lines


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    args = parse_args()
    if args.time_threads:
        child_main(args)
        return
    import onnxruntime

    import bitsmith
    from bitsmith.measure import write_results
    from bitsmith.targets import load

    selected = [c for c in CASES if c.name in args.cases]
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bitsmith-x86-speed-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        records = []
        for case in selected:
            records.append(compile_case(case, workdir))
            print(f"compiled {case.name}: " + ", ".join(f"{kind} {records[-1].get(f'bitsmith_{kind}_compile_s')} s"
                                                         for kind in BITSMITH_KINDS), flush=True)
        (workdir / "compiled.json").write_text(json.dumps(records, indent=1))
        for threads in THREADS:
            subprocess.run([sys.executable, __file__, "--time-threads", str(threads), "--repeat", str(args.repeat),
                            "--workdir", str(workdir)], check=True)
        timings = {t: json.loads((workdir / f"timings-{t}.json").read_text()) for t in THREADS}
    cases = []
    for record in records:
        entry = {k: v for k, v in record.items() if not k.endswith(("_artifact", "_model", "_kernels"))}
        entry["timings"] = {}
        for threads in THREADS:
            timing = timings[threads][record["case"]]
            if "error" not in timing:
                timing["ratios"] = ratios(timing)
            entry["timings"][str(threads)] = timing
        cases.append(entry)
    doc = {"target": load("host").name, "cpu": cpu_name(),
           "cpu_count": len(os.sched_getaffinity(0)), "onnxruntime": onnxruntime.__version__,
           "bitsmith_version": bitsmith.__version__, "repeat": args.repeat, "threads": list(THREADS),
           "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)], "cases": cases,
           "peak": {str(t): peak_gops(t, timings[t]["clock_ghz"]) for t in THREADS}}
    write_results(RESULTS, args.name, doc, render(doc))
    print(render(doc))


if __name__ == "__main__":
    main()
