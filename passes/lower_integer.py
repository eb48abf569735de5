"""Integer lowering: an annotated float graph (QuantSpecs) -> a graph of integer IR ops.

Implements docs/design/integer_lowering.md. The result uses the quantized ops of `ops.QUANTIZED_OPS`,
whose semantics need exact arithmetic only, so the TVM artifact computes exactly what the reference
interpreter computes on the lowered graph. Rules:

- Conv / MatMul whose data input and weight carry integer specs -> QConv / QMatMul. The bias (the op's
  own and a following per-channel Add of a constant, `quant_points.weighted_chain`) becomes int32
  rne(b / (s_x * s_w[c])). A following Relu / Clip is absorbed as a clamp on the codes when its output
  carries the spec (quantize is monotone, so quantize(clip(y)) = clamp(quantize(y))). The epilogue
  requantizes with dyadic multipliers (`dyadic`) when the output carries a spec, else it is float:
  float32(acc) * (s_x * s_w[c]).
- Unary elementwise subgraphs (`quant_points.lookup_region`) from a quantized value to a quantized value
  -> QLookup with 256-entry tables (one per channel when the constants vary along an axis, e.g. PRelu),
  computed once here by running the subgraph in the reference interpreter on every code.
- Add / Mul of two quantized activations -> QAdd / QMul; GlobalAveragePool / AveragePool -> QGlobalAveragePool
  / QAveragePool (the window count folded into the multiplier); Softmax -> QSoftmax (output scale 1/256).
- Scale-preserving ops (quant_points.SCALE_PRESERVING, nearest Resize) whose input and output specs
  agree run unchanged on codes (MaxPool pads with the lowest code).
- Anything else runs in float: its quantized inputs are DequantizeLinear-ed, its quantized outputs
  QuantizeLinear-ed.
- Low-precision formats (ops.LOW_PRECISION_OPS): a weight read by QConv / QMatMul in int4 / uint4 is
  stored two codes per byte and unpacked by UnpackCodes; a quantized weight read by a float op is stored
  as its bytes (formats.store_weight: packed 4-bit codes, FP8 bit patterns, int8 codes, E8M0 / E4M3 /
  FP32 scales) and decoded by DequantizeWeight. Both read constants only, so the backend runs them once,
  at load. FP8 activations (per tensor) are rounded to their bit patterns by QuantizeFloat after the float
  op that computes them and read by float ops through DequantizeFloat.

Naming: a quantized value `v` of the source graph has its codes under `v_q`; the name `v` itself
always means the float value (for a quantized value: its dequantized codes), so graph inputs and
outputs keep their names and float types. Activation specs must be per tensor and static, in int8 /
uint8 (integer ops) or FP8 (float ops); others raise UnsupportedError. The lowered graph's
metadata["integer_lowering"] lists every weighted layer (how it was lowered, its formats), how each
format is stored and computed ("execution"), and the formats computed in float in place of a quantized
kernel ("emulated": FP8 activations, and weights of float ops whose inputs are quantized).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from ..errors import IRError, UnsupportedError
from ..formats import SUB_BYTE_FORMATS, dequantize, format_info, quantize, store_weight
from ..interpreter import INT32_MAX, run_node
from ..ir import Graph, Node, QuantSpec, Value
from .base import Pass
from .quant_points import (
    CLAMPS, SCALE_PRESERVING, LookupRegion, epilogue_bias, lookup_region, weighted_chain,
)

log = logging.getLogger("bitsmith.passes.lower_integer")

SOFTMAX_EXP_BITS = 30  # QSoftmax's exp table: rne(2^30 * exp(-d * scale))
INTEGER_WEIGHT_FORMATS = ("int8", "uint8", "int4", "uint4")
NATIVE_FORMATS = ("int8", "uint8")  # formats with native integer kernels; int4/uint4 codes sit in int8 containers
FLOAT_ACTIVATION_FORMATS = ("fp8_e4m3", "fp8_e5m2")  # rounded through their bits, computed in float
WEIGHT_ONLY = "float, weights decoded"  # a layer report's "lowered": float activations on decoded weights (no fallback)


# ---------------------------------------------------------------------------------------------
# Dyadic multipliers
# ---------------------------------------------------------------------------------------------
def dyadic(real: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier, shift), int64 arrays with multiplier / 2^shift ~ real (HAWQ-V3's dyadic numbers).

    From frexp: real = m * 2^e with m in [0.5, 1): multiplier = rne(m * 2^31) in [2^30, 2^31) (a
    rounding up to 2^31 carries into the exponent) and shift = 31 - e in [1, 62]. A factor below
    2^-31 (shift > 62) keeps shift 62 with multiplier rne(real * 2^62) < 2^30 (zero for real = 0); a
    factor of 2^30 or more (shift < 1) raises UnsupportedError. `real` must be finite and >= 0.
    """
    real = np.asarray(real, np.float64)
    if not np.all(np.isfinite(real)) or np.any(real < 0):
        raise UnsupportedError(f"dyadic: rescale factors must be finite and non-negative, got {real}")
    mantissa, exponent = np.frexp(real)
    multiplier = np.rint(mantissa * 2.0 ** 31).astype(np.int64)
    carry = multiplier == (1 << 31)
    multiplier = np.where(carry, np.int64(1 << 30), multiplier)
    shift = (31 - (exponent + carry)).astype(np.int64)
    if np.any(shift < 1):
        raise UnsupportedError(f"dyadic: a rescale factor of {real.max():.6g} (2^30 or more) does not fit")
    small = (shift > 62) | (real == 0)
    multiplier = np.where(small, np.rint(np.where(small, real, 0.0) * 2.0 ** 62).astype(np.int64), multiplier)
    shift = np.where(small, np.int64(62), shift)
    return multiplier.astype(np.int64), shift.astype(np.int64)


