"""What each per-layer precision choice costs on a target: candidates, bytes, BOPs, predicted latency.

Candidates (`candidates_for`): the weight formats the target computes natively or by emulation
(target file, `formats`), each at the granularity the format implies: per output channel for INT8 /
INT4 / FP8 E4M3 / FP8 E5M2 / FP4 E2M1, blocks along the reduction axis for MXFP4 (32), NVFP4 (16) and
MXFP8 (32), plus float (LayerFormat(None): the weight stays FP32) when the target lists "fp32".
Where the target lists INT4, per-group INT4 is a candidate too: groups of 128, 64 or 32 along the
reduction axis, each with its own FP32 scale (GPTQ's and AWQ's usual weight format), named
"int4/b128", "int4/b64", "int4/b32"; a group's scale costs 32 / group bits per weight.

Cost model (per weighted layer, per run of the graph as compiled, batch included):
- bytes: elements x bits / 8, plus the scales as stored (FP32 per channel or per block, E8M0 / E4M3
  per block, NVFP4's FP32 tensor scale). Weights are symmetric, so no zero points are stored.
- BOPs: MACs x weight bits x activation bits (HAWQ-V3); activations in float count 32 bits.
- latency: a roofline, max(compute, weight traffic). Compute is 2 x MACs at the target's peak
  ops/cycle x cores x clock for the format the multiply runs in: the weight format when the target
  computes it natively and the activations are quantized to a format of the same kind, else FP32
  (emulated formats are dequantized to FP32 in registers). Weight traffic is bytes over DRAM
  bandwidth. Ops without weights are not modelled (the same for every choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats import format_info, param_shape
from ..ir import Graph, Node
from ..recipes import LayerFormat
from ..targets import Target
from .quant_points import WeightPoint

FLOAT = LayerFormat(None)
# the candidate of each format name a target file may list, and the per-group variants of INT4
CANDIDATE_OF = {
    "int8": LayerFormat("int8"),
    "fp8_e4m3": LayerFormat("fp8_e4m3"),
    "fp8_e5m2": LayerFormat("fp8_e5m2"),
    "int4": LayerFormat("int4"),
    "int4/b128": LayerFormat("int4", "block", 128),
    "int4/b64": LayerFormat("int4", "block", 64),
    "int4/b32": LayerFormat("int4", "block", 32),
    "fp4_e2m1": LayerFormat("fp4_e2m1"),
    "mxfp4": LayerFormat("mxfp4", "block", 32),
    "nvfp4": LayerFormat("nvfp4", "block", 16),
    "mxfp8": LayerFormat("mxfp8", "block", 32),
    "fp32": FLOAT,
}
SCALE_BYTES = {"fp32": 4, "e8m0": 1, "e4m3": 1}


def bits_of(candidate: LayerFormat) -> int:
    return 32 if candidate.format is None else format_info(candidate.format).bits


def label(candidate: LayerFormat) -> str:
    """A short name: "int8", "fp8_e4m3", "mxfp4/b32", "fp32"."""
    if candidate.format is None:
        return "fp32"
    return candidate.format + (f"/b{candidate.block_size}" if candidate.granularity == "block" else "")


def candidates_for(target: Target, formats: tuple[str, ...] | None = None) -> list[LayerFormat]:
    """The target's weight candidates (all it lists, or only those `formats` names: keys of
    CANDIDATE_OF, e.g. "int4" per channel, "int4/b128" per group), in table order."""
    listed = set(target.formats.get("native", [])) | set(target.formats.get("emulated", []))
    wanted = set(formats) if formats is not None else set(CANDIDATE_OF)
    return [c for name, c in CANDIDATE_OF.items() if (c.format or "fp32") in listed and name in wanted]


@dataclass(frozen=True)
class LayerCost:
    bytes: float
    bops: float
    latency_ms: float


def macs(graph: Graph, node: Node) -> int:
    """Multiply-accumulates of one Conv / ConvTranspose / MatMul run."""
    weight = graph.values[node.inputs[1]].shape
    if node.op == "MatMul":
        return graph.values[node.outputs[0]].size * weight[-2]
    if node.op == "Conv":
        return graph.values[node.outputs[0]].size * int(np.prod(weight[1:]))
    return graph.values[node.inputs[0]].size * int(np.prod(weight[1:]))  # ConvTranspose: per input element


def weight_bytes(shape: tuple[int, ...], point: WeightPoint, candidate: LayerFormat) -> float:
    numel = int(np.prod(shape))
    if candidate.format is None:
        return 4.0 * numel
    info = format_info(candidate.format)
    if candidate.granularity == "block":
        block = candidate.block_size or info.block_size
        scales = int(np.prod(param_shape(shape, "block", point.reduce_axis, block)))
    else:
        scales = int(np.prod(param_shape(shape, candidate.granularity, point.channel_axis, None)))
    tensor_scale = 4 if info.scale_format == "e4m3" else 0
    return numel * info.bits / 8 + scales * SCALE_BYTES[info.scale_format] + tensor_scale


def layer_cost(graph: Graph, nodes: list[Node], point: WeightPoint, candidate: LayerFormat, target: Target,
               activations: str | None) -> LayerCost:
    """Cost of one weight at `candidate`, summed over the nodes that read it."""
    size = weight_bytes(graph.values[point.name].shape, point, candidate)
    activation_bits = 32 if activations is None else format_info(activations).bits
    total_macs = sum(macs(graph, node) for node in nodes)
    compute_format = _compute_format(candidate, activations, target)
    peak_ops_per_s = target.peak_gops(compute_format) * 1e9
    compute_s = 2 * total_macs / peak_ops_per_s if peak_ops_per_s else 0.0
    traffic_s = size / (target.memory.get("dram_gb_per_s", 0) * 1e9) if target.memory.get("dram_gb_per_s") else 0.0
    return LayerCost(size, float(total_macs) * bits_of(candidate) * activation_bits, 1e3 * max(compute_s, traffic_s))


def _compute_format(candidate: LayerFormat, activations: str | None, target: Target) -> str:
    native = set(target.formats.get("native", []))
    fmt = candidate.format
    if fmt is None or activations is None or fmt not in native or fmt not in target.peak_ops_per_cycle_per_core:
        return "fp32"
    same_kind = format_info(fmt).is_float == format_info(activations).is_float
    return fmt if same_kind and format_info(activations).bits <= format_info(fmt).bits else "fp32"


def fixed_bytes(graph: Graph, quantizable: set[str]) -> float:
    """Bytes of the float constants no candidate changes (biases, embeddings, norms)."""
    return float(sum(a.nbytes for n, a in graph.constants.items() if n not in quantizable and a.dtype.kind == "f"))


def peak_activation_bytes(graph: Graph, activations: str | None) -> float:
    """The largest total size of float activations alive at once when the nodes run in graph order
    (each counted at the activation format's bits, 32 in float)."""
    bits = 32 if activations is None else format_info(activations).bits
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            last_use[name] = index
    live = {n: graph.values[n].size for n in graph.inputs}
    peak = sum(live.values())
    for index, node in enumerate(graph.nodes):
        for name in node.outputs:
            live[name] = graph.values[name].size
        peak = max(peak, sum(live.values()))
        for name in [n for n in live if last_use.get(n, -1) <= index and n not in graph.outputs]:
            del live[name]
    return peak * bits / 8
