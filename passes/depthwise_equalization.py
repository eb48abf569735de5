"""Activation equalization into depthwise convolutions: cross-layer equalization (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV 2019), aimed at the activation between
a convolution and the depthwise convolution that reads it (every MobileNet block, and any CNN with them):

    P: Conv  ->  A: Relu, or Clip(0, hi)  ->  D: Conv with one input channel per group

A per-tensor activation scale is sized for A's widest channel, so its narrow channels get few codes.
Scaling channel c of P's output by t_c (P's weight rows and bias) and D's filters for channel c by 1 / t_c
leaves D's output unchanged, since Relu commutes with positive scales, and costs no weight precision: both
weights are quantized per output channel, and channel c of P and D's filters for channel c are output
channels. Unlike DFQ, which balances weight ranges, t_c balances the activation's channels: each channel's
maximum m_c on the calibration data (before A) is raised to T = M / HEADROOM, where M is the largest m_c
(at most A's clip hi), with t_c = T / m_c between 1 and MAX_GAIN. The headroom keeps a raised channel inside
the per-tensor range (about M) on inputs up to HEADROOM times beyond what calibration saw, and inside
Clip(0, hi), which commutes with t_c only while t_c x_c stays below hi: a raised channel clips at
hi / t_c >= HEADROOM * m_c in its own units where FP32 clips at hi. Channels already above T keep t_c = 1.

Runs before the weights get their QuantSpecs (recipe algorithm "depthwise_equalization").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..ir import Graph, Node
from .base import Pass
from .linear_layers import float_inputs, private_constant

log = logging.getLogger("bitsmith.passes.depthwise_equalization")

HEADROOM = 2.0  # a raised channel's calibrated maximum stays HEADROOM times below the range and a Clip's hi
MAX_GAIN = 8.0  # at most 3 more bits for a narrow channel; its clip stays at >= hi / MAX_GAIN


@dataclass(frozen=True)
class DepthwisePair:
    """P -> A -> D as in the module docstring; `high` is A's upper clip (inf for Relu)."""

    producer: Node
    activation: Node
    depthwise: Node
    high: float


class DepthwiseEqualization(Pass):
    name = "depthwise_equalization"

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.feeds = list(feeds)

    def run(self, graph: Graph) -> Graph:
        pairs = depthwise_pairs(graph)
        if not pairs:
            return graph
        maxima = channel_maxima(graph, self.feeds, [p.producer.outputs[0] for p in pairs])
        for pair in pairs:
            gains = equalizing_gains(maxima[pair.producer.outputs[0]], pair.high)
            scale_channels(graph, pair, gains)
        log.info("equalized %d activations into depthwise convolutions", len(pairs))
        return graph


def depthwise_pairs(graph: Graph) -> list[DepthwisePair]:
    """Every P -> A -> D chain where P's output feeds only A, A's only D, and neither is a graph output."""
    consumers = graph.consumers()
    producers = graph.producers()
    pairs = []
    for depthwise in graph.nodes:
        if not _is_depthwise(graph, depthwise):
            continue
        activation = producers.get(depthwise.inputs[0])
        high = _positive_homogeneous_high(activation)
        if activation is None or high is None:
            continue
        producer = producers.get(activation.inputs[0])
        if producer is None or producer.op != "Conv" or not _constant_weights(graph, producer):
            continue
        if any(len(consumers.get(v, [])) != 1 or v in graph.outputs
               for v in (producer.outputs[0], activation.outputs[0])):
            continue
        pairs.append(DepthwisePair(producer, activation, depthwise, high))
    return pairs


def _is_depthwise(graph: Graph, node: Node) -> bool:
    if node.op != "Conv" or not _constant_weights(graph, node):
        return False
    channels = graph.values[node.inputs[0]].shape[1]
    return int(node.attrs.get("group", 1)) == channels > 1 and graph.constants[node.inputs[1]].shape[1] == 1


def _constant_weights(graph: Graph, node: Node) -> bool:
    return all(name in graph.constants for name in node.inputs[1:] if name)


def _positive_homogeneous_high(node: Node | None) -> float | None:
    """A's upper clip when A(t x) = t A(x) for t > 0 up to it (Relu: inf; Clip(0, hi): hi), else None."""
    if node is None:
        return None
    if node.op == "Relu":
        return math.inf
    if node.op == "Clip" and float(node.attrs.get("min", -math.inf)) == 0.0:
        return float(node.attrs.get("max", math.inf))
    return None


def channel_maxima(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]],
                   names: Sequence[str]) -> dict[str, np.ndarray]:
    """max over calibration samples and positions of each channel (axis 1) of the named float values."""
    maxima: dict[str, torch.Tensor] = {}
    for values in float_inputs(graph, feeds, names):
        for name, x in values.items():
            batch_max = x.transpose(0, 1).reshape(x.shape[1], -1).amax(dim=1)
            maxima[name] = batch_max if name not in maxima else torch.maximum(maxima[name], batch_max)
    return {name: m.double().numpy() for name, m in maxima.items()}


def equalizing_gains(maxima: np.ndarray, high: float) -> np.ndarray:
    """t_c = T / m_c (module docstring), 1 for channels at or above T and for channels that never fire."""
    target = min(float(maxima.max()), high) / HEADROOM
    with np.errstate(divide="ignore"):
        gains = np.where(maxima > 0, target / maxima, 1.0)
    return np.clip(gains, 1.0, MAX_GAIN)


def scale_channels(graph: Graph, pair: DepthwisePair, gains: np.ndarray) -> None:
    """P's output channels times `gains`, D's filters of each channel divided by them."""
    producer_weight = private_constant(graph, pair.producer, 1)
    weight = graph.constants[producer_weight]
    graph.constants[producer_weight] = (weight * gains.reshape(-1, *([1] * (weight.ndim - 1)))).astype(weight.dtype)
    if len(pair.producer.inputs) > 2 and pair.producer.inputs[2]:
        bias_name = private_constant(graph, pair.producer, 2)
        bias = graph.constants[bias_name]
        graph.constants[bias_name] = (bias * gains).astype(bias.dtype)
    depthwise_weight = private_constant(graph, pair.depthwise, 1)
    filters = graph.constants[depthwise_weight]
    per_channel = np.repeat(gains, filters.shape[0] // len(gains))  # channel multiplier: filters per channel
    graph.constants[depthwise_weight] = (filters / per_channel.reshape(-1, *([1] * (filters.ndim - 1)))
                                         ).astype(filters.dtype)