def shared_shift_dyadic(real_a: float, real_b: float) -> tuple[int, int, int]:
    """(multiplier_a, multiplier_b, shift) for QAdd: one shift, chosen (`dyadic`) for the larger factor;
    the smaller factor's multiplier is rne(real * 2^shift) at that shift."""
    _, shift = dyadic(max(real_a, real_b))
    step = 2.0 ** int(shift)
    return int(np.rint(real_a * step)), int(np.rint(real_b * step)), int(shift)


# ---------------------------------------------------------------------------------------------
# The pass
# ---------------------------------------------------------------------------------------------
class LowerInteger(Pass):
    name = "lower_integer"
    ensures = ("integer_lowered",)

    def run(self, graph: Graph) -> Graph:
        return lower_integer(graph)


def lower_integer(graph: Graph) -> Graph:
    """The integer graph of an annotated graph (see the module docstring); `graph` is not modified."""
    return _Lowering(graph).run()


@dataclass(frozen=True)
class LoweredValues:
    """Where the lowered graph holds each activation of the source graph: `codes` (source value -> the
    lowered value with its integer codes, for quantized values) and `floats` (source value -> the lowered
    float value: graph inputs and outputs, float ops' results, float epilogues)."""

    codes: dict[str, str]
    floats: dict[str, str]


def lower_integer_traced(graph: Graph) -> tuple[Graph, LoweredValues]:
    """`lower_integer`, and where each source activation lives in its result (the integer-exact
    Simulator reads the integer reference's values through it)."""
    lowering = _Lowering(graph)
    lowered = lowering.run()
    return lowered, lowering.lowered_values()


def _is_integer_spec(spec: QuantSpec | None) -> bool:
    """An activation spec the lowering computes with: 8-bit integer, static, per tensor."""
    return (spec is not None and spec.format in ("int8", "uint8") and spec.granularity == "tensor"
            and not spec.dynamic and spec.tensor_scale is None)


def _is_float_activation_spec(spec: QuantSpec | None) -> bool:
    """An FP8 activation spec per tensor: rounded by QuantizeFloat, read by float ops through DequantizeFloat."""
    return (spec is not None and spec.format in FLOAT_ACTIVATION_FORMATS and spec.granularity == "tensor"
            and not spec.dynamic and spec.tensor_scale is None)


def _present(spec: QuantSpec | None) -> QuantSpec:
    """The spec of a value the caller knows to be quantized (it checked `_is_integer_spec` or `quantized`)."""
    if spec is None:
        raise IRError("lower_integer: a value taken for quantized carries no QuantSpec")
    return spec


def _code_dtype(spec: QuantSpec | None) -> str:
    return np.dtype(format_info(_present(spec).format).code_dtype).name


def _code_range(spec: QuantSpec | None) -> tuple[int, int]:
    info = format_info(_present(spec).format)
    return int(info.qmin), int(info.qmax)


def _scale(spec: QuantSpec | None) -> float:
    return float(np.float32(_present(spec).scale.reshape(-1)[0]))


def _zero_point(spec: QuantSpec | None) -> int:
    return int(_present(spec).zero_point.reshape(-1)[0])


