"""Inter-layer dependencies of quantization error, measured on calibration data (after "Augmenting
Hessians with Inter-Layer Dependencies for Mixed-Precision Post-Training Quantization", Schaefer et
al., 2023).

A per-layer Hessian score adds up the layers' losses as if each layer's error acted alone. Errors of
neighbouring layers compound (or cancel), which reorders what is safe to quantize. For every pair of
neighbouring weighted layers (l, k), this pass measures on calibration data

    I(l, k) = dL(l and k quantized) - dL(l quantized) - dL(k quantized)

where dL is the increase of the label-free loss (the same loss as the sensitivity pass) over the FP32
model and "quantized" means the layer's weight replaced by its low-precision version (INT4 per
channel by default). `assign_precision` adds I(l, k) to its objective when both layers are chosen at
low precision.

Neighbours: k reads l's output through ops without weights only (activations, pooling, residual
adds, attention's activation-by-activation MatMuls, LayerNorm), found by a walk over the graph's
consumers that stops at the next weighted nodes.

Cost: one forward pass per layer and per pair; each restarts from the first node the change reaches,
on float activations kept from one FP32 run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..interpreter import run_node
from ..ir import Graph
from .quant_points import weight_points
from .sensitivity import LossFn

Feed = Mapping[str, np.ndarray]


@dataclass
class Interactions:
    """Measured loss increases: each layer alone, each neighbouring pair, and the pairs' interactions."""

    single: dict[str, float]
    pair: dict[tuple[str, str], float]
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def interaction(self, a: str, b: str) -> float:
        return self.pair[(a, b)] - self.single[a] - self.single[b]

    def to_json(self) -> dict[str, Any]:
        return {"single": self.single, "pairs": [[a, b, v] for (a, b), v in self.pair.items()],
                "seconds": self.seconds, "settings": self.settings}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Interactions":
        return cls(dict(data["single"]), {(a, b): float(v) for a, b, v in data["pairs"]}, float(data["seconds"]),
                   dict(data.get("settings", {})))


def neighbour_pairs(graph: Graph) -> list[tuple[str, str]]:
    """(weight of l, weight of k) for weighted nodes k reached from l through weightless ops only."""
    points = weight_points(graph)
    weighted = {n.name: n.inputs[1] for n in graph.nodes if n.inputs[1:2] and n.inputs[1] in points}
    consumers = graph.consumers()
    pairs: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.name not in weighted:
            continue
        seen: set[str] = set()
        stack = list(node.outputs)
        while stack:
            for reader in consumers.get(stack.pop(), []):
                if reader.name in seen:
                    continue
                seen.add(reader.name)
                if reader.name in weighted:
                    pair = (weighted[node.name], weighted[reader.name])
                    if pair[0] != pair[1] and pair not in pairs:
                        pairs.append(pair)
                else:
                    stack.extend(reader.outputs)
    return pairs


def measure_interactions(graph: Graph, feeds: Sequence[Feed], quantized: Mapping[str, np.ndarray], loss: LossFn,
                         pairs: Sequence[tuple[str, str]] | None = None, quiet: bool = True) -> Interactions:
    """Loss increases on `feeds` when the weights in `quantized` (name -> low-precision weight) replace
    the float ones, one layer at a time and for each neighbouring pair (default: `neighbour_pairs`)."""
    start = time.perf_counter()
    pairs = [p for p in (neighbour_pairs(graph) if pairs is None else pairs)
             if p[0] in quantized and p[1] in quantized]
    trials: list[tuple[str, ...]] = [(name,) for name in quantized] + [tuple(p) for p in pairs]
    totals = np.zeros(len(trials))
    first_reader = _first_readers(graph)
    bar = tqdm(total=len(trials) * len(feeds), disable=quiet, desc="layer interactions", unit="run", leave=False)
    try:
        for feed in feeds:
            runner = _Restartable(graph, feed)
            for i, trial in enumerate(trials):
                changed = {name: torch.from_numpy(np.asarray(quantized[name], np.float32)) for name in trial}
                outputs = runner.run(changed, min(first_reader[name] for name in trial))
                totals[i] += float(loss(outputs, runner.reference, feed))
                bar.update(1)
    finally:
        bar.close()
    means = totals / len(feeds)
    single = {trial[0]: float(v) for trial, v in zip(trials, means) if len(trial) == 1}
    pair = {(trial[0], trial[1]): float(v) for trial, v in zip(trials, means) if len(trial) == 2}
    return Interactions(single, pair, round(time.perf_counter() - start, 3))


def _first_readers(graph: Graph) -> dict[str, int]:
    """Weight name -> index of the first node reading it."""
    first: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name in graph.constants and name not in first:
                first[name] = index
    return first


class _Restartable:
    """The float graph run once on a feed, keeping every value, so that a run with changed weights
    recomputes only the nodes downstream of them, starting at the first node they reach."""

    def __init__(self, graph: Graph, feed: Feed) -> None:
        self.graph = graph
        self.constants = {n: torch.from_numpy(np.array(a)) for n, a in graph.constants.items()}
        env = {n: torch.from_numpy(np.array(feed[n])) for n in graph.inputs}
        with torch.no_grad():
            for node in graph.nodes:
                outs = run_node(node, [self._get(env, i) if i else None for i in node.inputs])
                env.update(zip(node.outputs, outs))
        self.env = env
        self.reference = {n: env[n] for n in graph.outputs}

    def _get(self, env: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        return env[name] if name in env else self.constants[name]

    def run(self, weights: Mapping[str, torch.Tensor], start: int) -> dict[str, torch.Tensor]:
        """Outputs with `weights` substituted, recomputing nodes from index `start` on."""
        changed: dict[str, torch.Tensor] = dict(weights)
        with torch.no_grad():
            for node in self.graph.nodes[start:]:
                if not any(i in changed for i in node.inputs):
                    continue
                args = [changed[i] if i in changed else self._get(self.env, i) if i else None for i in node.inputs]
                changed.update(zip(node.outputs, run_node(node, args)))
        return {n: changed.get(n, self.env[n]) for n in self.graph.outputs}
