"""Benchmark a model or an artifact on one or more targets: one report per target.

    reports = bench("model.onnx", ["x86-avx2", "x86-avx512"], data=eval_feeds, calibration=calib_feeds,
                    recipe="w8a8")
    reports[0].save("out/report")          # report.json, report.md, report.html

For each target the model is compiled (or the artifact is taken as it is) and measured:

- latency p50 / p95 / p99 and throughput: measured (runs alternating with ONNX Runtime's, same feed,
  same thread count) where the target runs on this machine; otherwise predicted by the roofline
  model (latency_model.py) and labelled "predicted". The prediction is reported for every target,
  next to the measurement where there is one;
- artifact size and peak memory (the resident-set high-water mark of loading and running the
  artifact in a fresh process, /proc/self/clear_refs);
- the accuracy metric against FP32 on the user's evaluation feeds (eval_fn, or fidelity.py's
  label-free metric), from the artifact where it runs, else from the integer reference interpreter
  on the lowered graph (the same integers, docs/design/integer_lowering.md);
- a per-layer table: formats and bits, Hessian sensitivity from the precision plan when there is one,
  SQNR of each layer's output against FP32, predicted and measured time (kernel by kernel through
  the VM's instrument hook), and the layers that run in float;
- ONNX Runtime FP32 and INT8 (quantize_static, QDQ, per-channel, on the same calibration feeds) side
  by side, where the source ONNX model is known and the target runs here.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from . import __version__, latency_model, targets
from .artifact import GRAPH, Artifact, read_verified_manifest
from .constraints import Constraints
from .errors import DataError, UsageError
from .fidelity import fidelity, metric_value, sqnr_db
from .formats import format_info
from .ir import Graph
from .pipeline import PLAN_FILE, Compiled, EvalFn, ModelLike, compile_traced, load_model, resolve_recipe
from .recipes import QuantRecipe
from .report import Report

log = logging.getLogger("bitsmith.bench")

Feed = Mapping[str, np.ndarray]
Runner = Callable[[Feed], dict[str, np.ndarray]]
LATENCY_MODES = ("auto", "measured", "predicted")
PERCENTILES = (50, 95, 99)
SPIN_NOTE = "intra-op spinning off (spinning workers starve the other contender when runs alternate)"


@dataclass
class BenchSettings:
    """How much to measure. latency: "auto" measures where the target runs here and predicts
    elsewhere; "predicted" never runs the artifact; "measured" refuses targets that do not run here."""

    repeat: int = 50
    warmup: int = 5
    latency: str = "auto"
    profile_runs: int = 3
    baselines: bool = True
    memory: bool = True
    sqnr_feeds: int = 8
    metric: str = "auto"
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.latency not in LATENCY_MODES:
            raise UsageError(f"latency mode {self.latency!r} is not one of {', '.join(LATENCY_MODES)}")
        if self.repeat < 1 or self.warmup < 0 or self.profile_runs < 0:
            raise UsageError("repeat must be at least 1, warmup and profile_runs at least 0")


@dataclass
class _Subject:
    """One artifact under test and what is known about where it came from."""

    artifact: Artifact
    target: targets.Target
    onnx_model: str | Path | bytes | None  # the FP32 source, for ONNX Runtime
    graph: Graph | None  # the imported FP32 graph
    quantized: Graph | None  # the graph with QuantSpecs (None for FP32 artifacts or prebuilt ones)
    lowered: Graph | None  # the graph the artifact computes (None for prebuilt artifacts)
    graph_json: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def bench(source: ModelLike | Artifact, target_names: Sequence[str] | str | None = None, *, data: Sequence[Feed],
          calibration: Sequence[Feed] | None = None, recipe: str | QuantRecipe | None = None,
          constraints: Constraints | None = None, eval_fn: EvalFn | None = None,
          input_shapes: dict[str, tuple[int, ...]] | None = None, fp32_model: str | Path | None = None,
          output_dir: str | Path | None = None, settings: BenchSettings | None = None) -> list[Report]:
    """One Report per target. `source` is a model (compiled here for each target, with `recipe`,
    `calibration` and `constraints` as bitsmith.compile takes them) or an artifact (directory or
    Artifact; its own target only; `fp32_model` is its FP32 ONNX source for the accuracy metric and
    ONNX Runtime). `data` are the evaluation feeds, in the compiled input shapes. `target_names`
    defaults to the artifact's own target, or "host" for a model."""
    settings = settings or BenchSettings()
    if isinstance(source, (str, Path)) and _is_artifact_dir(source):
        source = Artifact.load(source)
    if target_names is None:
        target_names = source.target if isinstance(source, Artifact) else "host"
    names = [target_names] if isinstance(target_names, str) else list(target_names)
    if not data:
        raise DataError("bench needs evaluation data: at least one feed {input name: array}")
    reports = []
    for name in names:
        subject = _subject(source, name, calibration=calibration, recipe=recipe, constraints=constraints,
                           eval_fn=eval_fn, input_shapes=input_shapes, fp32_model=fp32_model,
                           output_dir=output_dir, quiet=settings.quiet)
        reports.append(measure(subject, data, calibration, eval_fn, settings))
    scale_predictions(reports)
    return reports


