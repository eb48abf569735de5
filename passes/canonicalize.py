"""Canonicalize what exporters spell out in elementary ops into the ops the quantizer takes whole.

Exporters that lower through TensorFlow (jax2tf, tf2onnx: magika) write a LayerNorm and a Softmax as
their arithmetic, and put a convolution's bias after the reshapes around it; no quantized kernel takes
those whole: the reductions and the rsqrt stay float between quantizers, and the bias is added in float
after the accumulator has left the integer domain. Rewrite rules (matched on the IR by the small pattern
helper `_Matcher`, which looks through Reshape / Expand / Squeeze / Unsqueeze that only add or drop
size-1 axes):

- LayerNorm over axes A of x (A contiguous, e.g. Flax's LayerNorm over one axis):
      mean = ReduceSum(x, A) * (1/C)   or ReduceMean(x, A)
      var  = [Max(0,] ReduceSum(x * x, A) * (1/C) - mean * mean [)]
      y    = (x - mean) * (Reciprocal(Sqrt(var + eps)) * gamma) + beta
  -> LayerNormalization(x, gamma, beta, axis, eps) over the trailing axes, between two Transposes when A
     is not trailing (e.g. magika normalizes axis 1 of [N, 512, 256]);
- Softmax along axis k:
      e = Exp(z - [Max(-inf,] ReduceMax(z, k) [)])   or Exp(z)
      y = e / ReduceSum(e, k)
  -> Softmax(z, axis=k);
- a per-output-channel bias Add after Squeeze / Unsqueeze / identity Slice of a Conv's output
      y = Add(Squeeze(Slice(Conv(x, w[, b0]))), b)   ->   Squeeze(Slice(Conv(x, w, b0 + b)))
  (where the constant varies along the convolution's channel axis only).

All keep the float semantics (up to float rounding: E[x^2] - E[x]^2 against the centered variance); the
outputs keep their names, so graph outputs do not change. Runs first in bitsmith.quantize. Ensures
"canonical".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node
from .base import Pass

log = logging.getLogger("bitsmith.passes.canonical_norms")

SIZE_ONE_OPS = ("Reshape", "Expand", "Squeeze", "Unsqueeze")


class Canonicalize(Pass):
    name = "canonicalize"
    ensures = ("canonical",)

    def run(self, graph: Graph) -> Graph:
        rewritten = {"LayerNormalization": 0, "Softmax": 0, "bias": 0}
        for node in list(graph.nodes):
            if node not in graph.nodes:  # removed with an earlier pattern
                continue
            matcher = _Matcher(graph)
            if node.op == "Add" and (norm := matcher.layer_norm(node)) is not None:
                _replace_layer_norm(graph, norm)
                rewritten["LayerNormalization"] += 1
            elif node.op == "Div" and (softmax := matcher.softmax(node)) is not None:
                _replace_softmax(graph, softmax)
                rewritten["Softmax"] += 1
            elif node.op == "Add" and (bias := matcher.reshaped_bias(node)) is not None:
                _fold_bias(graph, bias)
                rewritten["bias"] += 1
            else:
                continue
            graph.remove_unused()
        if any(rewritten.values()):
            log.info("canonicalized %s", rewritten)
        return graph


@dataclass(frozen=True)
class LayerNormMatch:
    x: str
    axes: tuple[int, ...]
    gamma: np.ndarray  # the normalized dims' shape
    beta: np.ndarray
    epsilon: float
    output: Node  # the final Add


@dataclass(frozen=True)
class BiasMatch:
    conv: Node
    bias: np.ndarray  # [output channels]
    source: str  # the value the Add adds the bias to (the last reshape's output)
    add: Node


@dataclass(frozen=True)
class SoftmaxMatch:
    z: str
    axis: int
    output: Node  # the Div


class _Matcher:
    """Pattern matching on the IR: a value's producer by op, seen through size-1 reshapes."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.producers = graph.producers()

    def through(self, name: str) -> str:
        """The value `name` is computed from by ops that only add or drop size-1 axes (same elements)."""
        while (node := self.producers.get(name)) is not None and node.op in SIZE_ONE_OPS:
            source = node.inputs[0]
            if int(np.prod(self.graph.values[source].shape)) != int(np.prod(self.graph.values[name].shape)):
                break
            name = source
        return name

    def node(self, name: str, *ops: str) -> Node | None:
        """The producer of `name` (through size-1 reshapes) when its op is one of `ops`."""
        node = self.producers.get(self.through(name))
        return node if node is not None and node.op in ops else None

    def scalar(self, name: str) -> float | None:
        array = self.graph.constants.get(name)
        return None if array is None or array.size != 1 else float(array.reshape(-1)[0])

    def split(self, node: Node) -> tuple[str, str] | None:
        """(activation, constant) inputs of a binary node, or None."""
        a, b = node.inputs
        if b in self.graph.constants and a not in self.graph.constants:
            return a, b
        if a in self.graph.constants and b not in self.graph.constants:
            return b, a
        return None

    def mean(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        """(x, axes) when `name` is the mean of x over axes: ReduceMean, or ReduceSum times 1 / count."""
        node = self.node(name, "ReduceMean", "Mul", "Div")
        if node is None:
            return None
        if node.op == "ReduceMean":
            return node.inputs[0], tuple(node.attrs["axes"])
        parts = self.split(node)
        if parts is None or (node.op == "Div" and parts[0] != node.inputs[0]):
            return None
        total = self.node(parts[0], "ReduceSum")
        factor = self.scalar(parts[1])
        if total is None or factor is None:
            return None
        factor = factor if node.op == "Mul" else 1.0 / factor
        axes = tuple(total.attrs["axes"])
        count = int(np.prod([self.graph.values[total.inputs[0]].shape[a] for a in axes]))
        return (total.inputs[0], axes) if np.isclose(factor * count, 1.0, rtol=1e-6) else None

    def variance(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        """(x, axes) when `name` is [Max(0,] mean(x * x) - mean(x)^2 [)]."""
        node = self.node(name, "Max", "Sub")
        if node is not None and node.op == "Max":
            parts = self.split(node) if len(node.inputs) == 2 else None
            if parts is None or self.scalar(parts[1]) != 0.0:
                return None
            node = self.node(parts[0], "Sub")
        if node is None:
            return None
        second, square = self.mean(node.inputs[0]), self.node(node.inputs[1], "Mul")
        if second is None or square is None or square.inputs[0] != square.inputs[1]:
            return None
        first = self.mean(square.inputs[0])
        product = self.node(second[0], "Mul")
        if first is None or product is None or product.inputs[0] != product.inputs[1] or \
                self.through(product.inputs[0]) != self.through(first[0]) or first[1] != second[1]:
            return None
        return self.through(first[0]), first[1]

    def layer_norm(self, add: Node) -> LayerNormMatch | None:
        parts = self.split(add) if len(add.inputs) == 2 else None
        scaled = self.producers.get(parts[0]) if parts is not None else None
        if parts is None or scaled is None or scaled.op != "Mul":
            return None
        for centered_name, factor_name in (scaled.inputs, scaled.inputs[::-1]):
            centered, factor = self.producers.get(centered_name), self.producers.get(factor_name)
            if centered is None or centered.op != "Sub" or factor is None or factor.op != "Mul":
                continue
            x, mean = centered.inputs
            stats = self.mean(mean)
            if stats is None or self.through(stats[0]) != self.through(x):
                continue
            found = self._inverse_std_times_gamma(factor)
            if found is None:
                continue
            variance, epsilon, gamma_name = found
            var_stats = self.variance(variance)
            if var_stats is None or var_stats[0] != self.through(x) or var_stats[1] != stats[1]:
                continue
            return self._layer_norm_match(x, stats[1], gamma_name, parts[1], epsilon, add)
        return None

    def _inverse_std_times_gamma(self, factor: Node) -> tuple[str, float, str] | None:
        """(variance value, epsilon, gamma constant) of Reciprocal(Sqrt(variance + eps)) * gamma."""
        parts = self.split(factor)
        if parts is None:
            return None
        inverse = self.node(parts[0], "Reciprocal")
        root = self.node(inverse.inputs[0], "Sqrt") if inverse is not None else None
        shifted = self.node(root.inputs[0], "Add") if root is not None else None
        split = self.split(shifted) if shifted is not None else None
        epsilon = self.scalar(split[1]) if split is not None else None
        if split is None or epsilon is None:
            return None
        return split[0], epsilon, parts[1]

    def _layer_norm_match(self, x: str, axes: tuple[int, ...], gamma_name: str, beta_name: str, epsilon: float,
                          add: Node) -> LayerNormMatch | None:
        shape = self.graph.values[x].shape
        axes = tuple(sorted(a % len(shape) for a in axes))
        if list(axes) != list(range(axes[0], axes[0] + len(axes))) or self.graph.values[add.outputs[0]].shape != shape:
            return None
        normalized = tuple(shape[a] for a in axes)
        parameters = []
        for name in (gamma_name, beta_name):
            array = self.graph.constants[name]
            if array.ndim > len(shape):
                return None
            aligned = array.reshape((1,) * (len(shape) - array.ndim) + array.shape)
            if any(d != 1 for a, d in enumerate(aligned.shape) if a not in axes):
                return None
            parameters.append(np.broadcast_to(aligned.reshape([aligned.shape[a] for a in axes]),
                                              normalized).astype(np.float32))
        return LayerNormMatch(x, axes, parameters[0], parameters[1], epsilon, add)

    def softmax(self, div: Node) -> SoftmaxMatch | None:
        exp = self.producers.get(div.inputs[0])
        total = self.node(div.inputs[1], "ReduceSum")
        if exp is None or exp.op != "Exp" or total is None or self.through(total.inputs[0]) != exp.outputs[0] \
                or len(total.attrs["axes"]) != 1:
            return None
        axis = int(total.attrs["axes"][0]) % len(self.graph.values[exp.outputs[0]].shape)
        z = exp.inputs[0]
        shifted = self.producers.get(z)
        if shifted is not None and shifted.op == "Sub":
            top = self.node(shifted.inputs[1], "Max", "ReduceMax")
            if top is not None and top.op == "Max":
                parts = self.split(top) if len(top.inputs) == 2 else None
                top = self.node(parts[0], "ReduceMax") if parts and self.scalar(parts[1]) == -np.inf else None
            if top is not None and self.through(top.inputs[0]) == shifted.inputs[0] and \
                    [a % len(self.graph.values[z].shape) for a in top.attrs["axes"]] == [axis]:
                z = shifted.inputs[0]  # softmax is invariant under the shift
        if self.graph.values[z].shape != self.graph.values[div.outputs[0]].shape:
            return None
        return SoftmaxMatch(z, axis, div)


    def reshaped_bias(self, add: Node) -> BiasMatch | None:
        """A bias Add whose activation comes from a Conv through Squeeze / Unsqueeze / identity Slice only."""
        parts = self.split(add) if len(add.inputs) == 2 else None
        if parts is None:
            return None
        consumers = self.graph.consumers()
        name, axis = parts[0], None
        path: list[Node] = []
        while (node := self.producers.get(name)) is not None and node.op in ("Squeeze", "Unsqueeze", "Slice") \
                and len(consumers.get(name, [])) == 1 and name not in self.graph.outputs:
            path.append(node)
            name = node.inputs[0]
        conv = self.producers.get(name)
        if not path or conv is None or conv.op != "Conv" or len(consumers.get(name, [])) != 1 \
                or name in self.graph.outputs or (len(conv.inputs) > 2 and conv.inputs[2] not in self.graph.constants):
            return None
        axis = 1  # the channel axis, followed through the reshapes
        for node in reversed(path):
            axis = _follow_axis(self.graph, node, axis)
            if axis is None:
                return None
        constant = self.graph.constants[parts[1]]
        shape = self.graph.values[add.outputs[0]].shape
        if constant.ndim > len(shape) or shape != self.graph.values[parts[0]].shape:
            return None
        aligned = constant.reshape((1,) * (len(shape) - constant.ndim) + constant.shape)
        channels = self.graph.values[conv.outputs[0]].shape[1]
        if any(d != 1 for a, d in enumerate(aligned.shape) if a != axis) or aligned.shape[axis] not in (1, channels):
            return None
        return BiasMatch(conv, np.broadcast_to(aligned.reshape(-1), (channels,)).astype(np.float32), parts[0], add)


def _follow_axis(graph: Graph, node: Node, axis: int) -> int | None:
    """Where axis `axis` of `node`'s input lands in its output (None: removed, or the op moves data)."""
    if node.op == "Squeeze":
        return None if axis in node.attrs["axes"] else axis - sum(1 for a in node.attrs["axes"] if a < axis)
    if node.op == "Unsqueeze":
        for a in sorted(node.attrs["axes"]):
            axis += a <= axis
        return axis
    shape = graph.values[node.inputs[0]].shape  # Slice: only one that keeps everything
    a = node.attrs
    identity = all(start == 0 and end >= shape[ax] and step == 1
                   for start, end, ax, step in zip(a["starts"], a["ends"], a["axes"], a["steps"]))
    return axis if identity else None


def _fold_bias(graph: Graph, match: BiasMatch) -> None:
    conv = match.conv
    own = graph.constants[conv.inputs[2]].astype(np.float32) if len(conv.inputs) > 2 else 0.0
    conv.inputs = [*conv.inputs[:2], graph.add_constant(graph.fresh_name(f"{conv.name}/bias"), own + match.bias)]
    out = match.add.outputs[0]
    graph.nodes.remove(match.add)
    del graph.values[out]
    if out in graph.outputs:
        graph.rename_value(match.source, out)
        return
    for node in graph.nodes:
        node.inputs = [match.source if i == out else i for i in node.inputs]


def _replace_layer_norm(graph: Graph, match: LayerNormMatch) -> None:
    """LayerNormalization over the trailing axes, transposing the normalized axes there and back if needed."""
    out_name = match.output.outputs[0]
    shape = graph.values[match.x].shape
    rank, count = len(shape), len(match.axes)
    perm = [a for a in range(rank) if a not in match.axes] + list(match.axes)
    base = match.output.name
    gamma = graph.add_constant(graph.fresh_name(f"{base}/gamma"), match.gamma)
    beta = graph.add_constant(graph.fresh_name(f"{base}/beta"), match.beta)
    attrs = {"axis": rank - count, "epsilon": match.epsilon}
    index = graph.nodes.index(match.output)
    graph.nodes.remove(match.output)
    if perm == list(range(rank)):
        graph.nodes.insert(index, Node("LayerNormalization", base, [match.x, gamma, beta], [out_name], attrs))
        return
    moved = [shape[a] for a in perm]
    inside = graph.add_value(graph.fresh_name(f"{base}/normalized_last"), moved, graph.values[match.x].dtype).name
    normed = graph.add_value(graph.fresh_name(f"{base}/normalized"), moved, graph.values[match.x].dtype).name
    back = [perm.index(a) for a in range(rank)]
    graph.nodes[index:index] = [
        Node("Transpose", graph.fresh_name(f"{base}/to_last"), [match.x], [inside], {"perm": perm}),
        Node("LayerNormalization", base, [inside, gamma, beta], [normed], attrs),
        Node("Transpose", graph.fresh_name(f"{base}/back"), [normed], [out_name], {"perm": back}),
    ]


def _replace_softmax(graph: Graph, match: SoftmaxMatch) -> None:
    index = graph.nodes.index(match.output)
    graph.nodes[index] = Node("Softmax", match.output.name, [match.z], list(match.output.outputs), {"axis": match.axis})
