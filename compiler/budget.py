"""Checks a built artifact against the user's Constraints (bitsmith.compile(..., constraints=...)).

Each constraint is measured on the artifact as built: size is the weights file (weight storage as the
artifact stores it, packed formats and scales included); latency the median of timed runs where the
target runs here, else the roofline prediction (latency_model.py); BOPs the sum over weighted layers of
MACs x weight bits x activation bits (HAWQ-V3); peak activations the liveness peak of the compiled
graph; metric drop the relative fall of eval_fn (or, as the precision search measures it, the mean
cosine similarity of the outputs with FP32's, fidelity.py) from FP32 on the calibration feeds. A violated constraint raises BudgetError (exit code 6) naming each one
with its measured value; the artifact stays on disk for inspection.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from . import latency_model
from .constraints import Constraints
from .errors import BudgetError
from .fidelity import fidelity, metric_value
from .formats import format_info

if TYPE_CHECKING:
    from .pipeline import Compiled, EvalFn

Feed = Mapping[str, np.ndarray]
LATENCY_RUNS = 10


def measured_budget(compiled: "Compiled", constraints: Constraints, feeds: Sequence[Feed],
                    eval_fn: "EvalFn | None") -> dict[str, float]:
    """The measured value of every constraint that is set: {Constraints field name: value}."""
    artifact = compiled.artifact
    graph_json = json.loads((artifact.path / "graph.json").read_text())
    values: dict[str, float] = {}
    if constraints.size_mb is not None:
        values["size_mb"] = (artifact.path / artifact.manifest["weights"]).stat().st_size / 1e6
    if constraints.latency_ms is not None:
        values["latency_ms"] = _latency_ms(compiled, graph_json, feeds)
    if constraints.bops_g is not None:
        values["bops_g"] = bops(graph_json, artifact.manifest) / 1e9
    if constraints.peak_activation_mb is not None:
        from .bench import peak_activation_bytes

        values["peak_activation_mb"] = peak_activation_bytes(graph_json) / 1e6
    if constraints.max_metric_drop is not None:
        values["max_metric_drop"] = _metric_drop(compiled, feeds, eval_fn)
    return values


def check_constraints(compiled: "Compiled", constraints: Constraints, feeds: Sequence[Feed],
                      eval_fn: "EvalFn | None") -> dict[str, float]:
    """Raise BudgetError unless every set constraint holds; returns the measured values."""
    measured = measured_budget(compiled, constraints, feeds, eval_fn)
    limits = constraints.to_json()
    failed = [f"{name} = {value:.4g} exceeds {limits[name]:.4g}" for name, value in measured.items()
              if value > limits[name]]
    if failed:
        raise BudgetError(f"the artifact {compiled.artifact.path} does not meet the budget: {'; '.join(failed)}. "
                          "Relax the constraint, or choose a smaller format (recipe) or a faster target.")
    return measured


def tightened_size_budget(compiled: "Compiled", constraints: Constraints, planned: Constraints) -> Constraints | None:
    """When the built weights exceed constraints.size_mb: the planner's budget less what the artifact
    stores beyond the plan's own count (biases, requantization constants), else None."""
    if constraints.size_mb is None or planned.size_mb is None or compiled.plan is None:
        return None
    artifact = compiled.artifact
    measured = (artifact.path / artifact.manifest["weights"]).stat().st_size / 1e6
    if measured <= constraints.size_mb:
        return None
    overhead = measured - float(compiled.plan.totals["size_bytes"]) / 1e6
    shrunk = min(constraints.size_mb - overhead, planned.size_mb * constraints.size_mb / measured)
    return replace(planned, size_mb=shrunk) if shrunk > 0 else None


def _latency_ms(compiled: "Compiled", graph_json: Mapping[str, Any], feeds: Sequence[Feed]) -> float:
    from .targets import load

    target = load(compiled.artifact.target)
    if not target.runs_on_host():
        return latency_model.predicted_ms(latency_model.predict(graph_json, target))
    artifact = compiled.artifact
    feed = feeds[0] if feeds else {s.name: np.zeros(s.shape, s.dtype) for s in artifact.inputs}
    return float(np.median(artifact.time(feed, repeat=LATENCY_RUNS)))


def bops(graph_json: Mapping[str, Any], manifest: Mapping[str, Any]) -> float:
    """Bit operations: MACs x weight bits x activation bits, summed over weighted layers."""
    layers = {row["node"]: row for row in (manifest.get("formats") or {}).get("layers", [])}
    total = 0.0
    for node in graph_json["nodes"]:
        macs = latency_model.node_macs(node, graph_json["values"])
        if macs:
            row = layers.get(node["name"], {})
            w_bits = format_info(row["weights"]).bits if row.get("weights") else 32
            a_bits = format_info(row["activations"]).bits if row.get("activations") else 32
            total += macs * w_bits * a_bits
    return total


def _metric_drop(compiled: "Compiled", feeds: Sequence[Feed], eval_fn: "EvalFn | None") -> float:
    from .simulate import Simulator

    run_fp32 = Simulator(compiled.graph, quantized=False).run
    run_ours = compiled.artifact.run
    if eval_fn is not None:
        reference, ours = metric_value(eval_fn(run_fp32)), metric_value(eval_fn(run_ours))
        return (reference - ours) / abs(reference) if reference else 0.0
    if not feeds:
        raise BudgetError("max_metric_drop needs data to measure the metric on: pass calibration feeds or an eval_fn")
    _, score, _ = fidelity([run_fp32(f) for f in feeds], [run_ours(f) for f in feeds], metric="cosine")
    return 1.0 - score
