"""Fake-quantized execution of an annotated graph on the torch interpreter.

Every value carrying a QuantSpec is replaced by quantize-then-dequantize of itself: weights once,
when the simulator is built; activations as they are produced. Block-format activations get their
block scales from the data at run time (as MX hardware does), and dynamic specs (`QuantSpec.dynamic`,
ONNX DynamicQuantizeLinear) their uint8 scale and zero point from each tensor, on every run. The
forward pass is autograd-friendly (straight-through estimator), which the Hessian sensitivity pass
relies on.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from .formats import fake_quant_dynamic_torch, fake_quant_torch
from .interpreter import check_feeds, execute
from .ir import Graph, QuantSpec


def fake_quant_activation(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    if spec.dynamic:  # scale and zero point from this tensor, as DynamicQuantizeLinear (formats.dynamic_spec)
        return fake_quant_torch(x, spec)
    if spec.granularity == "block":
        return fake_quant_dynamic_torch(x, spec.format, axis=spec.axis if spec.axis is not None else -1,
                                        block_size=spec.block_size)
    return fake_quant_torch(x, spec)


class Simulator:
    """Runs `graph` with fake quantization (quantized=False: plain float, same code path).

    `quantize_activations=False` keeps activations in float while weights are fake-quantized (what
    calibration observes)."""

    def __init__(self, graph: Graph, quantized: bool = True, weights: Mapping[str, torch.Tensor] | None = None,
                 quantize_activations: bool = True):
        self.graph = graph
        self.quantized = quantized
        self.constants = dict(weights) if weights is not None else self._constants()
        self.specs = {name: v.quant for name, v in graph.values.items()
                      if quantized and quantize_activations and v.quant is not None and name not in graph.constants}

    def _constants(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, array in self.graph.constants.items():
            tensor = torch.from_numpy(np.array(array))
            spec = self.graph.values[name].quant
            if self.quantized and spec is not None:
                with torch.no_grad():
                    tensor = fake_quant_torch(tensor, spec, ste=False)
            out[name] = tensor
        return out

    def quantize_value(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The activation `name` as this simulator sees it (fake-quantized when it carries a spec)."""
        spec = self.specs.get(name)
        return tensor if spec is None else fake_quant_activation(tensor, spec)

    def forward(self, inputs: Mapping[str, torch.Tensor], keep: Sequence[str] = (),
                constants: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Torch in, torch out (autograd flows through); `constants` overrides weights by name."""
        env = {**self.constants, **(constants or {}), **inputs}
        return execute(self.graph, env, set(keep), self.quantize_value if self.specs else None)

    def run(self, feeds: Mapping[str, np.ndarray], keep: Sequence[str] = ()) -> dict[str, np.ndarray]:
        check_feeds(self.graph, dict(feeds))
        with torch.no_grad():
            env = self.forward({k: torch.from_numpy(np.array(v)) for k, v in feeds.items()}, keep)
        return {name: env[name].numpy() for name in [*self.graph.outputs, *keep]}
