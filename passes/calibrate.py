"""Calibrate activation quantizers: observe each quantization point on calibration data, give it a QuantSpec.

Observers stream over batches with memory independent of the data set (bitsmith.observers): min-max,
percentile, MSE-optimal clipping, or entropy (KL, TensorRT-style). Tied values (quant_points) share one
observer, so their ranges and specs agree by construction. The model runs in float; weights may
already be quantized (the observed activations then include the weights' error, as deployed).

Integer activation formats place quantizers for the integer lowering (quant_points' widened region,
recorded as graph.metadata["activation_region"] = "integer"); there the outputs of a quantized Softmax
get the fixed spec of QSoftmax (scale 1/256, zero point at the lowest code) instead of an observed one.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..formats import choose_spec, format_info
from ..interpreter import check_feeds
from ..ir import Graph, Node, QuantSpec
from ..observers import EntropyObserver, MinMaxObserver, MSEObserver, PercentileObserver
from ..simulate import Simulator
from .base import Pass
from .quant_points import tied_groups

log = logging.getLogger("bitsmith.passes.calibrate")


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
                 observer: str = "mse", quiet: bool = True) -> None:
        self.feeds = list(feeds)
        self.fmt = fmt
        self.symmetric = symmetric or format_info(fmt).is_float
        self.observer = observer
        self.quiet = quiet

    def run(self, graph: Graph) -> Graph:
        check_calibration_feeds(graph, self.feeds)
        if not format_info(self.fmt).is_float:  # integer codes: the region the integer lowering needs
            graph.metadata["activation_region"] = "integer"
        groups = tied_groups(graph)
        producers = graph.producers()
        fixed = {i: spec for i, group in enumerate(groups)
                 if (spec := self.fixed_spec(group, producers)) is not None}
        for i, spec in fixed.items():
            for name in groups[i]:
                graph.values[name].quant = spec
        groups = [group for i, group in enumerate(groups) if i not in fixed]
        observers = [make_observer(self.observer, self.fmt, self.symmetric) for _ in groups]
        members = [name for group in groups for name in group]
        # observe float activations (with the weights as quantized so far)
        simulator = Simulator(graph, quantized=True, quantize_activations=False)
        for feeds in tqdm(self.feeds, desc="calibrate", disable=self.quiet, leave=False):
            values = simulator.run(feeds, keep=members)
            for group, observer in zip(groups, observers):
                for name in group:
                    observer.observe(values[name])
        for group, observer in zip(groups, observers):
            lo, hi = observer.range()
            spec = choose_spec(None, self.fmt, symmetric=self.symmetric, amin=np.asarray(lo, np.float32),
                               amax=np.asarray(hi, np.float32))
            for name in group:
                graph.values[name].quant = spec
        log.info("calibrated %d activation groups (%d values) with %s", len(groups), len(members), self.observer)
        return graph

    def fixed_spec(self, group: list[str], producers: dict[str, Node]) -> QuantSpec | None:
        """Softmax outputs of an integer region: scale 1/256 from the format's lowest code (QSoftmax's
        output; probabilities in [0, 1] need no calibration). None for every other group."""
        info = format_info(self.fmt)
        if info.is_float or info.bits != 8 or not any(
                name in producers and producers[name].op == "Softmax" for name in group):
            return None
        return QuantSpec(self.fmt, 8, scale=np.asarray(1 / 256, np.float32), zero_point=np.asarray(info.qmin, np.int32),
                         symmetric=False)
