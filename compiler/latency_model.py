"""Predicted latency of a compiled graph on a target, from the target's data alone: a roofline.

Roofline model (Williams, Waterman and Patterson, "Roofline: an insightful visual performance model
for multicore architectures", CACM 2009): a kernel takes at least its operations divided by the
peak throughput of the format it computes in, and at least the bytes it moves divided by the memory
bandwidth; its time is the larger of the two, plus a fixed launch cost. Per node of the compiled
(lowered) graph:

    ops   = 2 x MACs (Conv / QConv / MatMul / QMatMul), else one op per output element
    bytes = every input and output tensor once (weights included)
    time  = max(ops / (peak_gops(format) x COMPUTE_EFFICIENCY), bytes / dram_bandwidth) + KERNEL_OVERHEAD

`format` is int8 for the integer kernels (QConv, QMatMul: int8 x int8 -> int32) and fp32 otherwise.
The target files (compiler/targets/*.json) give cores, clock, peak ops per cycle per format and DRAM
bandwidth. Real kernels reach a fraction of peak: COMPUTE_EFFICIENCY is that fraction, one number
for every target, so predictions for two targets compare as their data do. A report shows the
prediction next to the measured time wherever the target runs, which is how to read its error.

It reads only the graph's structure (shapes, dtypes, attributes): an artifact's graph.json suffices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from .targets import Target

COMPUTE_EFFICIENCY = 0.25  # achieved / peak compute of tiled CPU kernels (a roofline's usual range: 0.1-0.5)
KERNEL_OVERHEAD_MS = 0.002  # one kernel call through the Relax VM (measured: 1-5 us)
WEIGHTED_OPS = ("Conv", "QConv", "MatMul", "QMatMul", "ConvTranspose")
INTEGER_OPS = ("QConv", "QMatMul")
# ops that cost nothing at run time: the VM reinterprets their input (views, metadata)
FREE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")

DTYPE_BYTES = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "int16": 2, "uint16": 2,
               "int8": 1, "uint8": 1, "bool": 1, "float64": 8}


@dataclass(frozen=True)
class NodeCost:
    """The roofline of one node: what it computes and moves, and its predicted time."""

    node: str
    op: str
    macs: int
    ops: int
    bytes: int
    format: str
    bound: str  # "compute" or "memory"
    predicted_ms: float


def _elements(shape: list[int]) -> int:
    return int(math.prod(shape)) if shape else 1


def _tensor_bytes(value: Mapping[str, Any]) -> int:
    return _elements(value["shape"]) * DTYPE_BYTES.get(value["dtype"], 4)


def node_macs(node: Mapping[str, Any], values: Mapping[str, Mapping[str, Any]]) -> int:
    """Multiply-accumulates of a convolution or matrix product (0 for other ops)."""
    if node["op"] not in WEIGHTED_OPS or len(node["inputs"]) < 2:
        return 0
    out = values[node["outputs"][0]]["shape"]
    weight = values[node["inputs"][1]]["shape"]
    if node["op"] in ("Conv", "QConv"):
        # every output element sums (C_in / groups) x kernel window products; the weight is [C_out, C_in/g, kh, kw]
        return _elements(out) * _elements(weight[1:])
    if node["op"] == "ConvTranspose":
        return _elements(values[node["inputs"][0]]["shape"]) * _elements(weight[1:])
    return _elements(out) * int(weight[-2] if len(weight) >= 2 else weight[0])


def node_format(node: Mapping[str, Any]) -> str:
    return "int8" if node["op"] in INTEGER_OPS else "fp32"


def node_cost(node: Mapping[str, Any], values: Mapping[str, Mapping[str, Any]], target: Target) -> NodeCost:
    macs = node_macs(node, values)
    ops = 2 * macs if macs else sum(_elements(values[o]["shape"]) for o in node["outputs"])
    moved = sum(_tensor_bytes(values[name]) for name in [*node["inputs"], *node["outputs"]] if name in values)
    fmt = node_format(node)
    if node["op"] in FREE_OPS:
        return NodeCost(node["name"], node["op"], 0, 0, 0, fmt, "memory", 0.0)
    peak = target.peak_gops(fmt) or target.peak_gops("fp32")
    compute_ms = ops / (peak * 1e9 * COMPUTE_EFFICIENCY) * 1e3 if peak else math.inf
    bandwidth = float(target.memory.get("dram_gb_per_s", 10.0))
    memory_ms = moved / (bandwidth * 1e9) * 1e3
    bound = "compute" if compute_ms >= memory_ms else "memory"
    return NodeCost(node["name"], node["op"], macs, ops, moved, fmt, bound,
                    max(compute_ms, memory_ms) + KERNEL_OVERHEAD_MS)


def predict(graph_json: Mapping[str, Any], target: Target) -> list[NodeCost]:
    """The roofline cost of every node of a graph (graph.json's structure), in graph order."""
    values = graph_json["values"]
    return [node_cost(node, values, target) for node in graph_json["nodes"]]


def predicted_ms(costs: list[NodeCost]) -> float:
    return float(sum(c.predicted_ms for c in costs))
