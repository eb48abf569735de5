"""Per-input-channel rescaling of linear layers, the transformation behind SmoothQuant (Xiao et al.)
and AWQ (Lin et al.): W' = diag(s) W and X' = X / s leave the product X W unchanged.

The weights of every layer reading X take s along their reduction axis; the activation takes 1/s
where it costs least:
- folded into the producing LayerNormalization's scale and bias (normalizing the last axis only);
- folded into the producing Conv's output channels (weight rows and bias), or into the producing
  MatMul + bias Add's output columns;
- folded through attention into the value projection: X = heads merged from P @ V, V = heads split from
  MatMul + bias Add, where channel c of X is channel c of the projection (P mixes tokens, not channels,
  so P @ (V / s) = (P @ V) / s);
all only when every reader of X is one of the rescaled layers and X is not a graph output;
- otherwise through a new Mul(X, 1/s) node that only the rescaled layers read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..interpreter import run_node
from ..ir import Graph, Node
from .linear_layers import LinearLayer, private_constant


@dataclass(frozen=True)
class InputGroup:
    """Pointwise layers of one kind that read the same activation (e.g. a transformer's Q, K and V):
    MatMuls see its channels on the last axis, 1x1 Convs on axis 1."""

    activation: str
    op: str
    layers: tuple[LinearLayer, ...]

    @property
    def on_last_axis(self) -> bool:
        return self.op == "MatMul"


def input_groups(layers: list[LinearLayer]) -> list[InputGroup]:
    """The pointwise layers grouped by the activation they read (and their op), in graph order."""
    groups: dict[tuple[str, str], list[LinearLayer]] = {}
    for layer in layers:
        if layer.is_pointwise:
            groups.setdefault((layer.input, layer.node.op), []).append(layer)
    return [InputGroup(name, op, tuple(members)) for (name, op), members in groups.items()]


def rescale_input_channels(graph: Graph, group: InputGroup, scales: np.ndarray) -> str:
    """Apply W' = diag(s) W to the group's weights and X / s to their input; return where 1/s went:
    "layernorm", "conv", "matmul" (folded into the producer) or "mul" (a new node)."""
    for layer in group.layers:
        name = private_constant(graph, layer.node, 1)
        graph.constants[name] = layer.scale_columns(graph.constants[name], scales)
    inverse = 1.0 / scales.astype(np.float64)
    producer = graph.producers().get(group.activation)
    if producer is not None and _only_group_reads(graph, group):
        folds = _LAST_AXIS_FOLDS if group.on_last_axis else _CHANNEL_AXIS_FOLDS
        for kind, fold in folds.items():
            if fold(graph, producer, inverse):
                return kind
    _insert_mul(graph, group, inverse)
    return "mul"


def _only_group_reads(graph: Graph, group: InputGroup) -> bool:
    readers = {n.name for n in graph.consumers().get(group.activation, [])}
    return readers == {layer.node.name for layer in group.layers} and group.activation not in graph.outputs


def _multiply_constant(graph: Graph, node: Node, index: int, factors: np.ndarray, axis: int) -> None:
    name = private_constant(graph, node, index)
    array = graph.constants[name]
    shape = [1] * array.ndim
    shape[axis] = -1
    graph.constants[name] = (array.astype(np.float64) * factors.reshape(shape)).astype(array.dtype)


def _fold_into_layernorm(graph: Graph, node: Node, inverse: np.ndarray) -> bool:
    rank = len(graph.values[node.outputs[0]].shape)
    operands = node.inputs[1:]
    if node.op != "LayerNormalization" or node.attrs["axis"] != rank - 1:
        return False
    if not all(name in graph.constants and graph.constants[name].shape == inverse.shape for name in operands):
        return False
    for index in range(1, len(node.inputs)):
        _multiply_constant(graph, node, index, inverse, 0)
    return True


def _fold_into_conv(graph: Graph, node: Node, inverse: np.ndarray) -> bool:
    if node.op != "Conv" or not all(name in graph.constants for name in node.inputs[1:]):
        return False
    _multiply_constant(graph, node, 1, inverse, 0)
    if len(node.inputs) > 2:
        _multiply_constant(graph, node, 2, inverse, 0)
    return True


def _fold_into_matmul_bias(graph: Graph, add: Node, inverse: np.ndarray) -> bool:
    """X = Add(bias, MatMul(x, W)) (either order) with constant W (K, C) and bias (C,)."""
    if add.op != "Add":
        return False
    producers, consumers = graph.producers(), graph.consumers()
    bias = [i for i in add.inputs if i in graph.constants]
    product = [i for i in add.inputs if i not in graph.constants]
    if len(bias) != 1 or len(product) != 1 or graph.constants[bias[0]].shape != inverse.shape:
        return False
    matmul = producers.get(product[0])
    if (matmul is None or matmul.op != "MatMul" or matmul.inputs[1] not in graph.constants
            or graph.constants[matmul.inputs[1]].shape[-1:] != inverse.shape
            or graph.constants[matmul.inputs[1]].ndim != 2 or len(consumers[product[0]]) != 1):
        return False
    _multiply_constant(graph, matmul, 1, inverse, 1)
    _multiply_constant(graph, add, add.inputs.index(bias[0]), inverse, 0)
    return True


HEAD_OPS = ("Reshape", "Transpose")  # how attention splits channels into heads and merges them back


def _fold_into_attention_values(graph: Graph, node: Node, inverse: np.ndarray) -> bool:
    """X = merge(MatMul(P, split(Add(bias, MatMul(x, W))))), merge and split made of Reshape / Transpose,
    each value read once: 1/s goes into W's columns and the bias when channel c of X is channel c of the
    projection (checked by carrying channel indices through split and merge)."""
    producers, consumers = graph.producers(), graph.consumers()

    def heads(start: Node | None) -> tuple[list[Node], Node | None]:
        """The Reshape / Transpose nodes from `start` backwards (each output read once), and the node before."""
        chain: list[Node] = []
        while start is not None and start.op in HEAD_OPS and len(consumers.get(start.outputs[0], [])) == 1:
            chain.append(start)
            start = producers.get(start.inputs[0])
        return chain[::-1], start

    if node.op not in HEAD_OPS:
        return False
    merge, mix = heads(node)
    if mix is None or mix.op != "MatMul" or mix.inputs[1] in graph.constants or len(consumers[mix.outputs[0]]) != 1:
        return False
    split, add = heads(producers.get(mix.inputs[1]))
    if add is None or len(consumers.get(add.outputs[0], [])) != 1 or not split:
        return False
    channels = inverse.shape[0]
    v_shape = graph.values[add.outputs[0]].shape
    if not v_shape or v_shape[-1] != channels:
        return False
    index = torch.arange(channels, dtype=torch.float64).expand(v_shape).contiguous()
    for member in split:  # the mixing MatMul keeps the channel index: P @ V for P = I is V
        (index,) = run_node(member, [index])
    for member in merge:
        (index,) = run_node(member, [index])
    if tuple(index.shape) != graph.values[node.outputs[0]].shape or not torch.equal(
            index, torch.arange(channels, dtype=torch.float64).expand_as(index)):
        return False
    return _fold_into_matmul_bias(graph, add, inverse)


# producers whose output channels lie on the last axis (MatMul readers) or on axis 1 (Conv readers)
_LAST_AXIS_FOLDS = {"layernorm": _fold_into_layernorm, "matmul": _fold_into_matmul_bias,
                    "attention": _fold_into_attention_values}
_CHANNEL_AXIS_FOLDS = {"conv": _fold_into_conv}


def _insert_mul(graph: Graph, group: InputGroup, inverse: np.ndarray) -> None:
    source = graph.values[group.activation]
    shape = (-1,) if group.on_last_axis else (-1,) + (1,) * (len(source.shape) - 2)
    factors = graph.add_constant(graph.fresh_name(f"{group.activation}_inverse_scale"),
                                 inverse.astype(np.float32).reshape(shape))
    scaled = graph.fresh_name(f"{group.activation}_scaled")
    graph.add_value(scaled, source.shape, source.dtype)
    mul = Node("Mul", graph.fresh_name(f"{group.activation}_scale"), [group.activation, factors], [scaled])
    graph.nodes.insert(_position_after_producer(graph, group.activation), mul)
    for layer in group.layers:
        layer.node.inputs[0] = scaled


def _position_after_producer(graph: Graph, name: str) -> int:
    for index, node in enumerate(graph.nodes):
        if name in node.outputs:
            return index + 1
    return 0
