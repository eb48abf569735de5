"""Where quantizers sit, and which of them must agree (tied quantizers).

Weights: the constant weight operand of Conv, ConvTranspose and MatMul, quantized per output
channel (or in blocks along the reduction axis).

Activations: the integer region grows backwards from the inputs of Conv / ConvTranspose / MatMul:
- scale-preserving ops (MaxPool, Reshape, Transpose, Squeeze, Unsqueeze, Slice, Concat, Split,
  nearest Resize, DepthToSpace) whose output is quantized get their input quantized too, *tied* to
  the output: integer code in, same integer code out;
- integer-arithmetic ops (Add of two activations, AveragePool, GlobalAveragePool) whose output is
  quantized get their inputs quantized with their own scales (rescaled in the integer domain);
- anything else (a Conv/MatMul output with its bias and activation, LayerNorm, Softmax, ...) is a
  border: the value is quantized where it is produced (fused requantize, or a float op's output).
Tied groups are the connected components of the tie relation (networkx), so two quantizers that
must agree are found from the graph alone, and `check_ties` proves they do.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from ..errors import IRError
from ..ir import Graph, Node

WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul")
SCALE_PRESERVING = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Concat", "Split",
                    "DepthToSpace", "Resize")
INTEGER_ARITHMETIC = ("Add", "AveragePool", "GlobalAveragePool")


@dataclass(frozen=True)
class WeightPoint:
    """A weight constant and the axes that matter for quantizing it."""

    name: str
    node: str
    channel_axis: int   # one scale per output channel along this axis
    reduce_axis: int    # blocks of block formats run along this (input-channel / K) axis


def weight_points(graph: Graph) -> dict[str, WeightPoint]:
    points: dict[str, WeightPoint] = {}
    for node in graph.nodes:
        point = _weight_point(graph, node)
        if point is not None and point.name not in points:
            points[point.name] = point
    return points


def _weight_point(graph: Graph, node: Node) -> WeightPoint | None:
    if node.op not in WEIGHTED_OPS or len(node.inputs) < 2:
        return None
    name = node.inputs[1]
    array = graph.constants.get(name)
    if array is None or array.dtype.kind != "f":
        return None
    if node.op == "Conv":
        return WeightPoint(name, node.name, 0, 1)
    if node.op == "ConvTranspose":
        return WeightPoint(name, node.name, 1, 0)
    if array.ndim < 2:
        return None
    return WeightPoint(name, node.name, array.ndim - 1, array.ndim - 2)


def _is_activation(graph: Graph, name: str) -> bool:
    return bool(name) and name not in graph.constants and graph.values[name].dtype.startswith("float")


def _is_tying(node: Node) -> bool:
    if node.op == "Resize":
        return node.attrs.get("mode") == "nearest"
    return node.op in SCALE_PRESERVING


def _propagates(graph: Graph, node: Node) -> bool:
    """Integer-arithmetic ops propagate quantization to their inputs; Add only between two activations."""
    if node.op == "Add":
        return all(_is_activation(graph, i) for i in node.inputs)
    return node.op in INTEGER_ARITHMETIC


def activation_points(graph: Graph) -> tuple[set[str], list[tuple[str, str]]]:
    """(activations to quantize, tie edges between them)."""
    producers = graph.producers()
    points: set[str] = set()
    ties: list[tuple[str, str]] = []
    work = [i for n in graph.nodes if n.op in WEIGHTED_OPS for i in n.inputs if _is_activation(graph, i)]
    while work:
        name = work.pop()
        if name in points:
            continue
        points.add(name)
        node = producers.get(name)
        if node is None:
            continue
        if _is_tying(node):
            data = [i for i in (node.inputs if node.op == "Concat" else node.inputs[:1]) if _is_activation(graph, i)]
            ties += [(name, i) for i in data]
            if node.op in ("Split", "Concat"):
                ties += [(name, o) for o in node.outputs if o != name and o in graph.values]
            work += data
        elif _propagates(graph, node):
            work += [i for i in node.inputs if _is_activation(graph, i)]
    return points, ties


def tied_groups(graph: Graph) -> list[list[str]]:
    """Groups of activation values that must share one quantizer (singletons included), sorted."""
    points, ties = activation_points(graph)
    relation = nx.Graph()
    relation.add_nodes_from(points)
    relation.add_edges_from((a, b) for a, b in ties if a in points or b in points)
    groups = [sorted(component) for component in nx.connected_components(relation)]
    return sorted(groups)


def check_ties(graph: Graph) -> None:
    """Raise IRError when two values that must share a quantizer carry different QuantSpecs."""
    for group in tied_groups(graph):
        specs = [(name, graph.values[name].quant) for name in group if name in graph.values]
        quantized = [(n, q) for n, q in specs if q is not None]
        if not quantized:
            continue
        if len(quantized) != len(specs):
            missing = [n for n, q in specs if q is None]
            raise IRError(f"tied values {group} are partly quantized: {missing} have no QuantSpec")
        first_name, first = quantized[0]
        for name, spec in quantized[1:]:
            if not spec.same_as(first):
                raise IRError(f"tied values {first_name!r} and {name!r} carry different QuantSpecs")
