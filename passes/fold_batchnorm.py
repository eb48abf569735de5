"""Fold inference-mode BatchNormalization into the Conv / ConvTranspose / MatMul+Add that feeds it.

Rewrite (per output channel c, BN over channel axis 1):
    y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta
      = conv(x, W * k) + (b - mean) * k + beta,       k = gamma / sqrt(var + eps)
Applies when the producer's weight and bias are constants and the producer's output feeds only the
BN. A per-channel constant Add between the two (`conv -> Add(b) -> BN`, as exporters write a
ConvTranspose's bias) is the producer's bias: it is folded into the producer first. A BN left over (after a non-foldable producer) is rewritten as Mul + Add with constant operands,
so later passes and backends never see BatchNormalization.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from .base import Pass


class FoldBatchNorm(Pass):
    name = "fold_batchnorm"
    ensures = ("batchnorm_folded",)

    def run(self, graph: Graph) -> Graph:
        for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
            if not _all_constant(graph, bn.inputs[1:5]):
                continue
            scale, shift = _affine(graph, bn)
            _absorb_bias_add(graph, bn)
            producer = graph.producers().get(bn.inputs[0])
            if producer is not None and _foldable(graph, producer, bn):
                _fold_into_conv(graph, producer, bn, scale, shift)
            else:
                _as_mul_add(graph, bn, scale, shift)
        graph.remove_unused()
        return graph


def _all_constant(graph: Graph, names: list[str]) -> bool:
    return all(n in graph.constants for n in names)


def _affine(graph: Graph, bn: Node) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (graph.constants[n].astype(np.float64) for n in bn.inputs[1:5])
    scale = gamma / np.sqrt(var + bn.attrs["epsilon"])
    return scale, beta - mean * scale


def _foldable(graph: Graph, producer: Node, bn: Node) -> bool:
    if producer.op not in ("Conv", "ConvTranspose") or producer.inputs[1] not in graph.constants:
        return False
    if len(producer.inputs) > 2 and producer.inputs[2] not in graph.constants:
        return False
    return len(graph.consumers().get(producer.outputs[0], [])) == 1 and producer.outputs[0] not in graph.outputs


def _absorb_bias_add(graph: Graph, bn: Node) -> None:
    """Fold `Add(conv(x), b)` feeding `bn` into the conv's bias when b is a constant per output channel
    (broadcasting along axis 1 only, e.g. [1, C, 1, 1] or [C, 1, 1]) and the conv and the Add feed
    nothing else."""
    add = graph.producers().get(bn.inputs[0])
    if add is None or add.op != "Add" or len(add.inputs) != 2:
        return
    consumers = graph.consumers()
    if len(consumers.get(add.outputs[0], [])) != 1 or add.outputs[0] in graph.outputs:
        return
    producers = graph.producers()
    for data, other in (add.inputs, add.inputs[::-1]):
        conv = producers.get(data)
        if conv is None or other not in graph.constants or not _foldable(graph, conv, add):
            continue
        bias = _channel_bias(graph.constants[other], graph.values[data].shape)
        if bias is None:
            continue
        if len(conv.inputs) > 2:
            bias = bias + graph.constants[conv.inputs[2]].astype(np.float64)
        name = graph.fresh_name(f"{conv.name}_b_add")
        graph.add_constant(name, bias.astype(np.float32))
        conv.inputs = [conv.inputs[0], conv.inputs[1], name]
        _bypass(graph, add, conv.outputs[0])
        return


def _channel_bias(constant: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """A float constant added to an [N, C, ...] tensor as one value per channel C, as float64 [C]."""
    if constant.dtype.kind != "f" or constant.ndim > len(shape):
        return None
    aligned = (1,) * (len(shape) - constant.ndim) + constant.shape  # numpy broadcasting
    if any(d != 1 for axis, d in enumerate(aligned) if axis != 1) or aligned[1] not in (1, shape[1]):
        return None
    return np.broadcast_to(constant.astype(np.float64).reshape(-1), (shape[1],)).copy()


def _fold_into_conv(graph: Graph, conv: Node, bn: Node, scale: np.ndarray, shift: np.ndarray) -> None:
    weight = graph.constants[conv.inputs[1]].astype(np.float64)
    if conv.op == "Conv":
        folded_w = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    else:  # ConvTranspose weight is [C_in, C_out / group, ...]; output channel c = g * (C_out/group) + j
        group = conv.attrs["group"]
        per_group = weight.shape[1]
        k = scale.reshape(group, 1, per_group, *([1] * (weight.ndim - 2)))
        folded_w = (weight.reshape(group, -1, per_group, *weight.shape[2:]) * k).reshape(weight.shape)
    bias = graph.constants[conv.inputs[2]].astype(np.float64) if len(conv.inputs) > 2 else 0.0
    folded_b = bias * scale + shift
    w_name = graph.fresh_name(f"{conv.name}_w_bnfold")
    b_name = graph.fresh_name(f"{conv.name}_b_bnfold")
    graph.add_constant(w_name, folded_w.astype(np.float32))
    graph.add_constant(b_name, folded_b.astype(np.float32))
    conv.inputs = [conv.inputs[0], w_name, b_name]
    _bypass(graph, bn, conv.outputs[0])


def _bypass(graph: Graph, bn: Node, replacement: str) -> None:
    """Make BN's consumers read `replacement` and drop BN (keeping the BN output's name if it is a graph output)."""
    out = bn.outputs[0]
    graph.nodes.remove(bn)
    if out in graph.outputs:
        del graph.values[out]
        graph.rename_value(replacement, out)
        return
    for node in graph.nodes:
        node.inputs = [replacement if i == out else i for i in node.inputs]


def _as_mul_add(graph: Graph, bn: Node, scale: np.ndarray, shift: np.ndarray) -> None:
    rank = len(graph.values[bn.inputs[0]].shape)
    shape = (-1,) + (1,) * (rank - 2)
    k = graph.add_constant(graph.fresh_name(f"{bn.name}_scale"), scale.reshape(shape).astype(np.float32))
    c = graph.add_constant(graph.fresh_name(f"{bn.name}_shift"), shift.reshape(shape).astype(np.float32))
    mid = graph.fresh_name(f"{bn.name}_mul")
    out_value = graph.values[bn.outputs[0]]
    graph.add_value(mid, out_value.shape, out_value.dtype)
    index = graph.nodes.index(bn)
    graph.nodes[index:index + 1] = [Node("Mul", graph.fresh_name(f"{bn.name}_mul"), [bn.inputs[0], k], [mid]),
                                    Node("Add", graph.fresh_name(f"{bn.name}_add"), [mid, c], [bn.outputs[0]])]
