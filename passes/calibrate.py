"""Calibrate activation quantizers: observe each quantization point on calibration data, give it a QuantSpec.

Observers stream over batches with memory independent of the data set (bitsmith.observers): min-max,
percentile, MSE-optimal clipping, or entropy (KL, TensorRT-style). Tied values (quant_points) share one
observer, so their ranges and specs agree by construction. The model runs in float; weights may
already be quantized (the observed activations then include the weights' error, as deployed).

Integer activation formats place quantizers for the integer lowering (quant_points' widened region,
recorded as graph.metadata["activation_region"] = "integer"); there the outputs of a quantized Softmax
get the fixed spec of QSoftmax (scale 1/256, zero point at the lowest code) instead of an observed one,
the input of a float output table (a final Sigmoid) keeps only the part of its observed range where
the table's function varies (passes/table_ranges.py), and the wide values (quant_points.wide_points: LayerNorm inputs, the residual Adds computing them, the
inputs of tables computing wide values) get quant_points.WIDE_FORMAT (int16), symmetric, from a min-max
observer with WIDE_HEADROOM: 16 bits resolve the small channels next to the outliers without clipping,
and a larger value at run time does not clip (a wide Softmax output: int16 with scale 2^-15).

`sample_mask` names a graph input (e.g. a transformer's attention_mask, [batch, tokens]) whose zero
entries mark padding: activations whose leading axes are that shape are observed at the marked
positions only (`masked_rows`). Padding is computed but does not change the real tokens' results (the
attention masks it out), and with short sentences in a fixed-length input it is most of the data (83% of MiniLM's 128 positions in the
zoo's sentences), so unmasked observers spend their range on it.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from ..errors import DataError, UsageError
from ..formats import choose_spec, format_info
from ..interpreter import check_feeds
from ..ir import Graph, Node, QuantSpec
from ..observers import EntropyObserver, MinMaxObserver, MSEObserver, PercentileObserver
from ..simulate import Simulator
from .base import Pass
from .quant_points import WIDE_FORMAT, is_integer_region, tied_groups, wide_points
from .table_ranges import active_range, float_table_inputs

log = logging.getLogger("bitsmith.passes.calibrate")

WIDE_HEADROOM = 2.0  # wide activations' range: the calibrated max |x| times this (one of 16 bits)


def make_observer(kind: str, fmt: str, symmetric: bool) -> Any:
    if kind == "minmax":
        return MinMaxObserver()
    if kind == "percentile":
        return PercentileObserver()
    if kind == "mse":
        return MSEObserver(fmt=fmt, symmetric=symmetric)
    if kind == "entropy":
        return EntropyObserver()
    raise DataError(f"unknown activation observer {kind!r}; use minmax, percentile, mse or entropy")


def masked_rows(x: Any, mask: np.ndarray | None) -> Any:
    """x at the positions `mask` marks (nonzero) when x's leading axes have the mask's shape, else x
    (numpy arrays and torch tensors alike)."""
    if mask is None or tuple(x.shape[:mask.ndim]) != mask.shape:
        return x
    keep = mask != 0
    return x[torch.from_numpy(keep)] if isinstance(x, torch.Tensor) else x[keep]


def sample_mask_of(graph: Graph, feeds: Mapping[str, np.ndarray], name: str | None) -> np.ndarray | None:
    """The mask a calibration batch gives for the graph input `name` (None: no mask)."""
    if name is None:
        return None
    if name not in graph.inputs:
        raise UsageError(f"calibration mask {name!r} is not an input of model {graph.name!r}; "
                         f"inputs: {graph.inputs}")
    return np.asarray(feeds[name])


def check_calibration_feeds(graph: Graph, feeds: list[Mapping[str, np.ndarray]]) -> None:
    if not feeds:
        raise DataError("the calibration set is empty; give at least one input batch (calibration=[...])")
    for i, f in enumerate(feeds):
        try:
            check_feeds(graph, dict(f))
        except DataError as exc:
            raise DataError(f"calibration batch {i}: {exc}") from None
        for name, array in f.items():
            if np.asarray(array).dtype.kind == "f" and not np.isfinite(array).all():
                raise DataError(f"calibration batch {i}, input {name!r} contains NaN or Inf; clean the data")


class Calibrate(Pass):
    name = "calibrate"
    ensures = ("activations_calibrated",)

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]], fmt: str = "uint8", symmetric: bool = False,
                 observer: str = "mse", quiet: bool = True, sample_mask: str | None = None) -> None:
        self.feeds = list(feeds)
        self.sample_mask = sample_mask
        self.fmt = fmt
        self.symmetric = symmetric or format_info(fmt).is_float
        self.observer = observer
        self.quiet = quiet

    def run(self, graph: Graph) -> Graph:
        check_calibration_feeds(graph, self.feeds)
        if not format_info(self.fmt).is_float:  # integer codes: the region the integer lowering needs
            graph.metadata["activation_region"] = "integer"
        groups = tied_groups(graph)
        points = {name for group in groups for name in group}
        producers = graph.producers()
        wide = self.wide_values(graph, groups)
        fixed = {i: spec for i, group in enumerate(groups)
                 if (spec := self.fixed_spec(group, producers, group[0] in wide)) is not None}
        for i, spec in fixed.items():
            for name in groups[i]:
                graph.values[name].quant = spec
        groups = [group for i, group in enumerate(groups) if i not in fixed]
        observers = [MinMaxObserver() if group[0] in wide else make_observer(self.observer, self.fmt, self.symmetric)
                     for group in groups]
        members = [name for group in groups for name in group]
        # observe float activations (with the weights as quantized so far)
        simulator = Simulator(graph, quantized=True, quantize_activations=False)
        for feeds in tqdm(self.feeds, desc="calibrate", disable=self.quiet, leave=False):
            values = simulator.run(feeds, keep=members)
            mask = sample_mask_of(graph, feeds, self.sample_mask)
            for group, observer in zip(groups, observers):
                for name in group:
                    observer.observe(masked_rows(values[name], mask))
        tables = float_table_inputs(graph, points) if is_integer_region(graph) else {}
        for group, observer in zip(groups, observers):
            lo, hi = observer.range()
            if group[0] in wide:
                bound = np.float32(WIDE_HEADROOM * max(abs(float(lo)), abs(float(hi))))
                spec = choose_spec(None, WIDE_FORMAT, symmetric=True, amin=-bound, amax=bound)
            else:
                if all(name in tables for name in group):  # read by float output tables only: where they vary
                    lo, hi = active_range(graph, [r for name in group for r in tables[name]], float(lo), float(hi))
                spec = choose_spec(None, self.fmt, symmetric=self.symmetric, amin=np.asarray(lo, np.float32),
                                   amax=np.asarray(hi, np.float32))
            for name in group:
                graph.values[name].quant = spec
        log.info("calibrated %d activation groups (%d values) with %s", len(groups), len(members), self.observer)
        return graph

    def wide_values(self, graph: Graph, groups: list[list[str]]) -> set[str]:
        """Values quantized with WIDE_FORMAT: the integer region's wide points (8-bit integer formats only)."""
        info = format_info(self.fmt)
        return set() if info.is_float or info.bits != 8 else wide_points(graph, groups)

    def fixed_spec(self, group: list[str], producers: dict[str, Node], wide: bool = False) -> QuantSpec | None:
        """Softmax outputs of an integer region: scale 1/256 from the format's lowest code (QSoftmax's
        output; probabilities in [0, 1] need no calibration), or for a wide one (a graph output) int16 with
        scale 2^-15 and zero point 0. None for every other group."""
        info = format_info(self.fmt)
        if info.is_float or info.bits != 8 or not any(
                name in producers and producers[name].op == "Softmax" for name in group):
            return None
        if wide:
            return QuantSpec(WIDE_FORMAT, 16, scale=np.asarray(2.0 ** -15, np.float32),
                             zero_point=np.asarray(0, np.int32), symmetric=True)
        return QuantSpec(self.fmt, 8, scale=np.asarray(1 / 256, np.float32), zero_point=np.asarray(info.qmin, np.int32),
                         symmetric=False)
