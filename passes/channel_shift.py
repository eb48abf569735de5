"""Center each channel of post-LayerNorm activations before they are quantized per tensor: RepQ-ViT's
per-channel zero points reparameterized away (Li et al., "RepQ-ViT: Scale Reparameterization for
Post-Training Quantization of Vision Transformers", ICCV 2023), the shift of Outlier Suppression+
(Wei et al., 2023).

The channels of a LayerNorm's output sit at very different offsets (its beta, and a transformer's few
"outlier" dimensions that are large for every token), so one per-tensor range must cover all of them.
For every group of MatMuls with a constant weight W (K, N) and a constant bias b (N,) reading the same
LayerNorm output X (quant_points' bias Add, `weighted_chain`), per input channel j:

    c_j = (min_j X + max_j X) / 2,    X' = X - c,    b' = b + c W

so X' W + b' = X W + b exactly in real arithmetic, and every channel of X' is centered on 0. The
extrema come from the float model on calibration data. X - c becomes an Add of the constant -c that
only the group reads (the LayerNorm's output usually feeds a residual Add too, which keeps X). Run it
before SmoothQuant (recipe order: "channel_shift", "smoothquant"), whose per-channel scales then see
the centered channels: together a per-channel scale and zero point, reparameterized into per-tensor
quantization (RepQ-ViT).
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import torch

from ..ir import Graph, Node
from .base import Pass
from .calibrate import masked_rows, sample_mask_of
from .channel_scaling import InputGroup, input_groups
from .linear_layers import float_inputs, linear_layers
from .quant_points import epilogue_bias, weighted_chain

log = logging.getLogger("bitsmith.passes.channel_shift")


class ChannelShift(Pass):
    name = "channel_shift"

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], sample_mask: str | None = None) -> None:
        self.feeds = list(feeds)
        self.sample_mask = sample_mask

    def run(self, graph: Graph) -> Graph:
        groups = [g for g in input_groups(linear_layers(graph, ops=("MatMul",))) if _shiftable(graph, g)]
        if not groups:
            return graph
        extrema = channel_extrema(graph, self.feeds, [g.activation for g in groups], self.sample_mask)
        for group in groups:
            low, high = extrema[group.activation]
            shift_input_channels(graph, group, (low + high) / 2.0)
        log.info("centered the channels of %d LayerNorm outputs", len(groups))
        return graph


def _biases(graph: Graph, group: InputGroup) -> list[str] | None:
    """Each layer's bias constant (the Add that `weighted_chain` takes into the layer), or None."""
    consumers = graph.consumers()
    biases = []
    for layer in group.layers:
        chain = weighted_chain(graph, layer.node, consumers)
        if len(chain) != 2:
            return None
        add = chain[1]
        name = next(i for i in add.inputs if i != layer.node.outputs[0])
        bias = graph.constants[name]
        if bias.ndim != 1 or epilogue_bias(graph, layer.node, add) is None or len(consumers[name]) != 1:
            return None
        biases.append(name)
    return biases


def _shiftable(graph: Graph, group: InputGroup) -> bool:
    producer = graph.producers().get(group.activation)
    return (producer is not None and producer.op == "LayerNormalization" and group.on_last_axis
            and _biases(graph, group) is not None)


def channel_extrema(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str],
                    sample_mask: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(min, max) over every calibration sample and position (those `sample_mask` marks,
    calibrate.masked_rows), per last-axis channel of each value."""
    lows: dict[str, torch.Tensor] = {}
    highs: dict[str, torch.Tensor] = {}
    for feed, values in zip(feeds, float_inputs(graph, feeds, names)):
        mask = sample_mask_of(graph, feed, sample_mask)
        for name, x in values.items():
            rows = masked_rows(x, mask).reshape(-1, x.shape[-1])
            low, high = rows.amin(dim=0), rows.amax(dim=0)
            lows[name] = low if name not in lows else torch.minimum(lows[name], low)
            highs[name] = high if name not in highs else torch.maximum(highs[name], high)
    return {name: (lows[name].double().numpy(), highs[name].double().numpy()) for name in lows}


def shift_input_channels(graph: Graph, group: InputGroup, centers: np.ndarray) -> None:
    """X' = X - centers feeds the group's layers; each layer's bias absorbs centers @ W."""
    for layer, bias in zip(group.layers, _biases(graph, group) or []):
        weight = graph.constants[layer.weight].astype(np.float64)
        graph.constants[bias] = (graph.constants[bias] + centers @ weight).astype(graph.constants[bias].dtype)
    source = graph.values[group.activation]
    offsets = graph.add_constant(graph.fresh_name(f"{group.activation}_negative_center"),
                                 (-centers).astype(np.float32))
    shifted = graph.fresh_name(f"{group.activation}_centered")
    graph.add_value(shifted, source.shape, source.dtype)
    add = Node("Add", graph.fresh_name(f"{group.activation}_center"), [group.activation, offsets], [shifted])
    position = next(i for i, n in enumerate(graph.nodes) if group.activation in n.outputs) + 1
    graph.nodes.insert(position, add)
    for layer in group.layers:
        layer.node.inputs[0] = shifted