def _subject(source: ModelLike | Artifact, target_name: str, *, calibration: Sequence[Feed] | None,
             recipe: str | QuantRecipe | None, constraints: Constraints | None, eval_fn: EvalFn | None,
             input_shapes: dict[str, tuple[int, ...]] | None, fp32_model: str | Path | None,
             output_dir: str | Path | None, quiet: bool) -> _Subject:
    target = targets.load(target_name)
    if isinstance(source, Artifact) or _is_artifact_dir(source):
        artifact = source if isinstance(source, Artifact) else Artifact.load(source)  # type: ignore[arg-type]
        if target.name != artifact.target:
            raise UsageError(f"artifact {artifact.path} was built for target {artifact.target!r}, not {target.name!r}; "
                             "bench it on its own target, or bench the model to compile it for others")
        return subject_from_artifact(artifact, fp32_model)
    out = Path(output_dir) / target.name if output_dir is not None else None
    compiled = compile_traced(source, target, calibration=calibration, recipe=recipe, constraints=constraints,
                              eval_fn=eval_fn, input_shapes=input_shapes, output_dir=out, quiet=quiet)
    onnx_model = source if isinstance(source, (str, Path, bytes)) else None
    return subject_from_compile(compiled, target, onnx_model)


def _is_artifact_dir(source: object) -> bool:
    return isinstance(source, (str, Path)) and Path(source).is_dir()


def subject_from_compile(compiled: Compiled, target: targets.Target, onnx_model: str | Path | bytes | None) -> _Subject:
    return _Subject(compiled.artifact, target, onnx_model, compiled.graph, compiled.quantized, compiled.lowered,
                    _read_json(compiled.artifact, GRAPH), _read_plan(compiled.artifact))


def subject_from_artifact(artifact: Artifact, fp32_model: str | Path | None) -> _Subject:
    graph = None
    if fp32_model is not None:
        graph = load_model(fp32_model, {spec.name: spec.shape for spec in artifact.inputs})
    return _Subject(artifact, targets.load(artifact.target), fp32_model, graph, None, None,
                    _read_json(artifact, GRAPH), _read_plan(artifact))


def _read_json(artifact: Artifact, member: str) -> dict[str, Any]:
    return json.loads((artifact.path / member).read_text()) if (artifact.path / member).is_file() else {}


def _read_plan(artifact: Artifact) -> dict[str, Any] | None:
    member = artifact.manifest.get("precision_plan")
    return _read_json(artifact, member) if member == PLAN_FILE else None


