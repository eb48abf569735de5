"""Integer lowering: an annotated float graph (QuantSpecs) -> a graph of integer IR ops.

Implements docs/design/integer_lowering.md. The result uses the quantized ops of `ops.QUANTIZED_OPS`,
whose semantics need exact arithmetic only, so the TVM artifact computes exactly what the reference
interpreter computes on the lowered graph. Rules:

- Conv / ConvTranspose (dilation 1) / MatMul whose data input and weight carry integer specs -> QConv /
  QConvTranspose / QMatMul. The bias (the op's own and a following per-channel Add of a constant,
  `quant_points.weighted_chain`) becomes int32 rne(b / (s_x * s_w[c])); an output channel whose bias
  does not fit the int32 accumulator is lowered as the constant it provably is (`constant_channels`),
  or the lowering raises. A following Relu / Clip is absorbed as a clamp on the codes when its output
  carries the spec (quantize is monotone, so quantize(clip(y)) = clamp(quantize(y))). The epilogue
  requantizes with dyadic multipliers (`dyadic`) when the output carries a spec, else it is float:
  float32(acc) * (s_x * s_w[c]).
- Unary elementwise subgraphs (`quant_points.lookup_region`) from a quantized value to a quantized value
  -> QLookup with 256-entry tables (one per channel when the constants vary along an axis, e.g. PRelu),
  computed once here by running the subgraph in the reference interpreter on every code. A graph output
  computed from a quantized value by such a subgraph with a transcendental op
  (`quant_points.float_table_region`, e.g. a detector's final Sigmoid) -> QLookup with a table of float32
  values: the float output is an exact table read.
- Add / Mul of two quantized activations -> QAdd (22-bit multipliers for 8-bit codes: its sums fit int32) / QMul;
  GlobalAveragePool / AveragePool -> QGlobalAveragePool
  / QAveragePool (the window count folded into the multiplier); Softmax -> QSoftmax (output scale 1/256),
  attention's Softmax(Add(scores, Where(keep, 0, -big))) -> QSoftmax(scores, table, keep)
  (`quant_points.softmax_mask`; the Add and the -big term disappear).
- The chain of a weighted op may end in a Mul / Div by a positive scalar constant (attention's 1/sqrt(d)):
  the requantization multiplier takes the factor.
- LayerNormalization from quantized codes -> QLayerNorm (`layer_norm_constants`); a per-channel affine
  region reading a LayerNorm's output (SmoothQuant's 1/s, channel_shift's -c) -> a second QLayerNorm of
  the same input with the affine map folded into gamma and beta (`NormRegion`).
- Wide (int16, `quant_points.wide_points`) codes flow through QAdd, QLayerNorm, the ops on codes and the
  requantizing epilogues of QConv / QMatMul / QLookup; the other integer ops take 8-bit codes.
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
uint8 (integer ops), the int16 wide ones (quant_points.wide_points) or FP8 (float ops); others raise
UnsupportedError. The lowered graph's metadata["integer_lowering"] lists every weighted layer (how it was
lowered, its formats), how each format is stored and computed ("execution"), and the formats computed in
float in place of a quantized kernel ("emulated": FP8 activations, and weights of float ops whose inputs
are quantized).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from ..errors import IRError, UnsupportedError
from ..formats import SUB_BYTE_FORMATS, dequantize, fake_quant, format_info, quantize, store_weight
from ..interpreter import INT32_MAX, SOFTMAX_OUT_BITS, run_node
from ..ir import Graph, Node, QuantSpec, Value
from .base import Pass
from .quant_points import (
    CLAMPS, SCALE_PRESERVING, WIDE_FORMAT, LookupRegion, SoftmaxMask, epilogue_bias, epilogue_factor,
    float_table_region, lookup_region, softmax_mask, weighted_chain,
)
from .table_ranges import evaluate_region

log = logging.getLogger("bitsmith.passes.lower_integer")

SOFTMAX_EXP_BITS = 30  # QSoftmax's exp table: rne(2^30 * exp(-d * scale))
INTEGER_WEIGHT_FORMATS = ("int8", "uint8", "int7", "int4", "uint4")
NATIVE_FORMATS = ("int8", "uint8")  # formats with native integer kernels; int7/int4/uint4 codes sit in int8 containers
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


# QAdd of two 8-bit codes: multipliers of this many bits keep da * Ma + db * Mb in int32 (|da|, |db| <= 255:
# 2 x 255 x 2^22 < 2^31), so a CPU adds in 32-bit lanes with one multiply per operand (backends/relax_emit.py);
# a relative precision of 2^-22, far below the output code's step.
QADD_8BIT_MULTIPLIER_BITS = 22


def shared_shift_dyadic(real_a: float, real_b: float, multiplier_bits: int = 31) -> tuple[int, int, int]:
    """(multiplier_a, multiplier_b, shift) for QAdd: one shift, chosen (`dyadic`) for the larger factor
    and lowered by 31 - `multiplier_bits` (at least 1), so its multiplier has `multiplier_bits` bits;
    each multiplier is rne(real * 2^shift) at that shift."""
    shift = max(int(dyadic(max(real_a, real_b))[1]) - (31 - multiplier_bits), 1)
    step = 2.0 ** shift
    return int(np.rint(real_a * step)), int(np.rint(real_b * step)), shift


# ---------------------------------------------------------------------------------------------
# QLayerNorm's constants
# ---------------------------------------------------------------------------------------------
LAYER_NORM_FRACTION_BITS = 24  # (x - mean) / std as a fixed-point number with this many fractional bits


def layer_norm_constants(count: int, x_spec: QuantSpec, epsilon: float, gamma: np.ndarray, beta: np.ndarray,
                         out_spec: QuantSpec) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """QLayerNorm's attributes (without axis) and its int64 multiplier and bias for a LayerNorm over
    `count` elements per row of x (codes of `x_spec`), gamma / beta broadcasting to the normalized dims,
    output codes of `out_spec` (ops.QUANTIZED_OPS gives the arithmetic).

    The shifts keep every intermediate in int64: |C xc - S1| / R <= 2 sqrt(C) 2^-sqrt_shift (R >= half of
    2^sqrt_shift sqrt(V) once V >= 1), so (C xc - S1) * inv < 2^61; the normalized value N has F =
    LAYER_NORM_FRACTION_BITS fractional bits and |N| < 2^(F + headroom); `shift` keeps |N * multiplier|
    and |bias| below 2^61. sqrt_shift scales V up to 2^62 for a root with more significant bits."""
    qmin, qmax = _code_range(x_spec)
    zero_point, x_scale = _zero_point(x_spec), _scale(x_spec)
    span = max(qmax - zero_point, zero_point - qmin)  # the largest |x - x_zero_point|
    eps_codes = int(np.rint(np.float64(epsilon) * count * count / (np.float64(x_scale) ** 2)))
    v_max = count * count * span * span + eps_codes
    if v_max.bit_length() > 62:
        raise UnsupportedError(f"QLayerNorm over {count} elements of {_present(x_spec).format} codes (epsilon "
                               f"{epsilon:g} at scale {x_scale:g}) would overflow int64")
    headroom = math.ceil(math.log2(2 * math.sqrt(count))) + 1  # 2 sqrt(C) <= 2^(headroom - 1)
    sqrt_shift = (62 - v_max.bit_length()) // 2
    inv_shift = min(62, sqrt_shift + 62 - headroom)  # R < 2^31, so inv keeps 31 bits or more
    norm_shift = inv_shift - sqrt_shift - LAYER_NORM_FRACTION_BITS
    out_scale = np.float64(_scale(out_spec))
    g = np.asarray(gamma, np.float64) / out_scale
    b = np.asarray(beta, np.float64) / out_scale
    g_bits = math.ceil(math.log2(max(float(np.abs(g).max(initial=0.0)), 2.0 ** -30)))
    b_bits = math.ceil(math.log2(float(np.abs(b).max(initial=0.0)) + 1.0))
    shift = min(61 - headroom - g_bits, 61 - b_bits, 62)
    if shift < 1:
        raise UnsupportedError(f"QLayerNorm: gamma / out_scale up to 2^{g_bits} and beta / out_scale up to "
                               f"2^{b_bits} do not fit an int64 epilogue")
    multiplier = np.rint(g * 2.0 ** (shift - LAYER_NORM_FRACTION_BITS)).astype(np.int64)
    bias = np.rint(b * 2.0 ** shift).astype(np.int64)
    out_min, out_max = _code_range(out_spec)
    attrs = {"x_zero_point": zero_point, "epsilon": eps_codes, "sqrt_shift": sqrt_shift, "inv_shift": inv_shift,
             "norm_shift": norm_shift, "shift": shift, "out_zero_point": _zero_point(out_spec),
             "out_min": out_min, "out_max": out_max, "out_dtype": _code_dtype(out_spec)}
    return attrs, multiplier, bias


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


def _is_wide_spec(spec: QuantSpec | None) -> bool:
    """A wide activation spec (quant_points.wide_points): int16, static, per tensor. QAdd, QLayerNorm, ops on
    codes and the requantizing epilogues take and give such codes; kernels that index tables or multiply
    activations (QConv, QMatMul, QLookup, QMul, QSoftmax, pools) take 8-bit codes only."""
    return (spec is not None and spec.format == WIDE_FORMAT and spec.granularity == "tensor"
            and not spec.dynamic and spec.tensor_scale is None)


def _has_codes(spec: QuantSpec | None) -> bool:
    return _is_integer_spec(spec) or _is_wide_spec(spec)


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
        self.norm_regions: dict[str, NormRegion] = {}  # producer node of a folded LayerNorm's output -> it
        self.masks: dict[str, SoftmaxMask] = {}  # Softmax node -> its attention mask
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
        return name not in self.src.constants and _has_codes(self.spec(name))

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
        self._plan_masked_softmax()
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
            if not _has_codes(value.quant) and not _is_float_activation_spec(value.quant):
                spec = value.quant
                raise UnsupportedError(
                    f"value {name!r} is quantized as {spec.format}/{spec.granularity}"
                    f"{'/dynamic' if spec.dynamic else ''}; the integer lowering handles activations per tensor in "
                    f"int8, uint8, {', '.join(FLOAT_ACTIVATION_FORMATS)} and {WIDE_FORMAT} (where "
                    "quant_points.wide_points puts it) only")

    def _plan_lookup_tables(self) -> None:
        quantized = {name for name in self.src.values if self.quantized(name)}
        for name, value in self.src.values.items():
            if not _has_codes(value.quant) or name in self.src.constants:
                continue
            region = lookup_region(self.src, name, self.producers, self.consumers, stop=quantized)
            if region is None:
                continue
            producer = self.producers[name]
            folded = self._layer_norm_affine(region)
            if folded is not None:
                self.norm_regions[producer.name] = folded
            elif _is_integer_spec(self.spec(region.input)) or (_is_wide_spec(self.spec(region.input))
                                                                 and region.axis is None):
                self.regions[producer.name] = region
            else:
                continue
            self.skip.update(n.name for n in region.nodes if n is not producer)
        for name in self.src.outputs:  # float outputs of transcendental subgraphs: tables of float32 values
            if self.quantized(name):
                continue
            region = float_table_region(self.src, name, self.producers, self.consumers, stop=quantized)
            if region is not None and _is_integer_spec(self.spec(region.input)):
                self._plan_region(name, region)

    def _plan_region(self, name: str, region: LookupRegion) -> None:
        producer = self.producers[name]
        self.regions[producer.name] = region
        self.skip.update(n.name for n in region.nodes if n is not producer)

    def _plan_masked_softmax(self) -> None:
        """Attention's mask Add is part of its QSoftmax (the mask becomes QSoftmax's `keep` input)."""
        for node in self.src.nodes:
            mask = softmax_mask(self.src, node, self.producers, self.consumers)
            if mask is not None and self.quantized(mask.scores) and self.quantized(node.outputs[0]):
                self.masks[node.name] = mask
                self.skip.add(mask.add.name)

    def _lower(self, node: Node) -> bool:
        if node.name in self.regions:
            return self._lookup(node, self.regions[node.name])
        if node.name in self.norm_regions:
            return self._folded_layer_norm(node, self.norm_regions[node.name])
        if node.op == "LayerNormalization":
            return self._layer_norm(node)
        if node.op in ("Conv", "ConvTranspose", "MatMul"):
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
        channel_axis = {"Conv": 0, "ConvTranspose": 1}.get(node.op, array.ndim - 1)
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
        if node.op == "ConvTranspose":  # output channel g * (C_out / group) + j reads weight channel j
            scales, zero_points = np.tile(scales, node.attrs["group"]), np.tile(zero_points, node.attrs["group"])
        return codes, zero_points, scales

    def _weighted(self, node: Node) -> bool:
        x = node.inputs[0]
        x_spec = self.spec(x)
        if not _is_integer_spec(x_spec) or len(node.inputs) < 2:
            return False
        rank = len(self.src.values[x].shape)
        if node.op in ("Conv", "ConvTranspose") and rank not in (3, 4):
            return False
        if node.op == "ConvTranspose" and any(d != 1 for d in node.attrs["dilations"]):
            return False  # QConvTranspose's kernels are sub-pixel convolutions: dilation 1
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
        chain = weighted_chain(self.src, node, self.consumers, scale=True)
        bias = np.zeros(len(w_scales), np.float64)
        if node.op in ("Conv", "ConvTranspose") and len(node.inputs) > 2 and node.inputs[2]:
            own = self.src.constants.get(node.inputs[2])
            if own is None:
                return False
            bias += own.astype(np.float64)
        factor = 1.0
        for previous, link in zip(chain, chain[1:]):
            if link.op == "Add":  # chained: it has a bias
                bias += cast(np.ndarray, epilogue_bias(self.src, node, link)).astype(np.float64)
            else:  # a scalar Mul / Div after the bias: the output's scale absorbs it
                factor = cast(float, epilogue_factor(self.src, link, previous.outputs[0]))
        end = chain[-1].outputs[0]
        clamp = self._absorbable_clamp(end)
        if clamp is not None:
            chain.append(clamp)
            end = clamp.outputs[0]
        out_spec = self.spec(end)
        if out_spec is not None and not _has_codes(out_spec):
            return False

        reduction = _reduction_size(node, w_codes, self.src.values[x].shape)
        products = reduction * 255 * 255  # the largest |sum of (x - zx) * (w - zw)| of 8-bit codes
        if products >= INT32_MAX:
            raise UnsupportedError(f"node {node.name!r}: a reduction over {reduction} products of 8-bit codes may "
                                   "overflow the int32 accumulator")
        s_x = _scale(x_spec)
        acc_scale = np.float64(s_x) * w_scales.astype(np.float64)
        bias_codes = np.rint(bias / acc_scale)
        limit = INT32_MAX - products  # so that the accumulator plus the bias stays in int32

        out_value = self.src.values[end]
        attrs: dict[str, Any] = dict(node.attrs) if node.op != "MatMul" else {}
        attrs["x_zero_point" if node.op != "MatMul" else "a_zero_point"] = _zero_point(x_spec)
        epilogue: dict[str, np.ndarray]
        if out_spec is not None:
            multiplier, shift = dyadic(acc_scale * factor / np.float64(_scale(out_spec)))
            qmin, qmax = _code_range(out_spec)
            low, high = (qmin, qmax) if clamp is None else self._clamp_codes(clamp, out_spec)
            attrs.update(epilogue="requantize", out_zero_point=_zero_point(out_spec), out_min=low, out_max=high,
                         out_dtype=_code_dtype(out_spec))
            epilogue = {"multiplier": multiplier, "shift": shift}
            out = (self.fresh(f"{end}_q"), out_value.shape, _code_dtype(out_spec))
        else:
            attrs.update(epilogue="float", out_zero_point=0, out_min=0, out_max=0, out_dtype="float32")
            epilogue = {"out_scale": (acc_scale * factor).astype(np.float32)}
            out = (end if end not in self.dst.values else self.fresh(end), out_value.shape, "float32")
        overflowing = np.flatnonzero(np.abs(bias_codes) > limit)
        if len(overflowing):
            if w_codes is None:
                raise UnsupportedError(f"node {node.name!r}: a bias of more than {limit} accumulator steps does not "
                                       "fit the int32 accumulator")
            w_codes = constant_channels(node, overflowing, w_codes, w_zero_points, x_spec, out_spec,
                                        acc_scale * factor, bias * factor, bias_codes, epilogue, attrs)

        if w_codes is None:
            w_name = self.codes_of(node.inputs[1])
        elif len(overflowing):  # constant_channels rewrote codes: stored as they are, one per byte
            w_name = self.constant(f"{node.inputs[1]}_q", w_codes)
        else:
            w_name = self.weight_codes(node.inputs[1], w_codes)
        zero_point_of_w = w_zero_points if len(set(w_zero_points.tolist())) > 1 else w_zero_points[:1].reshape(())
        inputs = [self.codes_of(x), w_name, self.constant(f"{node.inputs[1]}_zero_point", zero_point_of_w),
                  self.constant(f"{node.name}_bias", bias_codes.astype(np.int32))]
        inputs += [self.constant(f"{node.name}_{name}", array) for name, array in epilogue.items()]
        op = {"Conv": "QConv", "ConvTranspose": "QConvTranspose"}.get(node.op, "QMatMul")
        (result,) = self.emit(op, inputs, [out], attrs, node.name)
        (self.codes if out_spec is not None else self.raw)[end] = result
        self.skip.update(n.name for n in chain)
        self.layers.append(self._layer_report(node, op))
        if len(overflowing):
            self.layers[-1]["constant_channels"] = overflowing.tolist()
        return True

    def _absorbable_clamp(self, name: str) -> Node | None:
        users = self.consumers.get(name, [])
        if (len(users) != 1 or users[0].op not in CLAMPS or name in self.src.outputs or self.spec(name) is not None
                or not _has_codes(self.spec(users[0].outputs[0]))):
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
        if not all(_has_codes(s) for s in specs) or not all(
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
        narrow = node.op == "Mul"  # QMul multiplies two 8-bit codes; QAdd takes wide codes too
        if len(node.inputs) != 2 or any(i in self.src.constants for i in node.inputs) \
                or not all((_is_integer_spec if narrow else _has_codes)(s) for s in specs):
            return False
        a_spec, b_spec, o_spec = specs
        qmin, qmax = _code_range(o_spec)
        attrs: dict[str, Any] = {"a_zero_point": _zero_point(a_spec), "b_zero_point": _zero_point(b_spec),
                                 "out_zero_point": _zero_point(o_spec), "out_min": qmin, "out_max": qmax,
                                 "out_dtype": _code_dtype(o_spec)}
        s_o = np.float64(_scale(o_spec))
        if node.op == "Add":
            eight_bit = all(np.dtype(_code_dtype(s)).itemsize == 1 for s in (a_spec, b_spec))
            a_mult, b_mult, shift = shared_shift_dyadic(
                _scale(a_spec) / s_o, _scale(b_spec) / s_o, QADD_8BIT_MULTIPLIER_BITS if eight_bit else 31)
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
        mask = self.masks.get(node.name)
        x, out = mask.scores if mask is not None else node.inputs[0], node.outputs[0]
        x_spec, o_spec = self.spec(x), self.spec(out)
        if not (_has_codes(x_spec) and _has_codes(o_spec)):
            return False
        qmin, qmax = _code_range(o_spec)
        bits = SOFTMAX_OUT_BITS.get(_code_dtype(o_spec), 0)
        if _scale(o_spec) != np.float32(2.0 ** -bits) or _zero_point(o_spec) != (qmin if bits == 8 else 0):
            return False
        x_min, x_max = _code_range(x_spec)
        steps = np.arange(x_max - x_min + 1, dtype=np.float64)
        table = np.rint(np.exp(-steps * np.float64(_scale(x_spec))) * 2.0 ** SOFTMAX_EXP_BITS).astype(np.int64)
        if len(table) > 256 and table[-1] == 0:  # wide codes: up to the first 0, which larger steps read
            table = table[:int(np.argmin(table > 0)) + 1]
        attrs = {"axis": int(node.attrs["axis"]), "out_zero_point": _zero_point(o_spec), "out_min": qmin,
                 "out_max": qmax, "out_dtype": _code_dtype(o_spec)}
        inputs = [self.codes_of(x), self.constant(f"{node.name}_exp_table", table)]
        if mask is not None:
            inputs.append(self._keep(mask))
        (result,) = self.emit("QSoftmax", inputs,
                              [(self.fresh(f"{out}_q"), self.src.values[out].shape, _code_dtype(o_spec))],
                              attrs, node.name)
        self.codes[out] = result
        return True

    def _keep(self, mask: SoftmaxMask) -> str:
        """The boolean `keep` input of a masked QSoftmax: the mask's condition, or its negation (once)."""
        condition = self.raw_of(mask.condition)
        if not mask.negate:
            return condition
        key = f"not:{mask.condition}"
        if key not in self.raw:
            shape = self.src.values[mask.condition].shape
            (self.raw[key],) = self.emit("Not", [condition], [(self.fresh(f"{mask.condition}_not"), shape, "bool")],
                                         {}, f"{mask.where.name}/keep")
        return self.raw[key]

    # -- LayerNorm ------------------------------------------------------------------------------
    def _layer_norm(self, node: Node) -> bool:
        """LayerNormalization from quantized input codes to quantized output codes -> QLayerNorm."""
        out = node.outputs[0]
        if not (self.quantized(node.inputs[0]) and self.quantized(out)):
            return False
        affine = self._layer_norm_parameters(node)
        if affine is None:
            return False
        gamma, beta = affine
        return self._emit_layer_norm(node, gamma, beta, out, node.name)

    def _folded_layer_norm(self, node: Node, folded: NormRegion) -> bool:
        """A per-channel affine region after a LayerNorm (SmoothQuant's 1 / s, channel_shift's -c) -> a
        QLayerNorm of the LayerNorm's input with gamma' = a gamma, beta' = a beta + b."""
        return self._emit_layer_norm(folded.layer_norm, folded.gamma, folded.beta, folded.region.output, node.name)

    def _layer_norm_constants(self, layer_norm: Node, gamma: np.ndarray, beta: np.ndarray, out: str
                              ) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
        """`layer_norm_constants` for this LayerNorm and output, or None (logged) when they do not fit int64."""
        x = layer_norm.inputs[0]
        count = int(np.prod(self.src.values[x].shape[int(layer_norm.attrs["axis"]):]))
        try:
            return layer_norm_constants(count, _present(self.spec(x)), float(layer_norm.attrs["epsilon"]), gamma,
                                        beta, _present(self.spec(out)))
        except UnsupportedError as exc:
            log.warning("node %s stays float: %s", layer_norm.name, exc)
            return None

    def _emit_layer_norm(self, layer_norm: Node, gamma: np.ndarray, beta: np.ndarray, out: str, base: str) -> bool:
        x, axis = layer_norm.inputs[0], int(layer_norm.attrs["axis"])
        o_spec = self.spec(out)
        constants = self._layer_norm_constants(layer_norm, gamma, beta, out)
        if constants is None:
            return False
        attrs, multiplier, bias = constants
        (result,) = self.emit("QLayerNorm", [self.codes_of(x), self.constant(f"{base}_multiplier", multiplier),
                                             self.constant(f"{base}_bias", bias)],
                              [(self.fresh(f"{out}_q"), self.src.values[out].shape, _code_dtype(o_spec))],
                              {"axis": axis, **attrs}, base)
        self.codes[out] = result
        return True

    def _layer_norm_parameters(self, node: Node) -> tuple[np.ndarray, np.ndarray] | None:
        """gamma and beta of a LayerNormalization broadcast to its normalized dims (float64), or None when
        they are not constants."""
        normalized = self.src.values[node.inputs[0]].shape[int(node.attrs["axis"]):]
        gamma = self.src.constants.get(node.inputs[1])
        beta = self.src.constants.get(node.inputs[2]) if len(node.inputs) > 2 else np.zeros(1, np.float32)
        if gamma is None or beta is None or not self.quantized(node.inputs[0]):
            return None
        return (np.broadcast_to(gamma.astype(np.float64), normalized).copy(),
                np.broadcast_to(beta.astype(np.float64), normalized).copy())

    def _layer_norm_affine(self, region: LookupRegion) -> NormRegion | None:
        """The region as a QLayerNorm when it reads a LayerNorm output and is affine per channel of the
        normalized dims (Mul / Add / Sub of constants, Div by one): a (region(1) - region(0)) and b (region(0))
        fold into gamma and beta. None otherwise."""
        layer_norm = self.producers.get(region.input)
        if layer_norm is None or layer_norm.op != "LayerNormalization" or not self.quantized(region.output):
            return None
        parameters = self._layer_norm_parameters(layer_norm)
        axis = int(layer_norm.attrs["axis"])
        if parameters is None or (region.axis is not None and region.axis < axis):
            return None
        values = {region.input}
        for member in region.nodes:
            live = [i for i in member.inputs if i in values]
            if member.op not in ("Mul", "Add", "Sub", "Div") or len(live) != 1 or (member.op == "Div" and
                                                                                  member.inputs[0] not in values):
                return None
            values.update(member.outputs)
        rank = len(self.src.values[region.input].shape)
        probe = torch.zeros([2] + [1] * rank, dtype=torch.float64)
        probe[1] = 1.0
        env = {region.input: probe}
        with torch.no_grad():
            for member in region.nodes:
                args: list[torch.Tensor | None] = [
                    env[i] if i in env else torch.from_numpy(np.array(self.src.constants[i])) for i in member.inputs]
                env[member.outputs[0]] = run_node(member, args)[0].to(torch.float64)
        result = env[region.output].numpy()  # [2, 1, ..., 1, C or 1]
        normalized = self.src.values[region.input].shape[axis:]
        at_zero, at_one = result[0][(0,) * axis], result[1][(0,) * axis]
        a, b = np.broadcast_to(at_one - at_zero, normalized), np.broadcast_to(at_zero, normalized)
        gamma, beta = parameters
        folded = NormRegion(region, layer_norm, a * gamma, a * beta + b)
        if self._layer_norm_constants(layer_norm, folded.gamma, folded.beta, region.output) is None:
            return None  # the region stays float (its LayerNorm too, unless its own output is quantized)
        return folded

    # -- lookup tables --------------------------------------------------------------------------
    def _lookup(self, node: Node, region: LookupRegion) -> bool:
        """QLookup of the region's codes; a region with a float output (`float_table_region`) reads float32."""
        x_spec, o_spec = self.spec(region.input), self.spec(region.output)
        table = lookup_table(self.src, region, x_spec, o_spec)
        qmin, _ = _code_range(x_spec)
        shape = self.src.values[region.output].shape
        if o_spec is None:
            out = region.output if region.output not in self.dst.values else self.fresh(region.output)
            output = (out, shape, "float32")
        else:
            output = (self.fresh(f"{region.output}_q"), shape, _code_dtype(o_spec))
        (result,) = self.emit("QLookup", [self.codes_of(region.input), self.constant(f"{node.name}_table", table)],
                              [output], {"qmin": qmin, "axis": region.axis if region.axis is not None else 0},
                              node.name)
        (self.codes if o_spec is not None else self.raw)[region.output] = result
        return True


