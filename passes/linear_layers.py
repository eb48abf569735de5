"""The linear layers that layer-wise PTQ algorithms work on, and their calibration inputs.

GPTQ (Frantar et al.), AWQ (Lin et al.), SmoothQuant (Xiao et al.) and LLM-FP4's format search
(Liu et al.) all reason about one linear layer at a time, y = W x over the layer's input features.
This module gives them one view of MatMul and Conv layers:

- `LinearLayer`: a MatMul whose second operand is a constant 2-D weight (K, N), or a 1-D / 2-D Conv
  with a constant weight (O, C / group, *kernel), read through im2col, one matrix per group;
- `LinearLayer.matrix(w)`: the weight as (groups, outputs per group, inputs per group); its columns
  run along the reduction axis (GPTQ's column order); `LinearLayer.unmatrix` is the inverse;
- `LinearLayer.rows(x)`: the layer's input as (groups, samples, inputs per group), so that the
  layer's output without bias is ``rows @ matrix^T``;
- `float_inputs(graph, feeds, names)`: streams the calibration batches through the model (float, or
  with the weights fake-quantized) and yields the named activations, one batch at a time;
- `sampled_rows(graph, feeds, layers, max_rows)`: a fixed-seed sample of each layer's input rows,
  to keep the searches' cost independent of the amount of data;
- `private_constant`: a constant operand that only one node reads, safe to rewrite in place;
- `single_thread()`: the searches and GPTQ's column loop are many small tensor ops, for which torch's
  thread hand-offs cost more than they save (much more on a loaded machine), so they run on one.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..ir import Graph, Node
from ..simulate import Simulator
from .quant_points import weight_points


@dataclass(frozen=True, eq=False)
class LinearLayer:
    """A MatMul or Conv node with a constant weight, seen as a (grouped) matrix product."""

    node: Node
    weight: str
    kernel: tuple[int, ...] = ()  # Conv only: the spatial kernel shape

    @property
    def input(self) -> str:
        return self.node.inputs[0]

    @property
    def groups(self) -> int:
        return int(self.node.attrs["group"]) if self.node.op == "Conv" else 1

    @property
    def output_axis(self) -> int:
        """The weight's output-channel axis (per-channel QuantSpecs run along it)."""
        return 1 if self.node.op == "MatMul" else 0

    @property
    def is_pointwise(self) -> bool:
        """A MatMul, or a 1x1 Conv without groups: input channels map one to one to weight columns."""
        if self.node.op == "MatMul":
            return True
        return self.groups == 1 and all(k == 1 for k in self.kernel)

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """(groups, outputs per group, inputs per group)."""
        if self.node.op == "MatMul":
            return weight.transpose(0, 1).unsqueeze(0)
        return weight.reshape(self.groups, weight.shape[0] // self.groups, -1)

    def unmatrix(self, matrix: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        if self.node.op == "MatMul":
            return matrix[0].transpose(0, 1).contiguous()
        return matrix.reshape(tuple(shape))

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The input as (groups, samples, inputs per group): tokens for MatMul, im2col patches for Conv."""
        if self.node.op == "MatMul":
            return x.reshape(1, -1, x.shape[-1])
        patches = _im2col(x, self.node.attrs, self.kernel)  # (N, C * k, L)
        n, features, length = patches.shape
        grouped = patches.reshape(n, self.groups, features // self.groups, length)
        return grouped.permute(1, 0, 3, 2).reshape(self.groups, n * length, features // self.groups)

    def scale_columns(self, weight: np.ndarray, factors: np.ndarray) -> np.ndarray:
        """The weight with its input channel j multiplied by factors[j] (a pointwise layer only)."""
        shape = [-1, 1] if self.node.op == "MatMul" else [1, -1] + [1] * (weight.ndim - 2)
        return (weight.astype(np.float64) * factors.reshape(shape)).astype(weight.dtype)


def linear_layers(graph: Graph, ops: Sequence[str] = ("MatMul", "Conv")) -> list[LinearLayer]:
    """Every MatMul (2-D constant weight) and 1-D / 2-D Conv whose weight is a float constant that
    only this node reads and whose data input is an activation, in graph order."""
    nodes = {n.name: n for n in graph.nodes}
    consumers = graph.consumers()
    layers = []
    for point in weight_points(graph).values():
        node = nodes[point.node]
        if node.op not in ops or len(consumers.get(point.name, [])) != 1 or node.inputs[0] in graph.constants:
            continue
        shape = graph.constants[point.name].shape
        if node.op == "MatMul" and len(shape) == 2:
            layers.append(LinearLayer(node, point.name))
        elif node.op == "Conv" and len(shape) in (3, 4):
            layers.append(LinearLayer(node, point.name, tuple(int(k) for k in shape[2:])))
    return layers


def _im2col(x: torch.Tensor, attrs: Mapping, kernel: tuple[int, ...]) -> torch.Tensor:
    """(N, C * prod(kernel), L) patches in the weight's (C, *kernel) order; 1-D convs as 1 x k."""
    pads, strides, dilations = list(attrs["pads"]), list(attrs["strides"]), list(attrs["dilations"])
    if x.dim() == 3:
        x, kernel = x.unsqueeze(2), (1, *kernel)
        pads, strides, dilations = [0, pads[0], 0, pads[1]], [1, *strides], [1, *dilations]
    top, left, bottom, right = pads
    x = F.pad(x, (left, right, top, bottom))
    return F.unfold(x, kernel, dilation=tuple(dilations), stride=tuple(strides))


def float_inputs(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str],
                 quantized_weights: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Per calibration batch, the named values of the model run in float (activations are never
    fake-quantized; weights are when `quantized_weights`)."""
    simulator = Simulator(graph, quantized=quantized_weights, quantize_activations=False)
    for feed in feeds:
        with torch.no_grad():
            env = simulator.forward({k: torch.from_numpy(np.array(v)) for k, v in feed.items()}, keep=names)
        yield {name: env[name] for name in names}


def sample_rows(rows: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """At most `count` of the rows (axis 1), chosen with a fixed seed."""
    if rows.shape[1] <= count:
        return rows
    generator = torch.Generator().manual_seed(seed)
    return rows[:, torch.randperm(rows.shape[1], generator=generator)[:count]]


def sampled_rows(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]], layers: Sequence[LinearLayer],
                 max_rows: int, quantized_weights: bool = False) -> list[torch.Tensor]:
    """Per layer, up to `max_rows` rows of its calibration input (groups, rows, inputs per group),
    drawn evenly from the batches with fixed seeds."""
    per_batch = max(1, max_rows // max(1, len(feeds)))
    samples: list[list[torch.Tensor]] = [[] for _ in layers]
    names = sorted({layer.input for layer in layers})
    for index, values in enumerate(float_inputs(graph, feeds, names, quantized_weights)):
        for layer, sample in zip(layers, samples):
            sample.append(sample_rows(layer.rows(values[layer.input]).to(torch.float32), per_batch, seed=index))
    return [torch.cat(sample, dim=1) for sample in samples]


def private_constant(graph: Graph, node: Node, index: int) -> str:
    """The name of node.inputs[index], a constant, copied first if another node reads it too, so
    that the caller may rewrite it in place."""
    name = node.inputs[index]
    if len([n for n in graph.nodes if name in n.inputs]) > 1 or name in graph.outputs:
        copy = graph.add_constant(graph.fresh_name(f"{name}_{node.name}"), graph.constants[name].copy())
        node.inputs[index] = copy
        return copy
    return name


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block, restoring the thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

