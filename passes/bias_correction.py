"""Empirical bias correction (Hubara et al., "Improving Post Training Neural Quantization: Layer-wise
Calibration and Integer Programming"; also Nagel et al., DFQ).

Quantization shifts the mean of each layer's output channels. For every Conv / ConvTranspose /
MatMul with a quantized weight, this pass runs the layer alone on its float calibration inputs twice,
once in float and once as deployed (quantized weight, quantized input), and subtracts the per-channel
mean difference E[y_q - y_f] from the layer's bias (a convolution without bias gets one). Measuring
each layer on float inputs isolates its own shift, so corrections do not compound along the network.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch

from ..formats import fake_quant_torch
from ..interpreter import run_node
from ..ir import Graph, Node
from ..simulate import Simulator, fake_quant_activation
from .base import Pass
from .quant_points import weight_points


class BiasCorrection(Pass):
    name = "bias_correction"
    requires = ("weights_quantized",)

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self.feeds = list(feeds)

    def run(self, graph: Graph) -> Graph:
        layers = _correctable_layers(graph)
        if not layers:
            return graph
        shifts = _mean_shifts(graph, self.feeds, layers)
        for (node, bias_name), shift in zip(layers, shifts):
            bias = graph.constants[bias_name]
            graph.constants[bias_name] = (bias - shift.reshape(bias.shape)).astype(bias.dtype)
        return graph


def _correctable_layers(graph: Graph) -> list[tuple[Node, str]]:
    """(layer, its bias constant) for every quantized-weight layer whose bias can be adjusted."""
    consumers = graph.consumers()
    layers = []
    for point in weight_points(graph).values():
        if graph.values[point.name].quant is None:
            continue
        node = next(n for n in graph.nodes if n.name == point.node)
        bias = _bias_of(graph, node, consumers)
        if bias is not None:
            layers.append((node, bias))
    return layers


def _bias_of(graph: Graph, node: Node, consumers: dict[str, list[Node]]) -> str | None:
    out_channels = graph.values[node.outputs[0]].shape[1 if node.op != "MatMul" else -1]
    if node.op in ("Conv", "ConvTranspose"):
        if len(node.inputs) < 3:
            name = graph.add_constant(graph.fresh_name(f"{node.name}_bias"), np.zeros(out_channels, np.float32))
            node.inputs.append(name)
        return node.inputs[2] if node.inputs[2] in graph.constants else None
    users = consumers.get(node.outputs[0], [])
    if len(users) == 1 and users[0].op == "Add":
        other = [i for i in users[0].inputs if i != node.outputs[0]]
        if other and other[0] in graph.constants and graph.constants[other[0]].shape == (out_channels,):
            return other[0]
    return None


def _mean_shifts(graph: Graph, feeds: list[Mapping[str, np.ndarray]],
                 layers: list[tuple[Node, str]]) -> list[np.ndarray]:
    """Per layer, the per-channel mean of (deployed output - float output) on float inputs."""
    float_sim = Simulator(graph, quantized=False)
    data_inputs = sorted({node.inputs[0] for node, _ in layers})
    totals = [np.zeros(0)] * len(layers)
    for i, f in enumerate(feeds):
        with torch.no_grad():
            env = float_sim.forward({k: torch.from_numpy(np.array(v)) for k, v in f.items()}, keep=data_inputs)
            for k, (node, _) in enumerate(layers):
                shift = _channel_mean(node, _deployed(graph, node, env) - _float(graph, node, env))
                totals[k] = shift if i == 0 else totals[k] + shift
    return [t / len(feeds) for t in totals]


def _operands(graph: Graph, node: Node, env: dict[str, torch.Tensor], quantized: bool) -> list[torch.Tensor]:
    operands = []
    for name in node.inputs:
        tensor = env[name] if name in env else torch.from_numpy(np.array(graph.constants[name]))
        spec = graph.values[name].quant
        if quantized and spec is not None:
            tensor = fake_quant_torch(tensor, spec, ste=False) if name in graph.constants else fake_quant_activation(tensor, spec)
        operands.append(tensor)
    return operands


def _float(graph: Graph, node: Node, env: dict[str, torch.Tensor]) -> torch.Tensor:
    return run_node(node, _operands(graph, node, env, quantized=False))[0]


def _deployed(graph: Graph, node: Node, env: dict[str, torch.Tensor]) -> torch.Tensor:
    return run_node(node, _operands(graph, node, env, quantized=True))[0]


def _channel_mean(node: Node, diff: torch.Tensor) -> np.ndarray:
    axis = diff.dim() - 1 if node.op == "MatMul" else 1
    return diff.double().movedim(axis, 0).reshape(diff.shape[axis], -1).mean(dim=1).numpy()
