"""Give every weight (quant_points.weight_points) a QuantSpec: per output channel, or per block.

Clipping "mse" searches, per channel, the clipping ratio alpha in [0.5, 1] that minimizes
||W_c - Q(W_c)||^2 (the weight half of PTQ's standard MSE calibration); "max" uses each channel's
absolute maximum. Integer and FP blocks with FP32 scales (per-group INT4, e.g. groups of 128 along
the reduction axis) search alpha per block the same way. Block formats (MX, NVFP4) take their scales
from each block, as the OCP spec does.
Weights keep their float values: algorithms such as GPTQ/AWQ rewrite them before this pass or
through it; the spec says how they are quantized.

`overrides` (weight name -> recipes.LayerFormat) gives single weights their own format, granularity
and block size (mixed precision); an override with format None leaves that weight in float, and with
fmt=None only the overridden weights are quantized.
"""

from __future__ import annotations

from typing import Mapping, cast

import numpy as np

from ..errors import UsageError
from ..formats import choose_spec, fake_quant, format_info
from ..ir import Graph, QuantSpec
from ..recipes import LayerFormat
from .base import Pass
from .quant_points import WeightPoint, weight_points

ALPHAS = np.linspace(0.5, 1.0, 26)


class QuantizeWeights(Pass):
    name = "quantize_weights"
    ensures = ("weights_quantized",)

    def __init__(self, fmt: str | None = "int8", granularity: str = "channel", block_size: int | None = None,
                 clipping: str = "mse", symmetric: bool = True,
                 overrides: Mapping[str, LayerFormat] | None = None) -> None:
        self.fmt = fmt
        self.granularity = granularity
        self.block_size = block_size
        self.clipping = clipping
        self.symmetric = symmetric
        self.overrides = dict(overrides or {})

    def run(self, graph: Graph) -> Graph:
        points = weight_points(graph)
        unknown = sorted(set(self.overrides) - set(points))
        if unknown:
            raise UsageError(f"quantize_weights: per-layer formats name {unknown}, which are not weights of "
                             f"Conv/ConvTranspose/MatMul nodes in model {graph.name!r}; known weights: "
                             f"{sorted(points)[:8]}{' ...' if len(points) > 8 else ''}")
        for point in points.values():
            quantizer = self.for_weight(point.name)
            if quantizer.fmt is not None:
                graph.values[point.name].quant = quantizer.spec_for(graph.constants[point.name], point)
        return graph

    def for_weight(self, name: str) -> "QuantizeWeights":
        """The quantizer of one weight: this one, or one built from the weight's override."""
        override = self.overrides.get(name)
        if override is None:
            return self
        return QuantizeWeights(override.format, override.granularity, override.block_size, self.clipping,
                               self.symmetric)

    def spec_for(self, weight: np.ndarray, point: WeightPoint) -> QuantSpec:
        fmt = self.fmt
        if fmt is None:
            raise UsageError(f"quantize_weights: weight {point.name!r} has no format to quantize to")
        if self.granularity == "block" or format_info(fmt).is_block_format:
            block_size = self.block_size or format_info(fmt).block_size
            if self.clipping == "mse" and not format_info(fmt).is_block_format:
                return mse_block_spec(weight, fmt, point.reduce_axis, int(cast(int, block_size)), self.symmetric)
            return choose_spec(weight, fmt, "block", axis=point.reduce_axis, block_size=block_size, symmetric=True)
        axis = point.channel_axis
        if self.clipping == "max":
            return choose_spec(weight, fmt, "channel", axis=axis, symmetric=self.symmetric)
        return mse_channel_spec(weight, fmt, axis, self.symmetric)


def mse_channel_spec(weight: np.ndarray, fmt: str, axis: int, symmetric: bool = True) -> QuantSpec:
    """Per-channel spec whose clipping ratio minimizes each channel's squared quantization error."""
    moved = np.moveaxis(weight.astype(np.float32), axis, 0).reshape(weight.shape[axis], -1)
    lo, hi = _mse_ranges(moved, fmt, symmetric)
    return choose_spec(None, fmt, "channel", axis=axis, symmetric=symmetric, amin=lo, amax=hi)


def _mse_ranges(rows: np.ndarray, fmt: str, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the range alpha * [min, max] (alpha in ALPHAS) with the least squared error."""
    lo_full, hi_full = rows.min(axis=1), rows.max(axis=1)
    best_alpha = np.ones(len(rows), np.float32)
    best_err = np.full(len(rows), np.inf)
    for alpha in ALPHAS:
        spec = choose_spec(None, fmt, "channel", axis=0, symmetric=symmetric,
                           amin=lo_full * alpha, amax=hi_full * alpha)
        err = _per_channel_error(rows, spec)
        better = err < best_err
        best_err[better], best_alpha[better] = err[better], alpha
    return lo_full * best_alpha, hi_full * best_alpha


def mse_block_spec(weight: np.ndarray, fmt: str, axis: int, block_size: int, symmetric: bool = True) -> QuantSpec:
    """Per-block spec (blocks of `block_size` along `axis`, FP32 scales) whose clipping ratio minimizes
    each block's squared quantization error: `mse_channel_spec` with every block as one channel."""
    axis = axis % weight.ndim
    moved = np.moveaxis(weight.astype(np.float32), axis, -1)
    length = moved.shape[-1]
    blocks = -(-length // block_size)
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, blocks * block_size - length)])  # zeros: exact
    lo, hi = _mse_ranges(padded.reshape(-1, block_size), fmt, symmetric)
    scale_shape = moved.shape[:-1] + (blocks,)
    amin = np.moveaxis(lo.reshape(scale_shape), -1, axis)
    amax = np.moveaxis(hi.reshape(scale_shape), -1, axis)
    return choose_spec(weight, fmt, "block", axis=axis, block_size=block_size, symmetric=symmetric,
                       amin=amin, amax=amax)


def _per_channel_error(rows: np.ndarray, spec: QuantSpec) -> np.ndarray:
    return ((fake_quant(rows, spec) - rows) ** 2).sum(axis=1)