# ---------------------------------------------------------------------------------------------
# One target
# ---------------------------------------------------------------------------------------------
def measure(subject: _Subject, data: Sequence[Feed], calibration: Sequence[Feed] | None, eval_fn: EvalFn | None,
            settings: BenchSettings) -> Report:
    """The report of one artifact on its target (see the module doc for what is measured)."""
    target, artifact = subject.target, subject.artifact
    runs_here = target.runs_on_host() and settings.latency != "predicted"
    if settings.latency == "measured" and not target.runs_on_host():
        raise UsageError(f"target {target.name!r} does not run on this machine; use latency mode auto or predicted")
    costs = latency_model.predict(subject.graph_json, target) if subject.graph_json else []
    ort = _ort_sessions(subject, calibration, settings) if runs_here and settings.baselines else {}
    latency, baselines = _latency(subject, data[0], costs, ort, runs_here, settings)
    kernels = profile_kernels(artifact, data[0], settings.profile_runs) if runs_here and settings.profile_runs else []
    run_quantized = _quantized_runner(subject, runs_here)
    run_fp32 = _fp32_runner(subject, ort.get("onnxruntime_fp32"))
    accuracy = _accuracy(run_fp32, run_quantized, data, eval_fn, settings, _accuracy_source(artifact, runs_here))
    for name, session in ort.items():
        if run_fp32 is not None and session.get("session") is not None and name != "onnxruntime_fp32":
            baselines[name]["accuracy"] = _accuracy(run_fp32, _session_runner(session["session"]), data, eval_fn,
                                                    settings, name)
    memory = _memory(subject, data[0], runs_here and settings.memory)
    layers = layer_table(subject, costs, kernels, data[: settings.sqnr_feeds], settings.quiet)
    batch = _batch(artifact)
    doc = {
        "model": {"name": artifact.manifest["model"]["name"], "sha256": artifact.manifest["model"]["sha256"],
                  "parameters": artifact.manifest["model"]["parameters"]},
        "target": {"name": target.name, "family": target.family, "description": target.description,
                   "runs_here": target.runs_on_host(), "cores": target.cores},
        "artifact": {"path": str(artifact.path), "size_bytes": artifact.size_bytes(),
                     "weights_bytes": (artifact.path / artifact.manifest["weights"]).stat().st_size,
                     "precision": artifact.manifest.get("precision", "fp32"),
                     "recipe": _recipe_summary(artifact.manifest.get("formats")),
                     "constraints": artifact.manifest.get("constraints")},
        "host": _host(),
        "batch": batch,
        "latency": latency,
        "throughput": {"samples_per_s": batch * 1e3 / latency["mean_ms"] if latency.get("mean_ms") else None,
                       "source": latency["source"]},
        "memory": memory,
        "accuracy": accuracy,
        "baselines": baselines,
        "layers": layers,
        "kernels": _kernel_summary(kernels),
        "float_ops": _float_ops(subject.graph_json) if artifact.manifest.get("formats") else {},
        "precision_plan": subject.plan,
    }
    return Report.create(doc)


