"""AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration",
MLSys 2024): protect the weight channels that see large activations by scaling them up before
quantizing, with the inverse scale moved onto the activation.

For every MatMul and 1x1 Conv (grouped by the activation X they read, so Q, K and V share one
search), per input channel j:

    s_j = mean|X_j|^a / sqrt(max(s) min(s)),    a in {0, 1/20, ..., 19/20}

and a is the one minimizing sum over the group's layers of || (X / s) Q(diag(s) W) - X W ||^2 on
calibration rows (Q: the recipe's weight format and granularity with max-scaling, as the paper's
search does; a = 0 is the plain round-to-nearest baseline, so AWQ never does worse on the data it
sees). Then W' = diag(s) W and 1/s folds into the producing LayerNorm / linear layer, or becomes a
Mul node (`channel_scaling`). Runs before the weights get their QuantSpecs; its use case is
weight-only INT4 / FP4.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..formats import fake_quant_torch
from ..ir import Graph
from .base import Pass
from .channel_scaling import InputGroup, input_groups, rescale_input_channels
from .linear_layers import float_inputs, linear_layers, sample_rows, single_thread
from .quant_points import WeightPoint, weight_points
from .quantize_weights import QuantizeWeights

log = logging.getLogger("bitsmith.passes.awq")

MIN_MEAN = 1e-4  # AWQ's clamp of the activation statistic, so silent channels keep a finite scale


class AWQ(Pass):
    name = "awq"

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], fmt: str, granularity: str = "channel",
                 block_size: int | None = None, grid: int = 20, max_rows: int = 512) -> None:
        self.feeds = list(feeds)
        self.quantizer = QuantizeWeights(fmt, granularity, block_size, clipping="max")
        self.grid = grid
        self.max_rows = max_rows

    def run(self, graph: Graph) -> Graph:
        groups = input_groups(linear_layers(graph))
        if not groups:
            return graph
        statistics = input_statistics(graph, self.feeds, groups, self.max_rows)
        points = weight_points(graph)
        exponents = []
        for group, (mean_abs, rows) in zip(groups, statistics):
            with single_thread():
                exponent, scales = self.search(graph, group, mean_abs, rows, points)
            exponents.append(exponent)
            if exponent > 0:
                rescale_input_channels(graph, group, scales)
        log.info("AWQ scaled %d of %d input groups; exponents %s", sum(e > 0 for e in exponents), len(groups),
                 exponents)
        return graph

    def search(self, graph: Graph, group: InputGroup, mean_abs: np.ndarray, rows: torch.Tensor,
               points: dict[str, WeightPoint]) -> tuple[float, np.ndarray]:
        """(best exponent a, its scales s) for one group, by the output error on the rows."""
        weights = [graph.constants[layer.weight] for layer in group.layers]
        references = [rows @ layer.matrix(torch.from_numpy(np.array(weight)))[0].T
                      for layer, weight in zip(group.layers, weights)]
        best = (np.inf, 0.0, np.ones_like(mean_abs))
        for exponent in np.arange(self.grid) / self.grid:
            scales = awq_scales(mean_abs, exponent)
            scaled_rows = rows / torch.from_numpy(scales.astype(np.float32))
            error = 0.0
            for layer, weight, reference in zip(group.layers, weights, references):
                quantized = self._fake_quant(layer.scale_columns(weight, scales), points[layer.weight])
                error += float(((scaled_rows @ layer.matrix(quantized)[0].T - reference) ** 2).sum())
            if error < best[0]:
                best = (error, float(exponent), scales)
        return best[1], best[2]

    def _fake_quant(self, weight: np.ndarray, point: WeightPoint) -> torch.Tensor:
        return fake_quant_torch(torch.from_numpy(weight), self.quantizer.spec_for(weight, point), ste=False)


def awq_scales(mean_abs: np.ndarray, exponent: float) -> np.ndarray:
    """s = mean|X|^a, normalized so that max(s) * min(s) = 1."""
    scales = np.maximum(mean_abs.astype(np.float64), MIN_MEAN) ** exponent
    return scales / np.sqrt(scales.max() * scales.min())


def input_statistics(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]], groups: Sequence[InputGroup],
                     max_rows: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """Per group: mean |X_j| over all calibration rows of its input, and up to `max_rows` of the rows
    (pointwise layers: rows are tokens or pixel positions, columns the input channels)."""
    sums: list[torch.Tensor | None] = [None] * len(groups)
    counts = [0] * len(groups)
    samples: list[list[torch.Tensor]] = [[] for _ in groups]
    per_batch = max(1, max_rows // max(1, len(feeds)))
    for index, values in enumerate(float_inputs(graph, feeds, sorted({g.activation for g in groups}))):
        for k, group in enumerate(groups):
            rows = group.layers[0].rows(values[group.activation])[0].to(torch.float32)
            total = rows.abs().double().sum(dim=0)
            previous = sums[k]
            sums[k] = total if previous is None else previous + total
            counts[k] += rows.shape[0]
            samples[k].append(sample_rows(rows.unsqueeze(0), per_batch, seed=index)[0])
    return [((_summed(total) / count).numpy(), torch.cat(sample)) for total, count, sample in zip(sums, counts, samples)]


def _summed(total: torch.Tensor | None) -> torch.Tensor:
    if total is None:
        raise DataError("AWQ: no calibration rows reached a layer; pass at least one calibration feed")
    return total