class _Lowering:
    def __init__(self, src: Graph) -> None:
        self.src = src
        self.dst = Graph(name=src.name, inputs=list(src.inputs), metadata=dict(src.metadata))
        self.producers = src.producers()
        self.consumers = src.consumers()
        self.codes: dict[str, str] = {}    # source value -> its codes in dst
        self.raw: dict[str, str] = {}      # source value -> its float (or unquantized) value in dst
        self.views: dict[str, str] = {}    # quantized source value -> its dequantized codes in dst
        self.skip: set[str] = set()        # source nodes already lowered as part of another
        self.regions: dict[str, LookupRegion] = {}  # producer node of a table's output -> its region
        self.taken: set[str] = set(src.values)  # value names (the source's are reserved)
        self.node_names: set[str] = set()
        self.layers: list[dict[str, Any]] = []
        self.emulated: set[str] = set()
        self.execution: dict[str, list[str]] = {}  # weight / FP8 activation format -> how it is stored and computed
        self.decoded: dict[str, str] = {}    # weight -> its DequantizeWeight output
        self.unpacked: dict[str, str] = {}   # 4-bit weight -> its UnpackCodes output
        self.float_codes: dict[str, str] = {}  # FP8 activation -> its QuantizeFloat output (bit patterns)

    # -- names and values ---------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken or name in self.dst.values:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def spec(self, name: str) -> QuantSpec | None:
        value = self.src.values.get(name)
        return None if value is None else value.quant

    def add_value(self, name: str, shape: tuple[int, ...], dtype: str) -> str:
        self.dst.values[name] = Value(name, shape, dtype)
        self.taken.add(name)
        return name

    def constant(self, base: str, array: np.ndarray, keep_name: bool = False) -> str:
        """A new constant named after `base` (exactly `base` with keep_name, when still free in dst)."""
        name = base if keep_name and base not in self.dst.values else self.fresh(base)
        self.dst.add_constant(name, np.asarray(array))
        self.taken.add(name)
        return name

    def emit(self, op: str, inputs: list[str], outputs: list[tuple[str, tuple[int, ...], str]],
             attrs: dict[str, Any], base: str) -> list[str]:
        """Append a node (named after `base`, the source node it lowers); returns its output names."""
        names = [self.add_value(n, shape, dtype) for n, shape, dtype in outputs]
        node_name, i = base, 1
        while node_name in self.node_names:
            node_name, i = f"{base}_{i}", i + 1
        self.node_names.add(node_name)
        self.dst.nodes.append(Node(op, node_name, inputs, names, attrs))
        return names

    # -- representations ------------------------------------------------------------------------
    # raw: a value as given or computed in float (graph inputs, constants, float ops' results);
    # codes: the codes of a quantized value; views: a quantized value as float readers see it.
    def quantized(self, name: str) -> bool:
        return name not in self.src.constants and _is_integer_spec(self.spec(name))

    def codes_of(self, name: str) -> str:
        """The dst value holding the codes of source value `name` (QuantizeLinear-ed when needed)."""
        if name in self.codes:
            return self.codes[name]
        if not self.quantized(name):
            raise UnsupportedError(f"value {name!r} has no 8-bit integer spec; it cannot be read as codes")
        self._quantize_result(name, self.raw_of(name))
        return self.codes[name]

    def float_of(self, name: str) -> str:
        """The dst value a float op reads for source value `name`: a quantized value's dequantized codes."""
        if self.float_coded(name):
            return self._float_view(name)
        if not self.quantized(name):
            return self.raw_of(name)
        if name not in self.views:
            codes, spec = self.codes_of(name), self.spec(name)
            scale, zero_point = self._spec_constants(name, spec)
            out_name = name if name not in self.dst.values else self.fresh(f"{name}_dq")
            (self.views[name],) = self.emit("DequantizeLinear", [codes, scale, zero_point],
                                            [(out_name, self.src.values[name].shape, "float32")], {"axis": 0},
                                            f"{name}/dequantize")
        return self.views[name]

    def raw_of(self, name: str) -> str:
        if name in self.raw:
            return self.raw[name]
        if name in self.src.constants:
            array = self.src.constants[name]
            spec = self.spec(name)
            if spec is not None and array.dtype.kind == "f":  # a weight read by a float op: decoded at load
                self.raw[name] = self.decoded_weight(name)
            else:
                self.raw[name] = self.constant(name, array, keep_name=True)
            return self.raw[name]
        if name in self.src.inputs:
            self.raw[name] = name
            return name
        raise UnsupportedError(f"value {name!r} is read before it is computed")

    def _spec_constants(self, name: str, spec: QuantSpec | None) -> tuple[str, str]:
        spec = _present(spec)
        return (self.constant(f"{name}_scale", np.asarray(spec.scale, np.float32).reshape(())),
                self.constant(f"{name}_zero_point", np.asarray(spec.zero_point, np.int32).reshape(())))

    def _quantize_result(self, name: str, source: str) -> None:
        spec = self.spec(name)
        scale, zero_point = self._spec_constants(name, spec)
        qmin, qmax = _code_range(spec)
        (self.codes[name],) = self.emit(
            "QuantizeLinear", [source, scale, zero_point],
            [(self.fresh(f"{name}_q"), self.src.values[name].shape, _code_dtype(spec))],
            {"axis": 0, "dtype": _code_dtype(spec), "qmin": qmin, "qmax": qmax}, f"{name}/quantize")

    # -- low-precision formats (docs/design/integer_lowering.md, "Low-precision formats") --------
    def float_coded(self, name: str) -> bool:
        return name not in self.src.constants and _is_float_activation_spec(self.spec(name))

    def note(self, fmt: str, how: str) -> None:
        if how not in self.execution.setdefault(fmt, []):
            self.execution[fmt].append(how)

    def decoded_weight(self, name: str) -> str:
        """A quantized weight read by a float op: its stored bytes (formats.store_weight) as constants and
        a DequantizeWeight node, which the backend runs once when the weights are loaded."""
        if name in self.decoded:
            return self.decoded[name]
        array, spec = self.src.constants[name], _present(self.spec(name))
        stored = store_weight(array, spec)
        inputs = [self.constant(f"{name}_codes", stored.codes), self.constant(f"{name}_scale", stored.scale)]
        if stored.zero_point is not None:
            inputs.append(self.constant(f"{name}_zero_point", stored.zero_point))
        if stored.tensor_scale is not None:
            inputs.append(self.constant(f"{name}_tensor_scale", stored.tensor_scale))
        attrs = {"format": spec.format, "shape": list(array.shape), "granularity": spec.granularity,
                 "axis": int(spec.axis or 0) % max(array.ndim, 1), "block_size": int(spec.block_size or 0)}
        (self.decoded[name],) = self.emit("DequantizeWeight", inputs,
                                          [(self.fresh(f"{name}_dq"), array.shape, "float32")], attrs,
                                          f"{name}/decode")
        packing = "two per byte" if spec.format in SUB_BYTE_FORMATS else "one per byte"
        self.note(spec.format, f"weights stored {packing}, decoded to float32 at load; float kernels")
        return self.decoded[name]

    def weight_codes(self, name: str, codes: np.ndarray) -> str:
        """The integer codes of a weight read by QConv / QMatMul: int8 / uint8 constants, or 4-bit codes
        stored two per byte and unpacked by UnpackCodes (once, at load) into int8 / uint8 containers."""
        fmt = _present(self.spec(name)).format
        if fmt not in SUB_BYTE_FORMATS:
            self.note(fmt, "integer kernels")
            return self.constant(f"{name}_q", codes)
        if name not in self.unpacked:
            packed = self.constant(f"{name}_packed", store_weight(self.src.constants[name], _present(self.spec(name))).codes)
            (self.unpacked[name],) = self.emit("UnpackCodes", [packed],
                                               [(self.fresh(f"{name}_q"), codes.shape, codes.dtype.name)],
                                               {"format": fmt, "shape": list(codes.shape)}, f"{name}/unpack")
            self.note(fmt, "weights stored two per byte, unpacked to 8-bit codes at load; integer kernels")
        return self.unpacked[name]

    def _float_view(self, name: str) -> str:
        """An FP8 activation as float ops read it: DequantizeFloat of its bit patterns."""
        if name not in self.views:
            if name not in self.float_codes:
                self._quantize_float(name, self.raw_of(name))
            spec = _present(self.spec(name))
            out_name = name if name not in self.dst.values else self.fresh(f"{name}_dq")
            (self.views[name],) = self.emit(
                "DequantizeFloat", [self.float_codes[name], self._float_scale(name, spec)],
                [(out_name, self.src.values[name].shape, "float32")], {"format": spec.format}, f"{name}/dequantize")
        return self.views[name]

    def _quantize_float(self, name: str, source: str) -> None:
        spec = _present(self.spec(name))
        (self.float_codes[name],) = self.emit(
            "QuantizeFloat", [source, self._float_scale(name, spec)],
            [(self.fresh(f"{name}_q"), self.src.values[name].shape, "uint8")], {"format": spec.format},
            f"{name}/quantize")
        self.note(spec.format, "activations rounded to their bit patterns (QuantizeFloat), read back "
                  "as float32 (DequantizeFloat); float kernels")
        self.emulated.add(spec.format)

    def _float_scale(self, name: str, spec: QuantSpec) -> str:
        return self.constant(f"{name}_scale", np.asarray(spec.scale, np.float32).reshape(()))

    # -- driver ---------------------------------------------------------------------------------
    def run(self) -> Graph:
        for name in self.src.inputs:
            self.add_value(name, self.src.values[name].shape, self.src.values[name].dtype)
        self._check_activation_specs()
        self._plan_lookup_tables()
        for node in self.src.nodes:
            if node.name in self.skip:
                continue
            if not self._lower(node):
                self._float_node(node)
        for name in self.src.outputs:
            self.dst.outputs.append(self._output(name))
        self.dst.remove_unused()
        self.dst.metadata["integer_lowering"] = {"layers": self.layers, "emulated": sorted(self.emulated),
                                                 "execution": dict(sorted(self.execution.items()))}
        return self.dst

    def lowered_values(self) -> LoweredValues:
        live = self.dst.values
        codes = {src: dst for src, dst in self.codes.items() if dst in live}
        floats = {src: dst for src, dst in self.raw.items()
                  if dst in live and src not in codes and src not in self.src.constants and src not in self.src.inputs}
        floats.update(zip(self.src.outputs, self.dst.outputs))
        return LoweredValues(codes, floats)

    def _output(self, name: str) -> str:
        value = self.src.values[name]
        out = self.float_of(name)
        if out != name:  # keep the model's output name
            (out,) = self.emit("Reshape", [out], [(self.fresh(name) if name in self.dst.values else name,
                                                   value.shape, value.dtype)], {"shape": list(value.shape)},
                               f"{name}/output")
        return out

    def _check_activation_specs(self) -> None:
        for name, value in self.src.values.items():
            if value.quant is None or name in self.src.constants:
                continue
            if not _is_integer_spec(value.quant) and not _is_float_activation_spec(value.quant):
                spec = value.quant
                raise UnsupportedError(
                    f"value {name!r} is quantized as {spec.format}/{spec.granularity}"
                    f"{'/dynamic' if spec.dynamic else ''}; the integer lowering handles activations per tensor in "
                    f"int8, uint8, {', '.join(FLOAT_ACTIVATION_FORMATS)} only")

    def _plan_lookup_tables(self) -> None:
        quantized = {name for name in self.src.values if self.quantized(name)}
        for name, value in self.src.values.items():
            if not _is_integer_spec(value.quant) or name in self.src.constants:
                continue
            region = lookup_region(self.src, name, self.producers, self.consumers, stop=quantized)
            if region is None or not _is_integer_spec(self.spec(region.input)):
                continue
            producer = self.producers[name]
            self.regions[producer.name] = region
            self.skip.update(n.name for n in region.nodes if n is not producer)

    def _lower(self, node: Node) -> bool:
        if node.name in self.regions:
            return self._lookup(node, self.regions[node.name])
        if node.op in ("Conv", "MatMul"):
            return self._weighted(node)
        if node.op in SCALE_PRESERVING:
            return self._on_codes(node)
        if node.op in ("Add", "Mul"):
            return self._binary(node)
        if node.op in ("GlobalAveragePool", "AveragePool"):
            return self._average(node)
        if node.op == "Softmax":
            return self._softmax(node)
        return False

    # -- float fallback ---------------------------------------------------------------------------
    def _float_node(self, node: Node) -> None:
        """Run `node` in float on dequantized inputs; quantized results are quantized at once."""
        inputs = [self.float_of(i) if i else "" for i in node.inputs]
        outputs = []
        for name in node.outputs:
            value = self.src.values[name]
            coded = self.quantized(name) or self.float_coded(name)
            outputs.append((self.fresh(f"{name}_f") if coded else name, value.shape, value.dtype))
        names = self.emit(node.op, inputs, outputs, dict(node.attrs), node.name)
        for name, out in zip(node.outputs, names):
            self.raw[name] = out
            if self.quantized(name):
                self._quantize_result(name, out)
            elif self.float_coded(name):
                self._quantize_float(name, out)
        if node.op in ("Conv", "MatMul", "ConvTranspose"):
            w_spec = self.spec(node.inputs[1]) if len(node.inputs) > 1 else None
            weight_only = w_spec is not None and self.spec(node.inputs[0]) is None and node.inputs[1] in self.src.constants
            self.layers.append(self._layer_report(node, WEIGHT_ONLY if weight_only else "float"))
            if w_spec is not None and not weight_only:  # a quantized kernel, computed in float
                self.emulated.add(w_spec.format)

    def _layer_report(self, node: Node, lowered: str) -> dict[str, Any]:
        weight = node.inputs[1] if len(node.inputs) > 1 else ""
        w_spec = self.spec(weight) if weight else None
        x_spec = self.spec(node.inputs[0])
        return {"node": node.name, "op": node.op, "lowered": lowered,
                "weights": w_spec.format if w_spec is not None else None,
                "activations": x_spec.format if x_spec is not None else None}

    # -- weighted ops -----------------------------------------------------------------------------
    def _weight_codes(self, node: Node) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(codes, per-channel zero points int32 [C], per-channel scales float32 [C]) of the weight."""
        weight = node.inputs[1]
        spec = self.spec(weight)
        array = self.src.constants.get(weight)
        if array is None or spec is None or spec.format not in INTEGER_WEIGHT_FORMATS or spec.dynamic:
            return None
        channel_axis = 0 if node.op == "Conv" else array.ndim - 1
        channels = array.shape[channel_axis]
        if spec.granularity == "tensor":
            scales = np.full(channels, _scale(spec), np.float32)
            zero_points = np.full(channels, _zero_point(spec), np.int32)
        elif spec.granularity == "channel" and spec.axis == channel_axis:
            scales = spec.scale.reshape(-1).astype(np.float32)
            zero_points = spec.zero_point.reshape(-1).astype(np.int32)
        else:
            return None
        codes = quantize(array, spec)
        return codes, zero_points, scales

    def _weighted(self, node: Node) -> bool:
        x = node.inputs[0]
        x_spec = self.spec(x)
        if not _is_integer_spec(x_spec) or len(node.inputs) < 2:
            return False
        rank = len(self.src.values[x].shape)
        if node.op == "Conv" and rank not in (3, 4):
            return False
        if node.inputs[1] in self.src.constants:
            weights = self._weight_codes(node)
            if weights is None or (node.op == "MatMul" and weights[0].ndim != 2):
                return False
            w_codes, w_zero_points, w_scales = weights
        elif node.op == "MatMul" and _is_integer_spec(self.spec(node.inputs[1])):
            w_codes = None
            b_spec = self.spec(node.inputs[1])
            n = self.src.values[node.inputs[1]].shape[-1]
            w_zero_points = np.full(n, _zero_point(b_spec), np.int32)
            w_scales = np.full(n, _scale(b_spec), np.float32)
        else:
            return False
        chain = weighted_chain(self.src, node, self.consumers)
        bias = np.zeros(len(w_scales), np.float64)
        if node.op == "Conv" and len(node.inputs) > 2 and node.inputs[2]:
            own = self.src.constants.get(node.inputs[2])
            if own is None:
                return False
            bias += own.astype(np.float64)
        if len(chain) == 2:
            bias += cast(np.ndarray, epilogue_bias(self.src, node, chain[1])).astype(np.float64)  # chained: it has one
        end = chain[-1].outputs[0]
        clamp = self._absorbable_clamp(end)
        if clamp is not None:
            chain.append(clamp)
            end = clamp.outputs[0]
        out_spec = self.spec(end)
        if out_spec is not None and not _is_integer_spec(out_spec):
            return False

        reduction = (int(np.prod(w_codes.shape[1:])) if node.op == "Conv" and w_codes is not None
                     else self.src.values[x].shape[-1])
        products = reduction * 255 * 255  # the largest |sum of (x - zx) * (w - zw)| of 8-bit codes
        if products >= INT32_MAX:
            raise UnsupportedError(f"node {node.name!r}: a reduction over {reduction} products of 8-bit codes may "
                                   "overflow the int32 accumulator")
        s_x = _scale(x_spec)
        acc_scale = np.float64(s_x) * w_scales.astype(np.float64)
        bias_codes = np.rint(bias / acc_scale)
        limit = INT32_MAX - products  # so that the accumulator plus the bias stays in int32
        if np.any(np.abs(bias_codes) > limit):
            log.warning("node %s: a bias of more than %d accumulator steps is clamped", node.name, limit)
        bias_codes = np.clip(bias_codes, -limit, limit).astype(np.int32)

        out_value = self.src.values[end]
        w_name = (self.weight_codes(node.inputs[1], w_codes) if w_codes is not None
                  else self.codes_of(node.inputs[1]))
        zero_point_of_w = w_zero_points if len(set(w_zero_points.tolist())) > 1 else w_zero_points[:1].reshape(())
        inputs = [self.codes_of(x), w_name, self.constant(f"{node.inputs[1]}_zero_point", zero_point_of_w),
                  self.constant(f"{node.name}_bias", bias_codes)]
        attrs: dict[str, Any] = dict(node.attrs) if node.op == "Conv" else {}
        attrs["x_zero_point" if node.op == "Conv" else "a_zero_point"] = _zero_point(x_spec)
        if out_spec is not None:
            multiplier, shift = dyadic(acc_scale / np.float64(_scale(out_spec)))
            inputs += [self.constant(f"{node.name}_multiplier", multiplier),
                       self.constant(f"{node.name}_shift", shift)]
            qmin, qmax = _code_range(out_spec)
            low, high = (qmin, qmax) if clamp is None else self._clamp_codes(clamp, out_spec)
            attrs.update(epilogue="requantize", out_zero_point=_zero_point(out_spec), out_min=low, out_max=high,
                         out_dtype=_code_dtype(out_spec))
            out = (self.fresh(f"{end}_q"), out_value.shape, _code_dtype(out_spec))
        else:
            inputs.append(self.constant(f"{node.name}_out_scale", acc_scale.astype(np.float32)))
            attrs.update(epilogue="float", out_zero_point=0, out_min=0, out_max=0, out_dtype="float32")
            out = (end if end not in self.dst.values else self.fresh(end), out_value.shape, "float32")
        op = "QConv" if node.op == "Conv" else "QMatMul"
        (result,) = self.emit(op, inputs, [out], attrs, node.name)
        (self.codes if out_spec is not None else self.raw)[end] = result
        self.skip.update(n.name for n in chain)
        self.layers.append(self._layer_report(node, op))
        return True

    def _absorbable_clamp(self, name: str) -> Node | None:
        users = self.consumers.get(name, [])
        if (len(users) != 1 or users[0].op not in CLAMPS or name in self.src.outputs or self.spec(name) is not None
                or not _is_integer_spec(self.spec(users[0].outputs[0]))):
            return None
        return users[0]

    def _clamp_codes(self, clamp: Node, spec: QuantSpec) -> tuple[int, int]:
        """The code range of the clamp's output: [quantize(min), quantize(max)] within the format."""
        qmin, qmax = _code_range(spec)
        low, high = (0.0, math.inf) if clamp.op == "Relu" else (float(clamp.attrs["min"]), float(clamp.attrs["max"]))
        bounds = quantize(np.array([low, high], np.float32), spec).astype(np.int64)
        return max(qmin, int(bounds[0])), min(qmax, int(bounds[1]))

    # -- ops on codes ---------------------------------------------------------------------------
    def _on_codes(self, node: Node) -> bool:
        if node.op == "Resize" and node.attrs.get("mode") != "nearest":
            return False
        data = node.inputs if node.op == "Concat" else node.inputs[:1]
        specs = [self.spec(i) for i in data] + [self.spec(o) for o in node.outputs]
        if not all(_is_integer_spec(s) for s in specs) or not all(
                _present(s).same_as(_present(specs[0])) for s in specs):
            return False
        inputs = [self.codes_of(i) for i in data] + [self.raw_of(i) for i in node.inputs[len(data):] if i]
        dtype = _code_dtype(specs[0])
        outputs = [(self.fresh(f"{o}_q"), self.src.values[o].shape, dtype) for o in node.outputs]
        names = self.emit(node.op, inputs, outputs, dict(node.attrs), node.name)
        self.codes.update(zip(node.outputs, names))
        return True

    def _binary(self, node: Node) -> bool:
        out = node.outputs[0]
        specs = [self.spec(i) for i in node.inputs] + [self.spec(out)]
        if len(node.inputs) != 2 or any(i in self.src.constants for i in node.inputs) \
                or not all(_is_integer_spec(s) for s in specs):
            return False
        a_spec, b_spec, o_spec = specs
        qmin, qmax = _code_range(o_spec)
        attrs: dict[str, Any] = {"a_zero_point": _zero_point(a_spec), "b_zero_point": _zero_point(b_spec),
                                 "out_zero_point": _zero_point(o_spec), "out_min": qmin, "out_max": qmax,
                                 "out_dtype": _code_dtype(o_spec)}
        s_o = np.float64(_scale(o_spec))
        if node.op == "Add":
            a_mult, b_mult, shift = shared_shift_dyadic(_scale(a_spec) / s_o, _scale(b_spec) / s_o)
            attrs.update(a_multiplier=a_mult, b_multiplier=b_mult, shift=shift)
            op = "QAdd"
        else:
            multiplier, product_shift = dyadic(np.float64(_scale(a_spec)) * _scale(b_spec) / s_o)
            attrs.update(multiplier=int(multiplier), shift=int(product_shift))
            op = "QMul"
        inputs = [self.codes_of(i) for i in node.inputs]
        (result,) = self.emit(op, inputs, [(self.fresh(f"{out}_q"), self.src.values[out].shape,
                                            _code_dtype(o_spec))], attrs, node.name)
        self.codes[out] = result
        return True

    def _average(self, node: Node) -> bool:
        x, out = node.inputs[0], node.outputs[0]
        x_spec, o_spec = self.spec(x), self.spec(out)
        if not (_is_integer_spec(x_spec) and _is_integer_spec(o_spec)):
            return False
        in_shape = self.src.values[x].shape
        attrs: dict[str, Any] = {}
        if node.op == "GlobalAveragePool":
            count = int(np.prod(in_shape[2:]))
            op = "QGlobalAveragePool"
        else:
            a = node.attrs
            if len(in_shape) not in (3, 4):
                return False
            kernel, strides, pads = list(a["kernel_shape"]), list(a["strides"]), list(a["pads"])
            rank = len(kernel)
            if any(pads) and not a["count_include_pad"]:
                return False
            for axis in range(rank):  # a ceil_mode window running past the padded input counts fewer elements
                span = in_shape[2 + axis] + pads[axis] + pads[rank + axis] - kernel[axis]
                if a["ceil_mode"] and span % strides[axis]:
                    return False
            count = int(np.prod(kernel))
            attrs.update(kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=int(a["ceil_mode"]))
            op = "QAveragePool"
        multiplier, shift = dyadic(np.float64(_scale(x_spec)) / (np.float64(_scale(o_spec)) * count))
        qmin, qmax = _code_range(o_spec)
        attrs.update(x_zero_point=_zero_point(x_spec), multiplier=int(multiplier), shift=int(shift),
                     out_zero_point=_zero_point(o_spec), out_min=qmin, out_max=qmax, out_dtype=_code_dtype(o_spec))
        (result,) = self.emit(op, [self.codes_of(x)], [(self.fresh(f"{out}_q"), self.src.values[out].shape,
                                                        _code_dtype(o_spec))], attrs, node.name)
        self.codes[out] = result
        return True

    def _softmax(self, node: Node) -> bool:
        x, out = node.inputs[0], node.outputs[0]
        x_spec, o_spec = self.spec(x), self.spec(out)
        if not (_is_integer_spec(x_spec) and _is_integer_spec(o_spec)):
            return False
        qmin, qmax = _code_range(o_spec)
        if _scale(o_spec) != np.float32(1 / 256) or _zero_point(o_spec) != qmin:
            return False
        steps = np.arange(256, dtype=np.float64)
        table = np.rint(np.exp(-steps * np.float64(_scale(x_spec))) * 2.0 ** SOFTMAX_EXP_BITS).astype(np.int64)
        attrs = {"axis": int(node.attrs["axis"]), "out_zero_point": qmin, "out_min": qmin, "out_max": qmax,
                 "out_dtype": _code_dtype(o_spec)}
        (result,) = self.emit("QSoftmax", [self.codes_of(x), self.constant(f"{node.name}_exp_table", table)],
                              [(self.fresh(f"{out}_q"), self.src.values[out].shape, _code_dtype(o_spec))],
                              attrs, node.name)
        self.codes[out] = result
        return True

    # -- lookup tables --------------------------------------------------------------------------
    def _lookup(self, node: Node, region: LookupRegion) -> bool:
        x_spec, o_spec = self.spec(region.input), self.spec(region.output)
        table = lookup_table(self.src, region, x_spec, o_spec)
        qmin, _ = _code_range(x_spec)
        shape = self.src.values[region.output].shape
        (result,) = self.emit("QLookup", [self.codes_of(region.input), self.constant(f"{node.name}_table", table)],
                              [(self.fresh(f"{region.output}_q"), shape, _code_dtype(o_spec))],
                              {"qmin": qmin, "axis": region.axis if region.axis is not None else 0}, node.name)
        self.codes[region.output] = result
        return True