def _recipe_summary(formats: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not formats:
        return None
    keys = ("weights", "activations", "weight_granularity", "algorithms", "emulated", "execution")
    return {key: formats.get(key) for key in keys}


def _accuracy_source(artifact: Artifact, runs_here: bool) -> str:
    if runs_here:
        return "artifact"
    if artifact.manifest.get("formats"):
        return "integer reference interpreter (the artifact's integers)"
    return "reference interpreter on the compiled FP32 graph"


def _batch(artifact: Artifact) -> int:
    return int(artifact.inputs[0].shape[0]) if artifact.inputs and artifact.inputs[0].shape else 1


def _host() -> dict[str, Any]:
    return {"machine": platform.machine(), "cpu": _cpu_name(), "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "bitsmith": __version__}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- latency ----------------------------------------------------------------------------------
def _stats(times: list[float]) -> dict[str, Any]:
    values = np.asarray(times)
    return {**{f"p{q}_ms": float(np.percentile(values, q)) for q in PERCENTILES},
            "mean_ms": float(values.mean()), "runs": len(times)}


def time_alternating(contenders: Mapping[str, Callable[[], object]], repeat: int, warmup: int, quiet: bool,
                     desc: str) -> dict[str, list[float]]:
    """Milliseconds of each contender's runs, interleaved run by run after warm-up, with a progress bar."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in tqdm(range(repeat), desc=desc, disable=quiet, leave=False):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _latency(subject: _Subject, feed: Feed, costs: list[latency_model.NodeCost], ort: dict[str, dict[str, Any]],
             runs_here: bool, settings: BenchSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    predicted = latency_model.predicted_ms(costs) if costs else None
    if not runs_here:
        latency = {"source": "predicted", "p50_ms": predicted, "p95_ms": predicted, "p99_ms": predicted,
                   "mean_ms": predicted, "runs": 0, "predicted_ms": predicted,
                   "model": "roofline (compiler/latency_model.py)"}
        reason = (f"target {subject.target.name} does not run on this machine" if not subject.target.runs_on_host()
                  else "latency mode 'predicted'")
        return latency, {name: {"status": f"not run: {reason}"} for name in ("onnxruntime_fp32", "onnxruntime_int8")}
    artifact = subject.artifact
    contenders: dict[str, Callable[[], object]] = {"bitsmith": lambda: artifact.run(feed)}
    for name, entry in ort.items():
        if entry.get("session") is not None:
            contenders[name] = (lambda s: lambda: s.run(None, dict(feed)))(entry["session"])
    times = time_alternating(contenders, settings.repeat, settings.warmup, settings.quiet,
                             f"bench {subject.target.name}")
    latency = {"source": "measured", **_stats(times["bitsmith"]), "predicted_ms": predicted,
               "model": "roofline (compiler/latency_model.py)", "threads": subject.target.cores}
    baselines: dict[str, Any] = {}
    for name, entry in ort.items():
        if name in times:
            stats = _stats(times[name])
            baselines[name] = {"status": "measured", **stats, "notes": entry.get("notes", ""),
                               "bitsmith_speedup": stats["p50_ms"] / latency["p50_ms"]}
        else:
            baselines[name] = {"status": entry["status"]}
    return latency, baselines


def scale_predictions(reports: Sequence[Report]) -> None:
    """Where one target was measured and another only predicted (same family, same artifact kind),
    add the prediction scaled by the measured target's measured / predicted ratio: the roofline's
    error on this model, measured, carried over."""
    measured = [r for r in reports if r.data["latency"]["source"] == "measured" and r.data["latency"]["predicted_ms"]]
    for report in reports:
        latency = report.data["latency"]
        if latency["source"] != "predicted" or not latency["predicted_ms"]:
            continue
        peers = [m for m in measured if m.data["target"]["family"] == report.data["target"]["family"]]
        if peers:
            peer = peers[0].data["latency"]
            latency["scaled_by"] = peers[0].data["target"]["name"]
            latency["predicted_scaled_ms"] = latency["predicted_ms"] * peer["p50_ms"] / peer["predicted_ms"]


# -- ONNX Runtime baselines -----------------------------------------------------------------------
def _ort_sessions(subject: _Subject, calibration: Sequence[Feed] | None,
                  settings: BenchSettings) -> dict[str, dict[str, Any]]:
    from .measure import ort_session

    if subject.onnx_model is None:
        reason = "not run: the FP32 ONNX source is unknown (bench the model, or give the artifact's FP32 model)"
        return {"onnxruntime_fp32": {"status": reason}, "onnxruntime_int8": {"status": reason}}
    threads = subject.target.cores
    fp32 = ort_session(subject.onnx_model, threads, spin=False)
    sessions: dict[str, dict[str, Any]] = {"onnxruntime_fp32": {"session": fp32, "status": "measured",
                                                                "notes": SPIN_NOTE}}
    if not calibration:
        sessions["onnxruntime_int8"] = {"status": "not run: no calibration data for quantize_static"}
    else:
        sessions["onnxruntime_int8"] = _ort_int8(subject.onnx_model, calibration, threads)
    return sessions


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self.items = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self.items, None)
        return dict(item) if item is not None else None


def _ort_int8(onnx_model: str | Path | bytes, calibration: Sequence[Feed], threads: int) -> dict[str, Any]:
    """ONNX Runtime's own INT8: quantize_static (QDQ, per-channel INT8 weights, UINT8 activations, MinMax)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .measure import ort_session

    with tempfile.TemporaryDirectory(prefix="bitsmith-ort-") as tmp:
        source = Path(tmp) / "fp32.onnx"
        if isinstance(onnx_model, bytes):
            source.write_bytes(onnx_model)
        else:
            source = Path(onnx_model)
        prepared, out = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"

        def run(options: dict[str, Any]) -> None:
            quantize_static(str(prepared), str(out), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, extra_options=options)

        notes = f"quantize_static: QDQ, per-channel int8 weights, uint8 activations, MinMax calibration; {SPIN_NOTE}"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            try:
                run({})
            except ValueError:
                # ORT 1.31's int32-bias weight-scale adjustment crashes on some per-channel layers; its
                # documented switch skips that adjustment (scripts/quant_accuracy.py)
                run({"QDQDisableWeightAdjustForInt32Bias": True})
                notes += " (QDQDisableWeightAdjustForInt32Bias)"
            session = ort_session(out.read_bytes(), threads, spin=False)
        except Exception as exc:  # ORT's own tool failing is a result to report, not a reason to stop
            return {"status": f"failed: onnxruntime.quantization: {type(exc).__name__}: {exc}"}
    return {"session": session, "status": "measured", "notes": notes}


def _session_runner(session: Any) -> Runner:
    names = [o.name for o in session.get_outputs()]
    return lambda feed: dict(zip(names, session.run(names, dict(feed))))


# -- accuracy ---------------------------------------------------------------------------------------
def _quantized_runner(subject: _Subject, runs_here: bool) -> Runner | None:
    if runs_here:
        return subject.artifact.run
    if subject.lowered is not None:
        from .simulate import Simulator

        reference = Simulator(subject.lowered, quantized=False)
        return reference.run
    return None


def _fp32_runner(subject: _Subject, ort_fp32: dict[str, Any] | None) -> Runner | None:
    if ort_fp32 is not None and ort_fp32.get("session") is not None:
        return _session_runner(ort_fp32["session"])
    if subject.graph is not None:
        from .simulate import Simulator

        return Simulator(subject.graph, quantized=False).run
    return None


def _accuracy(run_fp32: Runner | None, run_quantized: Runner | None, data: Sequence[Feed], eval_fn: EvalFn | None,
              settings: BenchSettings, source: str) -> dict[str, Any]:
    if run_fp32 is None or run_quantized is None:
        missing = "the FP32 model" if run_fp32 is None else "a way to run the artifact here"
        return {"status": f"not computed: needs {missing}", "metric": None, "value": None, "fp32": None, "drop": None}
    if eval_fn is not None:
        reference, ours = metric_value(eval_fn(run_fp32)), metric_value(eval_fn(run_quantized))
        return {"status": "measured", "metric": f"eval_fn:{getattr(eval_fn, '__name__', 'metric')}", "value": ours,
                "fp32": reference,
                "drop": (reference - ours) / abs(reference) if reference else None, "source": source,
                "details": {}}
    fp32_out = [run_fp32(f) for f in tqdm(data, desc="evaluate fp32", disable=settings.quiet, leave=False)]
    ours_out = [run_quantized(f) for f in tqdm(data, desc=f"evaluate {source.split()[0]}", disable=settings.quiet,
                                                leave=False)]
    metric, value, details = fidelity(fp32_out, ours_out, settings.metric)
    return {"status": "measured", "metric": metric, "value": value, "fp32": 1.0, "drop": 1.0 - value,
            "samples": details.pop("samples"), "source": source, "details": details}


# -- per-kernel and per-layer ---------------------------------------------------------------------
def profile_kernels(artifact: Artifact, feed: Feed, runs: int) -> list[tuple[str, float]]:
    """(symbol, median ms over `runs` runs) of each call main makes, in call order."""
    runner = artifact._runner
    inputs = artifact._ordered_inputs(feed)
    profiles = [runner.profile(inputs, artifact._params) for _ in range(max(runs, 1))]
    return [(symbol, float(np.median([p[i][1] for p in profiles]))) for i, (symbol, _) in enumerate(profiles[0])]


def _is_layer_kernel(symbol: str) -> bool:
    return ("conv2d" in symbol or "matmul" in symbol) and not symbol.endswith("weight_prepack")


def _kernel_summary(kernels: list[tuple[str, float]]) -> list[dict[str, Any]]:
    by_symbol: dict[str, dict[str, Any]] = {}
    for symbol, ms in kernels:
        kind = "vm" if symbol.startswith("vm.builtin") else "kernel"
        entry = by_symbol.setdefault(symbol, {"symbol": symbol, "kind": kind, "calls": 0, "measured_ms": 0.0})
        entry["calls"] += 1
        entry["measured_ms"] += ms
    return sorted(by_symbol.values(), key=lambda e: -e["measured_ms"])


def _layer_kernel_times(layer_nodes: list[str], kernels: list[tuple[str, float]]) -> dict[str, float]:
    """Each weighted layer's kernel time: the k-th conv/matmul kernel call is the k-th weighted layer
    (the lowering keeps graph order and the build fuses each into one kernel); none if the counts differ."""
    times = [ms for symbol, ms in kernels if _is_layer_kernel(symbol)]
    if len(times) != len(layer_nodes):
        if kernels:
            log.info("%d conv/matmul kernels for %d weighted layers: per-layer times not attributed",
                     len(times), len(layer_nodes))
        return {}
    return dict(zip(layer_nodes, times))


def layer_sqnr(graph: Graph, quantized: Graph, nodes: list[str], data: Sequence[Feed], quiet: bool) -> dict[str, float]:
    """SQNR (dB) of each weighted node's output in the quantized graph (fake-quantized execution)
    against the FP32 graph's, accumulated over `data`. Nodes whose output the FP32 graph lacks (renamed
    by a rewrite) are left out."""
    from .simulate import Simulator

    outputs = {node.name: node.outputs[0] for node in quantized.nodes if node.name in set(nodes)}
    shared = {name: value for name, value in outputs.items() if value in graph.values}
    keep = sorted(set(shared.values()) - set(graph.outputs))
    fp32, ours = Simulator(graph, quantized=False), Simulator(quantized)
    signal = {name: 0.0 for name in shared}
    noise = {name: 0.0 for name in shared}
    for feed in tqdm(data, desc="sqnr", disable=quiet, leave=False):
        a, b = fp32.run(feed, keep=keep), ours.run(feed, keep=keep)
        for name, value in shared.items():
            x, q = a[value].astype(np.float64), b[value].astype(np.float64)
            signal[name] += float((x * x).sum())
            noise[name] += float(((x - q) ** 2).sum())
    return {name: sqnr_db(signal[name], noise[name]) for name in shared}


def _bits(fmt: str | None) -> int:
    return 32 if fmt in (None, "fp32", "float32") else int(format_info(fmt).bits)


def layer_table(subject: _Subject, costs: list[latency_model.NodeCost], kernels: list[tuple[str, float]],
                sqnr_data: Sequence[Feed], quiet: bool) -> list[dict[str, Any]]:
    """One row per weighted layer (Conv / MatMul) of the compiled graph, in graph order."""
    graph_json = subject.graph_json
    if not graph_json:
        return []
    values, constants = graph_json["values"], set(graph_json.get("constants", []))
    nodes = [n for n in graph_json["nodes"] if n["op"] in latency_model.WEIGHTED_OPS]
    names = [n["name"] for n in nodes]
    formats = {row["node"]: row for row in (subject.artifact.manifest.get("formats") or {}).get("layers", [])}
    cost_of = {c.node: c for c in costs}
    measured = _layer_kernel_times(names, kernels)
    sqnr = (layer_sqnr(subject.graph, subject.quantized, names, sqnr_data, quiet)
            if subject.graph is not None and subject.quantized is not None and sqnr_data else {})
    sensitivity = {row.get("node", row.get("name")): row for row in (subject.plan or {}).get("layers", [])}
    quantized = bool(formats)
    rows = []
    for node in nodes:
        info = formats.get(node["name"], {})
        weight = node["inputs"][1] if len(node["inputs"]) > 1 else None
        w_fmt = info.get("weights") or "fp32"
        a_fmt = info.get("activations") or "fp32"
        lowered = info.get("lowered", node["op"])
        plan_row = sensitivity.get(node["name"])
        cost = cost_of.get(node["name"])
        rows.append({
            "name": node["name"], "op": info.get("op", node["op"]), "kernel": lowered,
            "params": int(np.prod(values[weight]["shape"])) if weight in constants else 0,
            "macs": cost.macs if cost else None,
            "weight_format": w_fmt, "weight_bits": _bits(w_fmt),
            "activation_format": a_fmt, "activation_bits": _bits(a_fmt),
            "fallback": "float" if quantized and lowered == "float" else None,
            "device": "cpu",
            "sensitivity": plan_sensitivity(plan_row) if plan_row else None,
            "sqnr_db": sqnr.get(node["name"]),
            "predicted_ms": cost.predicted_ms if cost else None,
            "bound": cost.bound if cost else None,
            "measured_ms": measured.get(node["name"]),
        })
    return rows


def plan_sensitivity(row: Mapping[str, Any]) -> dict[str, Any]:
    """A precision-plan layer row as the report shows it: the Hessian trace per parameter (HAWQ-V2's
    Tr(H)/n), and Omega = Tr(H)/n * ||Q(W) - W||^2 of the format chosen."""
    omega = row.get("omega")
    if isinstance(omega, Mapping):
        omega = omega.get(row.get("chosen"))
    return {"trace": row.get("average_trace", row.get("trace")), "omega": omega, "chosen": row.get("chosen")}


def _float_ops(graph_json: Mapping[str, Any]) -> dict[str, int]:
    """Ops of a quantized artifact that compute in float (dequantized borders around them)."""
    integer_or_layout = {"QuantizeLinear", "DequantizeLinear", "Reshape", "Transpose", "Flatten", "Squeeze",
                         "Unsqueeze", "Concat", "Slice", "Gather", "MaxPool", "Identity", "Split", "Expand",
                         "QuantizeFloat", "DequantizeFloat", "DequantizeWeight", "UnpackCodes"}
    counts: dict[str, int] = {}
    for node in graph_json.get("nodes", []):
        if not node["op"].startswith("Q") and node["op"] not in integer_or_layout:
            counts[node["op"]] = counts.get(node["op"], 0) + 1
    return dict(sorted(counts.items()))


# -- memory -------------------------------------------------------------------------------------------
def _memory(subject: _Subject, feed: Feed, run_probe: bool) -> dict[str, Any]:
    weights = (subject.artifact.path / subject.artifact.manifest["weights"]).stat().st_size
    out: dict[str, Any] = {"weights_mb": weights / 1e6,
                           "predicted_peak_activation_mb": peak_activation_bytes(subject.graph_json) / 1e6
                           if subject.graph_json else None}
    if not run_probe:
        out.update(peak_mb=None, source="not measured: the target does not run here")
        return out
    out.update(peak_mb=measured_peak_mb(subject.artifact.path, feed), source="measured")
    return out


def peak_activation_bytes(graph_json: Mapping[str, Any]) -> int:
    """The largest total size of activations alive at once, running nodes in graph order (a value
    lives from its producer to its last consumer; graph inputs and outputs live throughout)."""
    values = graph_json["values"]
    constants = set(graph_json.get("constants", []))
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph_json["nodes"]):
        for name in node["inputs"]:
            last_use[name] = index
    for name in graph_json["outputs"]:
        last_use[name] = len(graph_json["nodes"])
    size = {name: latency_model._tensor_bytes(v) for name, v in values.items()}
    live = {name for name in graph_json["inputs"]}
    peak = current = sum(size[n] for n in live)
    for index, node in enumerate(graph_json["nodes"]):
        for name in node["outputs"]:
            if name not in constants and name not in live:
                live.add(name)
                current += size[name]
        peak = max(peak, current)
        for name in [n for n in live if last_use.get(n, -1) <= index and n not in graph_json["outputs"]]:
            live.discard(name)
            current -= size[name]
    return int(peak)


_PROBE = """
import json, re, sys
import numpy as np
from bitsmith.artifact import Artifact

def rss_kib(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

feed = dict(np.load(sys.argv[2], allow_pickle=False))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current resident set
before = rss_kib("VmRSS")
artifact = Artifact.load(sys.argv[1])
for _ in range(int(sys.argv[3])):
    artifact.run(feed)
print(json.dumps({"before_kib": before, "peak_kib": rss_kib("VmHWM")}))
"""


def measured_peak_mb(artifact_path: Path, feed: Feed, runs: int = 3) -> float | None:
    """Peak resident memory (MB) that loading and running the artifact adds to a fresh Python process
    that has imported bitsmith: VmHWM after the runs minus VmRSS before loading, with the high-water
    mark reset first. None where /proc/self/clear_refs is unavailable (not Linux)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    with tempfile.TemporaryDirectory(prefix="bitsmith-mem-") as tmp:
        feed_path = Path(tmp) / "feed.npz"
        np.savez(feed_path, **{k: np.asarray(v) for k, v in feed.items()})  # type: ignore[arg-type]
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(artifact_path), str(feed_path), str(runs)],
                              capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        log.warning("memory probe failed: %s", proc.stderr.strip().splitlines()[-1:] or proc.returncode)
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return (result["peak_kib"] - result["before_kib"]) * 1024 / 1e6


def artifact_report(artifact: Artifact, data: Sequence[Feed] | None = None, *, fp32_model: str | Path | None = None,
                    calibration: Sequence[Feed] | None = None, eval_fn: EvalFn | None = None,
                    settings: BenchSettings | None = None) -> Report:
    """The report of a built artifact (Artifact.report): measured with `data` where given, else from
    what the artifact holds (formats, plan, predicted latency) with latency timed on zero inputs."""
    settings = settings or BenchSettings()
    subject = subject_from_artifact(artifact, fp32_model)
    feeds: Sequence[Feed] = data or [{s.name: np.zeros(s.shape, s.dtype) for s in artifact.inputs}]
    if not data:
        settings = BenchSettings(**{**settings.__dict__, "sqnr_feeds": 0})
    report = measure(subject, feeds, calibration, eval_fn if data else None, settings)
    if not data:
        report.data["accuracy"] = {"status": "not computed: no evaluation data", "metric": None, "value": None,
                                   "fp32": None, "drop": None}
        report.data["latency"]["inputs"] = "zeros"
    return report