def _reduction_size(node: Node, w_codes: np.ndarray | None, x_shape: tuple[int, ...]) -> int:
    """How many products of codes one accumulator of a weighted op sums at most."""
    if w_codes is None or node.op == "MatMul":
        return x_shape[-1]
    if node.op == "Conv":
        return int(np.prod(w_codes.shape[1:]))
    return w_codes.shape[0] // node.attrs["group"] * int(np.prod(w_codes.shape[2:]))  # ConvTranspose


def _channel_taps(node: Node, w_codes: np.ndarray, zero_points: np.ndarray) -> np.ndarray:
    """The centered weight codes (w - zw) each output channel's accumulator sums over: int64 [C_out, taps]."""
    w = w_codes.astype(np.int64)
    if node.op == "Conv":
        taps = w.reshape(w.shape[0], -1)
    elif node.op == "ConvTranspose":  # output channel g * per_group + j reads w[group g's inputs, j]
        group, (c_in, per_group) = node.attrs["group"], w.shape[:2]
        taps = w.reshape(group, c_in // group, per_group, -1).transpose(0, 2, 1, 3).reshape(group * per_group, -1)
    else:  # MatMul: [K, N]
        taps = w.T
    return taps - zero_points.astype(np.int64)[:, None]


def _set_channel(node: Node, w_codes: np.ndarray, channel: int, value: int) -> None:
    """Set every weight code of output channel `channel` to `value` (in place)."""
    if node.op == "Conv":
        w_codes[channel] = value
    elif node.op == "ConvTranspose":
        c_in, per_group = w_codes.shape[:2]
        inputs = c_in // node.attrs["group"]
        group, j = divmod(channel, per_group)
        w_codes[group * inputs:(group + 1) * inputs, j] = value
    else:
        w_codes[:, channel] = value


def constant_channels(node: Node, channels: np.ndarray, w_codes: np.ndarray, w_zero_points: np.ndarray,
                      x_spec: QuantSpec | None, out_spec: QuantSpec | None, acc_scale: np.ndarray, bias: np.ndarray,
                      bias_codes: np.ndarray, epilogue: dict[str, np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    """Lower the output `channels` of a weighted op whose bias does not fit the int32 accumulator as the
    constants they are, or raise UnsupportedError; returns the weight codes to use.

    Such a bias comes from a degenerate weight scale: a dead channel (weights ~1e-34, scale ~5e-37) keeps
    a float bias b that is billions of accumulator steps s_x * s_w (and its requantization multiplier is
    too small for 31 bits). Over every input code the channel's accumulator lies in [lo, hi] (its centered
    weight taps times the extreme centered input codes), so its value lies in b + s_x * s_w * [lo, hi];
    quantization is monotone, so when both ends quantize to the same code k (within the clamp), the
    channel outputs k whatever the input. It is then lowered as exactly that: weights at their zero point
    (accumulator 0), bias k - out_zero_point, multiplier 2^30 with shift 30 (x1). With a float epilogue
    the channel is constant when its weights all sit at the zero point: bias 1, out_scale b.
    `bias_codes` and `epilogue` are updated in place."""
    x_low, x_high = (q - _zero_point(x_spec) for q in _code_range(x_spec))
    w_codes = w_codes.copy()
    taps = _channel_taps(node, w_codes, w_zero_points)
    for channel in channels.tolist():
        products = np.stack([taps[channel] * x_low, taps[channel] * x_high])
        acc_low, acc_high = int(products.min(axis=0).sum()), int(products.max(axis=0).sum())
        where = (f"node {node.name!r}: output channel {channel}'s bias {bias[channel]:.6g} is "
                 f"{bias_codes[channel]:.6g} accumulator steps, beyond the int32 accumulator")
        if out_spec is None:
            if acc_low != acc_high:
                raise UnsupportedError(f"{where}, and its weights are not all zero; give this layer's weight "
                                       "another format (QuantRecipe.layer_formats)")
            bias_codes[channel] = 1
            epilogue["out_scale"][channel] = np.float32(bias[channel])
        else:
            ends = bias[channel] + acc_scale[channel] * np.array([acc_low, acc_high], np.float64)
            codes = np.clip(np.rint(ends / np.float64(_scale(out_spec))) + _zero_point(out_spec),
                            attrs["out_min"], attrs["out_max"])
            if codes[0] != codes[1]:
                raise UnsupportedError(f"{where}, and its output depends on the input; give this layer's weight "
                                       "another format (QuantRecipe.layer_formats)")
            bias_codes[channel] = codes[0] - attrs["out_zero_point"]
            epilogue["multiplier"][channel], epilogue["shift"][channel] = 1 << 30, 30
        _set_channel(node, w_codes, channel, int(w_zero_points[channel]))
        log.info("node %s: output channel %d is constant (its bias is %.6g accumulator steps)", node.name, channel,
                 bias_codes[channel])
    return w_codes
@dataclass(frozen=True)
class NormRegion:
    """A per-channel affine region folded into a QLayerNorm of `layer_norm`'s input: gamma and beta are the
    composed affine map's (float64, the normalized dims' shape)."""

    region: LookupRegion
    layer_norm: Node
    gamma: np.ndarray
    beta: np.ndarray


def lookup_table(graph: Graph, region: LookupRegion, x_spec: QuantSpec | None, out_spec: QuantSpec | None) -> np.ndarray:
    """quantize(f(dequantize(code))) for every code of x (one row per channel when region.axis is set),
    f being the region's nodes run by the reference interpreter; float32 f(dequantize(code)) itself
    when the output is not quantized (out_spec None)."""
    x_spec = _present(x_spec)
    qmin, qmax = _code_range(x_spec)
    codes = np.arange(qmin, qmax + 1).astype(_code_dtype(x_spec))
    result = evaluate_region(graph, region, dequantize(codes, x_spec))  # exactly the fake-quantized values
    table = (result if out_spec is None else quantize(result, out_spec)).T  # [channels, 256]
    return np.ascontiguousarray(table[0] if region.axis is None else table)
