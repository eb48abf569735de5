"""Calibrate activation quantizers: observe each quantization point on calibration data, give it a QuantSpec.

Observers stream over batches with memory independent of the data set (bitsmith.observers): min-max,
percentile, MSE-optimal clipping, or entropy (KL, TensorRT-style). Tied values (quant_points) share one
observer, so their ranges and specs agree by construction. The model runs in float; weights may
already be quantized (the observed activations then include the weights' error, as deployed).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..formats import choose_spec, format_info
from ..interpreter import check_feeds
from ..ir import Graph
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
        groups = tied_groups(graph)
        observers = [make_observer(self.observer, self.fmt, self.symmetric) for _ in groups]
        members = [name for group in groups for name in group]
        simulator = Simulator(graph, quantized=True)
        simulator.specs = {}  # observe float activations (with the weights as quantized so far)
        for feeds in tqdm(self.feeds, desc="calibrate", disable=self.quiet, leave=False):
            values = simulator.run(feeds, keep=members)
            for group, observer in zip(groups, observers):
                for name in group:
                    observer.observe(values[name])
        for group, observer in zip(groups, observers):
            lo, hi = observer.range()
            spec = choose_spec(None, self.fmt, symmetric=self.symmetric, amin=np.float32(lo), amax=np.float32(hi))
            for name in group:
                graph.values[name].quant = spec
        log.info("calibrated %d activation groups (%d values) with %s", len(groups), len(members), self.observer)
        return graph
