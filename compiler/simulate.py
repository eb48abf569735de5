"""Fake-quantized execution of an annotated graph on the torch interpreter.

Every value carrying a QuantSpec is replaced by quantize-then-dequantize of itself: weights once,
when the simulator is built; activations as they are produced. Block-format activations get their
block scales from the data at run time (as MX hardware does), and dynamic specs (`QuantSpec.dynamic`,
ONNX DynamicQuantizeLinear) their uint8 scale and zero point from each tensor, on every run. The
forward pass is autograd-friendly (straight-through estimator), which the Hessian sensitivity pass
relies on.

`integer_exact=True` makes the values equal the integer reference (passes/lower_integer.py: the lowered
graph run by the interpreter's integer kernels) bit for bit, for graphs with 8-bit integer activations
(and the int16 wide values their integer region adds, quant_points.wide_points).
Fake quantization rounds float sums; integer hardware does not, so the two can part by a code: fed the
same inputs, the requantized Conv / MatMul outputs of the CNN zoo models differ at 0.01-0.2% of their
codes, by one step (float32 accumulation and float biases against exact int32 sums with int32 bias codes,
round-half-even against the dyadic requantization's round-half-up), a global average pool at one code in
64,512, and QAdd, QMul, the lookup tables and QSoftmax not at all; those steps then grow through the
layers (docs/results/integer_parity.md measures both). Rather than a second
definition of that arithmetic, the exact mode runs the lowered graph (the one definition, shared with
the TVM artifact) next to the fake-quant graph and replaces every activation the lowering computes
with the reference's value. Gradients are the fake-quant graph's (straight through the replacement),
evaluated at the integer values, so autograd users see the deployed numerics.

`float64=True` runs the same computation with float64 arithmetic (weights, inputs and every float value
widened; each quantizer still rounds from float32, as the deployed one does). Its distance from the
float32 simulation is how far float rounding alone moves the outputs: the yardstick for "equal within
float rounding" between a compiled float-format artifact and the simulation (scripts/integer_parity.py).
"""

from __future__ import annotations

from typing import Mapping, Sequence, cast

import numpy as np
import torch

from .errors import UnsupportedError, UsageError
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


