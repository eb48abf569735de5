"""SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models", ICML 2023): migrate activation outliers into the weights before W8A8 quantization.

Activations of transformers have a few input channels with huge magnitudes, which ruin a per-tensor
activation scale; weights do not. For every MatMul with a constant weight, per input channel j:

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha),    X' = X / s,    W' = diag(s) W

so X' W' = X W exactly in real arithmetic. max|X_j| comes from the float model on calibration data;
MatMuls reading the same activation (Q, K, V after one LayerNorm) share one s, with max|W_j| taken
over all their weights. 1/s folds into the producing LayerNorm (or linear layer) when only these
MatMuls read it, else becomes a Mul node (`channel_scaling`). alpha = 0.5 by default
(recipe option "smoothquant_alpha"). Runs before the weights get their QuantSpecs.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import torch

from ..ir import Graph
from .base import Pass
from .calibrate import masked_rows, sample_mask_of
from .channel_scaling import InputGroup, input_groups, rescale_input_channels
from .linear_layers import float_inputs, linear_layers

log = logging.getLogger("bitsmith.passes.smoothquant")

MIN_SCALE = 1e-5


class SmoothQuant(Pass):
    name = "smoothquant"

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], alpha: float = 0.5,
                 sample_mask: str | None = None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"SmoothQuant alpha must lie in [0, 1], not {alpha}")
        self.feeds = list(feeds)
        self.alpha = alpha
        self.sample_mask = sample_mask

    def run(self, graph: Graph) -> Graph:
        groups = input_groups(linear_layers(graph, ops=("MatMul",)))
        if not groups:
            return graph
        activation_max = channel_absmax(graph, self.feeds, [g.activation for g in groups], self.sample_mask)
        placements: dict[str, int] = {}
        for group in groups:
            scales = smoothing_scales(activation_max[group.activation], weight_absmax(graph, group), self.alpha)
            where = rescale_input_channels(graph, group, scales)
            placements[where] = placements.get(where, 0) + 1
        log.info("smoothed %d activations (1/s placed: %s)", len(groups), placements)
        return graph


def channel_absmax(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str],
                   sample_mask: str | None = None) -> dict[str, np.ndarray]:
    """max |X_j| over every calibration sample and position (those `sample_mask` marks, calibrate.masked_rows),
    per last-axis channel of each value."""
    maxima: dict[str, torch.Tensor] = {}
    for feed, values in zip(feeds, float_inputs(graph, feeds, names)):
        mask = sample_mask_of(graph, feed, sample_mask)
        for name, x in values.items():
            batch_max = masked_rows(x, mask).abs().reshape(-1, x.shape[-1]).amax(dim=0)
            maxima[name] = batch_max if name not in maxima else torch.maximum(maxima[name], batch_max)
    return {name: m.double().numpy() for name, m in maxima.items()}


def weight_absmax(graph: Graph, group: InputGroup) -> np.ndarray:
    """max |W_j| per input channel j over all weights of the group (MatMul weights are (K, N))."""
    return np.max([np.abs(graph.constants[layer.weight]).max(axis=1) for layer in group.layers], axis=0)


def smoothing_scales(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """s = max|X|^alpha / max|W|^(1 - alpha); 1 for channels where either maximum is zero."""
    activation_max = activation_max.astype(np.float64)
    weight_max = weight_max.astype(np.float64)
    usable = (activation_max > 0) & (weight_max > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = activation_max ** alpha / weight_max ** (1.0 - alpha)
    return np.where(usable, np.maximum(scales, MIN_SCALE), 1.0)