def lookup_table(graph: Graph, region: LookupRegion, x_spec: QuantSpec | None, out_spec: QuantSpec | None) -> np.ndarray:
    """quantize(f(dequantize(code))) for every code of x (one row per channel when region.axis is set),
    f being the region's nodes run by the reference interpreter."""
    x_spec, out_spec = _present(x_spec), _present(out_spec)
    qmin, qmax = _code_range(x_spec)
    codes = np.arange(qmin, qmax + 1).astype(_code_dtype(x_spec))
    reals = dequantize(codes, x_spec)  # float32, exactly the fake-quantized values
    rank = len(graph.values[region.input].shape)
    probe_shape = [len(codes)] + [1] * rank
    channels = 1
    if region.axis is not None:
        channels = graph.values[region.input].shape[region.axis]
        probe_shape[1 + region.axis] = channels
    probe = torch.from_numpy(np.broadcast_to(reals.reshape([-1] + [1] * rank), probe_shape).copy())
    env: dict[str, torch.Tensor] = {region.input: probe}
    with torch.no_grad():
        for node in region.nodes:
            args = [env[i] if i in env else torch.from_numpy(np.array(graph.constants[i])) if i else None
                    for i in node.inputs]
            for name, value in zip(node.outputs, run_node(node, args)):
                env[name] = value
    result = env[region.output].numpy().astype(np.float32).reshape(len(codes), channels)
    table = quantize(result, out_spec).T  # [channels, 256]
    return np.ascontiguousarray(table[0] if region.axis is None else table)
