"""Shared by the QDQ export and pre-quantized import tests: run the Simulator and keep, for each
quantized value, both what it sees (fake-quantized) and the value before quantization."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from bitsmith.interpreter import execute
from bitsmith.ir import Graph
from bitsmith.simulate import Simulator


def simulate_with_raw(graph: Graph, feeds: dict, names: Iterable[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(graph outputs and `names` as the simulator computes them, each of `names` before quantization)."""
    simulator = Simulator(graph)
    names = list(names)
    raw: dict[str, torch.Tensor] = {}

    def hook(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if name in simulator.specs:
            raw[name] = tensor
        return simulator.quantize_value(name, tensor)

    with torch.no_grad():
        env = execute(graph, {**simulator.constants, **{k: torch.from_numpy(np.array(v)) for k, v in feeds.items()}},
                      set(names), hook)
    return {n: env[n].numpy() for n in [*graph.outputs, *names]}, {n: raw[n].numpy() for n in names}