class _Snap(torch.autograd.Function):
    """Forward: `exact`. Backward: the gradient goes to `simulated` unchanged (straight through)."""

    @staticmethod
    def forward(ctx, simulated: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return exact.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def _dequantize_codes(codes: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """float32(q - zero_point) * scale: DequantizeLinear's arithmetic (interpreter), per-tensor spec."""
    zero_point = int(spec.zero_point.reshape(-1)[0])
    scale = torch.tensor(np.float32(spec.scale.reshape(-1)[0]))
    return (codes.to(torch.int32) - zero_point).to(torch.float32) * scale


def _check_integer_activations(graph: Graph) -> None:
    """The integer-exact mode replaces integer activations (8-bit, and the int16 wide ones) by the
    reference's codes; activations in other formats (FP8 is lowered, but computed in float) have no integer
    values to take."""
    formats = sorted({v.quant.format for name, v in graph.values.items() if v.quant is not None
                      and name not in graph.constants and v.quant.format not in ("int8", "uint8", "int16")})
    if formats:
        raise UnsupportedError(f"Simulator(integer_exact=True) simulates integer activations; graph {graph.name!r} "
                               f"quantizes activations as {', '.join(formats)}. Use the default fake-quant mode "
                               f"(integer_exact=False) for formats without integer kernels.")


class _IntegerReference:
    """The lowered integer graph of a quantized graph, and its values under the source graph's names."""

    def __init__(self, graph: Graph) -> None:
        from .passes.lower_integer import lower_integer_traced  # passes import this module

        _check_integer_activations(graph)
        try:
            self.lowered, self.where = lower_integer_traced(graph)
        except UnsupportedError as exc:
            raise UnsupportedError(f"Simulator(integer_exact=True) simulates the integer lowering, which refuses "
                                   f"graph {graph.name!r}: {exc}. Use the default fake-quant mode "
                                   f"(integer_exact=False) for formats without integer kernels.") from exc
        # values with integer codes are quantized: each has its spec
        self.specs = {name: cast(QuantSpec, graph.values[name].quant) for name in self.where.codes}
        self.names = set(self.where.codes.values()) | set(self.where.floats.values())

    def values(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            env = execute(self.lowered, {k: v.detach() for k, v in inputs.items()}, self.names)
        exact = {src: env[dst] for src, dst in self.where.floats.items()}
        exact.update((src, _dequantize_codes(env[dst], self.specs[src])) for src, dst in self.where.codes.items())
        return exact


def _widened(tensor: torch.Tensor) -> torch.Tensor:
    """float32 (and narrower floats) as float64; other dtypes unchanged."""
    return tensor.to(torch.float64) if tensor.is_floating_point() and tensor.dtype != torch.float64 else tensor


class Simulator:
    """Runs `graph` with fake quantization (quantized=False: plain float, same code path).

    `quantize_activations=False` keeps activations in float while weights are fake-quantized (what
    calibration observes). `integer_exact=True` (8-bit integer activations) gives the integer reference's
    values with the fake-quant graph's gradients; `float64=True` computes in float64 (module docstring)."""

    def __init__(self, graph: Graph, quantized: bool = True, weights: Mapping[str, torch.Tensor] | None = None,
                 quantize_activations: bool = True, integer_exact: bool = False, float64: bool = False):
        self.graph = graph
        self.quantized = quantized
        self.constants = dict(weights) if weights is not None else self._constants()
        self.specs = {name: v.quant for name, v in graph.values.items()
                      if quantized and quantize_activations and v.quant is not None and name not in graph.constants}
        if integer_exact and not (quantized and quantize_activations):
            raise UsageError("Simulator(integer_exact=True) simulates quantized activations: it needs "
                             "quantized=True and quantize_activations=True")
        self.integer = _IntegerReference(graph) if integer_exact else None
        if float64 and integer_exact:
            raise UsageError("Simulator: integer_exact=True computes with integers; float64=True does not apply")
        self.float64 = float64
        if float64:
            self.constants = {name: _widened(t) for name, t in self.constants.items()}

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
        if self.float64:
            tensor = _widened(tensor)
        return tensor if spec is None else fake_quant_activation(tensor, spec)

    def forward(self, inputs: Mapping[str, torch.Tensor], keep: Sequence[str] = (),
                constants: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Torch in, torch out (autograd flows through); `constants` overrides weights by name (in the
        integer-exact mode the graph is lowered again with them: their values, detached, are the floats
        the lowering quantizes)."""
        env = {**self.constants, **(constants or {}), **inputs}
        if self.integer is None:
            hook = self.quantize_value if self.specs or self.float64 else None
            return execute(self.graph, env, set(keep), hook)
        reference = self.integer if not constants else _IntegerReference(self._with_constants(constants))
        exact = reference.values(inputs)

        def snap(name: str, tensor: torch.Tensor) -> torch.Tensor:
            simulated = self.quantize_value(name, tensor)
            return simulated if name not in exact else _Snap.apply(simulated, exact[name])

        return execute(self.graph, env, set(keep), snap)

    def _with_constants(self, constants: Mapping[str, torch.Tensor]) -> Graph:
        graph = self.graph.copy()
        for name, tensor in constants.items():
            if name in graph.constants:
                graph.constants[name] = tensor.detach().numpy().astype(graph.constants[name].dtype)
        return graph

    def run(self, feeds: Mapping[str, np.ndarray], keep: Sequence[str] = ()) -> dict[str, np.ndarray]:
        check_feeds(self.graph, dict(feeds))
        with torch.no_grad():
            env = self.forward({k: torch.from_numpy(np.array(v)) for k, v in feeds.items()}, keep)
        return {name: env[name].numpy() for name in [*self.graph.outputs, *keep]}
