"""Quantizer ranges for the inputs of float output tables: only where the table's function varies.

A graph output computed through a transcendental function (a detector's final Sigmoid) is read from a
table of float32 values indexed by its input's codes (quant_points.float_table_region,
passes/lower_integer.py). That input's quantizer need not represent inputs on which the function is
constant: f(clamp(x)) = f(x) there, and the codes it frees sharpen the table where it matters. PP-OCRv4
det's logits are observed in [-167, 106], a step of 1.07: the probability map moves by up to 0.13
between neighbouring codes; the Sigmoid varies (by more than 1e-6) only within [-13.8, 13.8], a step
of 0.11.

`active_range(graph, regions, lo, hi)` evaluates each region with the reference interpreter on a fine
grid over the observed [lo, hi] and keeps the smallest interval outside which every function stays
within `FLAT_TOLERANCE` (relative to its largest magnitude) of its value at the nearer end;
`float_table_inputs(graph, points)` finds the quantization points that only such tables read.
Calibrate applies both to integer activation formats.
"""

from __future__ import annotations

import numpy as np
import torch

from ..interpreter import run_node
from ..ir import Graph
from .quant_points import LookupRegion, float_table_region

FLAT_TOLERANCE = 1e-6  # below what a float32 probability near 0 or 1 resolves in a probability map
GRID_POINTS = 4097


def evaluate_region(graph: Graph, region: LookupRegion, reals: np.ndarray) -> np.ndarray:
    """The region's output for each input value in `reals` (1-D), run by the reference interpreter:
    float32 [len(reals), channels] (channels along region.axis, else 1)."""
    rank = len(graph.values[region.input].shape)
    probe_shape = [len(reals)] + [1] * rank
    channels = 1
    if region.axis is not None:
        channels = graph.values[region.input].shape[region.axis]
        probe_shape[1 + region.axis] = channels
    values = np.broadcast_to(reals.astype(np.float32).reshape([-1] + [1] * rank), probe_shape).copy()
    env: dict[str, torch.Tensor] = {region.input: torch.from_numpy(values)}
    with torch.no_grad():
        for node in region.nodes:
            args = [env[i] if i in env else torch.from_numpy(np.array(graph.constants[i])) if i else None
                    for i in node.inputs]
            for name, value in zip(node.outputs, run_node(node, args)):
                env[name] = value
    return env[region.output].numpy().astype(np.float32).reshape(len(reals), channels)


def float_table_inputs(graph: Graph, points: set[str]) -> dict[str, list[LookupRegion]]:
    """Quantization point -> the float output tables reading it, for the points that nothing else reads."""
    producers, consumers = graph.producers(), graph.consumers()
    by_input: dict[str, list[LookupRegion]] = {}
    for name in graph.outputs:
        region = float_table_region(graph, name, producers, consumers, stop=points)
        if region is not None and region.input in points:
            by_input.setdefault(region.input, []).append(region)
    only_tables = {}
    for name, regions in by_input.items():
        members = {node.name for region in regions for node in region.nodes}
        if name not in graph.outputs and all(reader.name in members for reader in consumers.get(name, [])):
            only_tables[name] = regions
    return only_tables


def active_range(graph: Graph, regions: list[LookupRegion], lo: float, hi: float) -> tuple[float, float]:
    """[lo, hi] narrowed to where some region's function varies (module docstring); [lo, hi] itself when
    the functions vary nowhere in it."""
    if not hi > lo:
        return lo, hi
    grid = np.linspace(lo, hi, GRID_POINTS).astype(np.float32)
    first, last = len(grid) - 1, 0
    for region in regions:
        values = evaluate_region(graph, region, grid).astype(np.float64)
        tolerance = FLAT_TOLERANCE * max(float(np.abs(values).max()), float(np.finfo(np.float32).tiny))
        from_low = np.flatnonzero((np.abs(values - values[0]) > tolerance).any(axis=1))
        from_high = np.flatnonzero((np.abs(values - values[-1]) > tolerance).any(axis=1))
        if len(from_low):
            first, last = min(first, int(from_low[0]) - 1), max(last, int(from_high[-1]) + 1)
    if first >= last:
        return lo, hi
    return float(grid[max(first, 0)]), float(grid[min(last, len(grid) - 1)])
