"""bitsmith IR -> TVM Relax: one small emitter per IR op, gathered in the table `EMITTERS`.

`emit_relax(graph)` builds an IRModule whose Relax function "main" takes the graph inputs followed by
the weights (params-as-inputs). Every float constant with more than `PARAM_MIN_ELEMENTS` elements
becomes a parameter, in `EmittedModule.param_names` order, and so does every int8 / uint8 / int16 constant
of that size (quantized weights, packed codes, block scales, lookup tables); smaller ones and all other
integer / bool constants are embedded with `relax.const`. The function returns the graph's output, or a tuple
of them when the graph has several. Its "num_input" attribute counts the graph inputs, so that TVM
passes (LiftTransformParams) can tell activations from weights.

The emitters follow the normalized ONNX semantics of `bitsmith.ops` (every attribute explicit).
After each node, the Relax type of each result is checked against the IR's declared type, so an
emitter that disagrees with the IR fails at emit time with the node's name, not at run time.
Quantization annotations (`Value.quant`) are ignored here: a quantized model reaches this module as
the integer graph of passes/lower_integer.py, whose quantized ops (ops.QUANTIZED_OPS) have emitters
below that compute exactly the reference interpreter's integers.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from bitsmith.errors import BuildError, UnsupportedError
from bitsmith.interpreter import MASKED_CODE, SOFTMAX_OUT_BITS, SOFTMAX_RECIPROCAL_BITS
from bitsmith.formats import SUB_BYTE_FORMATS, element_table, format_info, nan_code, scale_table, unpack_nibbles
from bitsmith.ir import Graph, Node

# Float constants with more elements than this become function parameters.
PARAM_MIN_ELEMENTS = 16
# Attribute of "main": Relax variable name -> largest |code| of the integer weights that variable holds,
# for the weights of integer convolutions and matmuls. Kernels whose exactness depends on small codes
# (x86's vpmaddubsw dot product: x86_intrinsics.py) read it.
WEIGHT_CODE_BOUNDS_ATTR = "bitsmith.weight_code_bounds"


@dataclass
class EmittedModule:
    """A Relax module for one graph, with the calling convention of its "main" function.

    main(*input_names, *param_names) -> output (one output) or tuple of outputs (in output_names order).
    A backend may split the weight-only work off into `main_transform_params(params_tuple)` (x86 does:
    re-layout, packing); callers then pass its results in place of the params. `runner.TVMRunner`
    and the C++ runtime both do so.
    """

    mod: tvm.IRModule
    graph_name: str
    input_names: list[str]
    param_names: list[str]
    output_names: list[str]

    def param_arrays(self, graph: Graph) -> list[np.ndarray]:
        """The parameter tensors to pass to main, taken from `graph` in `param_names` order."""
        return [graph.constants[name] for name in self.param_names]


def is_parameter(array: np.ndarray) -> bool:
    """True when a constant is passed to main as a parameter rather than embedded: float tensors and
    8-bit / int16 tensors (quantized weights: codes, packed 4-bit codes, E8M0 / E4M3 scale bytes; lookup
    tables) of more than PARAM_MIN_ELEMENTS elements."""
    return (array.dtype.kind == "f" or array.dtype in (np.int8, np.uint8, np.int16)) and array.size > PARAM_MIN_ELEMENTS


def emit_relax(graph: Graph) -> EmittedModule:
    """Translate `graph` to a Relax IRModule with a single function "main" (params-as-inputs)."""
    param_names = [name for name, array in graph.constants.items() if is_parameter(array)]
    builder = relax.BlockBuilder()
    emitter = _Emitter(graph, builder)
    signature = [emitter.declare_var(name) for name in [*graph.inputs, *param_names]]
    with builder.function("main", signature, attrs={"num_input": len(graph.inputs)}):
        with builder.dataflow():
            for node in graph.nodes:
                emitter.emit_node(node)
            results = [emitter.operand_by_name(name) for name in graph.outputs]
            result = results[0] if len(results) == 1 else relax.Tuple(results)
            output = builder.emit_output(result)
        builder.emit_func_output(output)
    mod = builder.get()
    if emitter.weight_code_bounds:
        mod["main"] = mod["main"].with_attr(WEIGHT_CODE_BOUNDS_ATTR, dict(emitter.weight_code_bounds))
    return EmittedModule(mod, graph.name, list(graph.inputs), param_names, list(graph.outputs))


def supported_ops() -> list[str]:
    """IR ops this module can emit."""
    return sorted(EMITTERS)


# ---------------------------------------------------------------------------------------------
# The emitting context shared by all op emitters
# ---------------------------------------------------------------------------------------------
class _Emitter:
    """Maps IR value names to Relax expressions while the nodes are emitted in order."""

    def __init__(self, graph: Graph, builder: relax.BlockBuilder) -> None:
        self.graph = graph
        self.builder = builder
        self.exprs: dict[str, relax.Expr] = {}
        self.weight_code_bounds: dict[str, int] = {}  # see WEIGHT_CODE_BOUNDS_ATTR

    def declare_var(self, name: str) -> relax.Var:
        value = self.graph.values[name]
        var = relax.Var(_identifier(name), relax.TensorType(list(value.shape), value.dtype))
        self.exprs[name] = var
        return var

    def operand_by_name(self, name: str) -> relax.Expr:
        if name not in self.exprs:
            if name not in self.graph.constants:
                raise BuildError(f"value {name!r} is used before it is defined")
            self.exprs[name] = relax.const(self.graph.constants[name])
        return self.exprs[name]

    def operand(self, node: Node, index: int) -> relax.Expr:
        return self.operand_by_name(node.inputs[index])

    def has_operand(self, node: Node, index: int) -> bool:
        return index < len(node.inputs) and node.inputs[index] != ""

    def integer_weight(self, node: Node, index: int, codes: np.ndarray) -> relax.Expr:
        """Operand `index`, integer weight `codes` read by an integer kernel; records how large its codes get."""
        operand = self.operand(node, index)
        self.bound_codes(operand, codes)
        return operand

    def bound_codes(self, weight: relax.Expr, codes: np.ndarray) -> None:
        """Record that variable `weight` holds integer weights no larger in magnitude than `codes`' largest."""
        if isinstance(weight, relax.Var) and codes.size:
            bound = int(np.abs(codes.astype(np.int64)).max())
            self.weight_code_bounds[weight.name] = max(bound, self.weight_code_bounds.get(weight.name, 0))

    @functools.cached_property
    def producers(self) -> dict[str, Node]:
        """Value name -> the node computing it (Graph.producers, once per module)."""
        return self.graph.producers()

    @functools.cached_property
    def consumers(self) -> dict[str, list[Node]]:
        return self.graph.consumers()

    def constant_value(self, node: Node, index: int) -> np.ndarray | None:
        """The numpy value of an operand when it is an IR constant, else None."""
        return self.graph.constants.get(node.inputs[index])

    def shape(self, name: str) -> tuple[int, ...]:
        return self.graph.values[name].shape

    def dtype(self, name: str) -> str:
        return self.graph.values[name].dtype

    def emit(self, expr: relax.Expr, hint: str = "") -> relax.Var:
        return self.builder.emit(expr, name_hint=_identifier(hint) if hint else "")

    def emit_node(self, node: Node) -> None:
        emitter = EMITTERS.get(node.op)
        if emitter is None:
            raise UnsupportedError(f"node {node.name!r}: op {node.op!r} has no Relax emitter in the x86 FP32 "
                                   f"backend (supported: {', '.join(sorted(EMITTERS))})")
        try:
            result = emitter(self, node)
        except (UnsupportedError, BuildError):
            raise
        except Exception as exc:  # a TVM type-inference error: name the node that caused it
            raise BuildError(f"node {node.name!r} ({node.op}): Relax emission failed: {exc}") from exc
        results = result if isinstance(result, list) else [result]
        if len(results) != len(node.outputs):
            raise BuildError(f"node {node.name!r} ({node.op}): emitted {len(results)} results "
                             f"for {len(node.outputs)} outputs")
        for name, expr in zip(node.outputs, results):
            var = self.emit(expr, name)
            self._check_type(node, name, var)
            self.exprs[name] = var

    def _check_type(self, node: Node, name: str, var: relax.Var) -> None:
        declared = self.graph.values[name]
        ty = var.ty
        shape = tuple(int(d) for d in ty.shape.values) if ty.shape is not None else None
        if shape != declared.shape or str(ty.dtype) != declared.dtype:
            raise BuildError(f"node {node.name!r} ({node.op}): output {name!r} is {ty.dtype}{list(shape or [])} "
                             f"in Relax but {declared.type_str()} in the IR")


def _identifier(name: str) -> str:
    """A Relax-friendly variable name derived from an IR value name."""
    text = re.sub(r"\W", "_", name)
    return text if text and not text[0].isdigit() else "v_" + text


def _scalar(value: float, dtype: str) -> relax.Constant:
    return relax.const(np.array(value, dtype=dtype), dtype)


def _channel_vector(vector: relax.Expr, rank: int) -> relax.Expr:
    """Reshape a per-channel vector [C] so it broadcasts along axis 1 of a rank-`rank` tensor."""
    return R.reshape(vector, [1, -1] + [1] * (rank - 2))


Emitter = Callable[[_Emitter, Node], "relax.Expr | list[relax.Expr]"]


# ---------------------------------------------------------------------------------------------
# Elementwise
# ---------------------------------------------------------------------------------------------
def _unary(fn: Callable[[relax.Expr], relax.Expr]) -> Emitter:
    return lambda e, node: fn(e.operand(node, 0))


def _binary(fn: Callable[[relax.Expr, relax.Expr], relax.Expr]) -> Emitter:
    return lambda e, node: fn(e.operand(node, 0), e.operand(node, 1))


def _variadic(fn: Callable[[relax.Expr, relax.Expr], relax.Expr]) -> Emitter:
    """Max / Min take any number of inputs in ONNX: fold them pairwise."""
    def emit(e: _Emitter, node: Node) -> relax.Expr:
        result = e.operand(node, 0)
        for index in range(1, len(node.inputs)):
            result = fn(result, e.operand(node, index))
        return result
    return emit


def emit_pow(e: _Emitter, node: Node) -> relax.Expr:
    base, exponent = e.operand(node, 0), e.operand(node, 1)
    base_dtype = e.dtype(node.inputs[0])
    if e.dtype(node.inputs[1]) != base_dtype:
        exponent = R.astype(exponent, base_dtype)
    return R.power(base, exponent)


def emit_div(e: _Emitter, node: Node) -> relax.Expr:
    a, b = e.operand(node, 0), e.operand(node, 1)
    if np.dtype(e.dtype(node.inputs[0])).kind in "iu":
        return _truncating_divide(e, a, b, node.inputs[0])
    return R.divide(a, b)


def _truncating_divide(e: _Emitter, a: relax.Expr, b: relax.Expr, name: str) -> relax.Expr:
    """ONNX integer Div truncates toward zero (C semantics); Relax's floor_divide rounds down."""
    floor = R.floor_divide(a, b)
    zero = _scalar(0, e.dtype(name))
    inexact = R.not_equal(R.multiply(floor, b), a)
    signs_differ = R.logical_xor(R.less(a, zero), R.less(b, zero))
    return R.where(R.logical_and(inexact, signs_differ), R.add(floor, _scalar(1, e.dtype(name))), floor)


def emit_reciprocal(e: _Emitter, node: Node) -> relax.Expr:
    return R.divide(_scalar(1.0, e.dtype(node.inputs[0])), e.operand(node, 0))


def emit_clip(e: _Emitter, node: Node) -> relax.Expr:
    x, dtype = e.operand(node, 0), e.dtype(node.inputs[0])
    low, high = float(node.attrs["min"]), float(node.attrs["max"])
    if math.isfinite(low):
        x = R.maximum(x, _scalar(low, dtype))
    if math.isfinite(high):
        x = R.minimum(x, _scalar(high, dtype))
    return x


def emit_leaky_relu(e: _Emitter, node: Node) -> relax.Expr:
    return R.nn.leakyrelu(e.operand(node, 0), float(node.attrs["alpha"]))


def emit_elu(e: _Emitter, node: Node) -> relax.Expr:
    x, dtype = e.operand(node, 0), e.dtype(node.inputs[0])
    negative = R.multiply(_scalar(node.attrs["alpha"], dtype), R.subtract(R.exp(x), _scalar(1.0, dtype)))
    return R.where(R.less(x, _scalar(0.0, dtype)), negative, x)


def _hard_sigmoid(x: relax.Expr, alpha: float, beta: float, dtype: str) -> relax.Expr:
    linear = R.add(R.multiply(x, _scalar(alpha, dtype)), _scalar(beta, dtype))
    return R.minimum(R.maximum(linear, _scalar(0.0, dtype)), _scalar(1.0, dtype))


def emit_hard_sigmoid(e: _Emitter, node: Node) -> relax.Expr:
    return _hard_sigmoid(e.operand(node, 0), float(node.attrs["alpha"]), float(node.attrs["beta"]),
                         e.dtype(node.inputs[0]))


def emit_hard_swish(e: _Emitter, node: Node) -> relax.Expr:
    x = e.operand(node, 0)
    return R.multiply(x, _hard_sigmoid(x, 1.0 / 6.0, 0.5, e.dtype(node.inputs[0])))


def emit_gelu(e: _Emitter, node: Node) -> relax.Expr:
    """Gelu spelled with Erf / Tanh, so that backends rewriting those (fast math) cover it too."""
    x, dtype = e.operand(node, 0), e.dtype(node.inputs[0])
    approximate = node.attrs["approximate"]
    if approximate == "none":
        inner = R.erf(R.multiply(x, _scalar(1.0 / math.sqrt(2.0), dtype)))
    elif approximate == "tanh":
        cubic = R.multiply(R.multiply(R.multiply(x, x), x), _scalar(0.044715, dtype))
        inner = R.tanh(R.multiply(R.add(x, cubic), _scalar(math.sqrt(2.0 / math.pi), dtype)))
    else:
        raise UnsupportedError(f"node {node.name!r} (Gelu): approximate={approximate!r} is not 'none' or 'tanh'")
    half = _scalar(0.5, dtype)
    return R.multiply(x, R.add(half, R.multiply(half, inner)))


def emit_prelu(e: _Emitter, node: Node) -> relax.Expr:
    """ONNX PRelu: slope * x where x < 0, with the slope broadcast numpy-style (not only per channel)."""
    x, slope = e.operand(node, 0), e.operand(node, 1)
    return R.where(R.less(x, _scalar(0.0, e.dtype(node.inputs[0]))), R.multiply(x, slope), x)


def emit_softplus(e: _Emitter, node: Node) -> relax.Expr:
    return R.nn.softplus(e.operand(node, 0))


def emit_cast(e: _Emitter, node: Node) -> relax.Expr:
    target, source = node.attrs["to"], e.dtype(node.inputs[0])
    if target == source:
        return e.operand(node, 0)
    if target == "bool":  # nonzero -> True (a float -> bool conversion must not truncate 0.5 to False)
        return R.not_equal(e.operand(node, 0), _scalar(0, source))
    return R.astype(e.operand(node, 0), target)


# ---------------------------------------------------------------------------------------------
# Linear algebra and convolution
# ---------------------------------------------------------------------------------------------
def emit_matmul(e: _Emitter, node: Node) -> relax.Expr:
    return R.matmul(e.operand(node, 0), e.operand(node, 1))


def _spatial_rank(node: Node, e: _Emitter) -> int:
    rank = len(e.shape(node.inputs[0])) - 2
    if rank not in (1, 2):
        raise UnsupportedError(f"node {node.name!r} ({node.op}): {rank}-D spatial input; "
                               "only 1-D and 2-D are supported")
    return rank


def _with_bias(e: _Emitter, node: Node, result: relax.Expr, rank: int) -> relax.Expr:
    if not e.has_operand(node, 2):
        return result
    return R.add(result, _channel_vector(e.operand(node, 2), rank + 2))


def emit_conv(e: _Emitter, node: Node) -> relax.Expr:
    rank = _spatial_rank(node, e)
    conv = R.nn.conv1d if rank == 1 else R.nn.conv2d
    a = node.attrs
    result = conv(e.operand(node, 0), e.operand(node, 1), strides=list(a["strides"]), padding=list(a["pads"]),
                  dilation=list(a["dilations"]), groups=int(a["group"]))
    return _with_bias(e, node, result, rank)


def emit_conv_transpose(e: _Emitter, node: Node) -> relax.Expr:
    """ConvTranspose as a sub-pixel convolution when dilation is 1, else TVM's conv_transpose op.

    TVM lowers conv_transpose to a convolution over a zero-dilated input, which with stride s wastes
    s^2 of the multiply-adds on zeros; the sub-pixel form does only the useful ones.
    """
    rank = _spatial_rank(node, e)
    a = node.attrs
    if any(int(d) != 1 for d in a["dilations"]):
        conv = R.nn.conv1d_transpose if rank == 1 else R.nn.conv2d_transpose
        result = conv(e.operand(node, 0), e.operand(node, 1), strides=list(a["strides"]), padding=list(a["pads"]),
                      output_padding=list(a["output_padding"]), dilation=list(a["dilations"]),
                      groups=int(a["group"]))
        return _with_bias(e, node, result, rank)
    return _with_bias(e, node, _sub_pixel_conv_transpose(e, node, rank), rank)


def _sub_pixel_conv_transpose(e: _Emitter, node: Node, rank: int) -> relax.Expr:
    """ConvTranspose (dilation 1) = one convolution producing every stride phase, then interleave, then crop.

    Output position q = i*s + k (before cropping) takes input i through kernel tap k. Writing
    k = phase + s*m with the kernel zero-padded to M*s taps, phase `phase` of the output is a plain
    convolution of the input (padded by M-1 on each side) with the flipped taps w[phase + s*(M-1-m)];
    computing all s^rank phases as extra output channels makes it one convolution, and a
    depth-to-space interleaves them.
    """
    a = node.attrs
    x_shape, (c_in, o_group, *kernel) = e.shape(node.inputs[0]), e.shape(node.inputs[1])
    groups, strides = int(a["group"]), [int(v) for v in a["strides"]]
    taps = [-(-k // s) for k, s in zip(kernel, strides)]                       # M per axis
    weight = _sub_pixel_weight(e, e.operand(node, 1), groups, c_in, o_group, kernel, strides, taps)
    conv = R.nn.conv1d if rank == 1 else R.nn.conv2d
    phases = e.emit(conv(e.operand(node, 0), weight, strides=[1] * rank, padding=[m - 1 for m in taps] * 2,
                         dilation=[1] * rank, groups=groups))
    spatial = [x_shape[2 + i] + taps[i] - 1 for i in range(rank)]
    channels = groups * o_group
    interleaved = _interleave_phases(e, phases, x_shape[0], channels, strides, spatial)
    return _crop_to_output(e, node, interleaved, [n * s for n, s in zip(spatial, strides)], rank)


def _sub_pixel_weight(e: _Emitter, weight: relax.Expr, groups: int, c_in: int, o_group: int,
                      kernel: list[int], strides: list[int], taps: list[int]) -> relax.Expr:
    """[C, O/g, k...] transpose weights -> [g*(O/g)*s^rank, C/g, M...] convolution weights (flipped taps)."""
    rank = len(kernel)
    extra = [m * s - k for m, s, k in zip(taps, strides, kernel)]
    if any(extra):
        weight = R.nn.pad(weight, [0, 0, 0, 0] + [w for pad in extra for w in (0, pad)])
    split = [groups, c_in // groups, o_group] + [d for m, s in zip(taps, strides) for d in (m, s)]
    weight = e.emit(R.reshape(weight, split))
    for axis in range(rank):
        weight = e.emit(R.flip(weight, 3 + 2 * axis))                          # the m axes
    phase_axes = [4 + 2 * axis for axis in range(rank)]
    tap_axes = [3 + 2 * axis for axis in range(rank)]
    weight = R.permute_dims(weight, [0, 2, *phase_axes, 1, *tap_axes])
    phase_count = 1
    for s in strides:
        phase_count *= s
    return R.reshape(weight, [groups * o_group * phase_count, c_in // groups, *taps])


def _interleave_phases(e: _Emitter, phases: relax.Expr, batch: int, channels: int, strides: list[int],
                       spatial: list[int]) -> relax.Expr:
    """[N, C*s^rank, n...] (channel-major, then phases) -> [N, C, n*s...] (depth-to-space, CRD order)."""
    rank = len(strides)
    split = e.emit(R.reshape(phases, [batch, channels, *strides, *spatial]))
    perm = [0, 1] + [p for axis in range(rank) for p in (2 + rank + axis, 2 + axis)]
    blocks = e.emit(R.permute_dims(split, perm))
    return R.reshape(blocks, [batch, channels] + [n * s for n, s in zip(spatial, strides)])


def _crop_to_output(e: _Emitter, node: Node, full: relax.Expr, full_spatial: list[int], rank: int) -> relax.Expr:
    """Cut the begin pads off and keep the output length; zero-extend first where output_padding needs it."""
    out_spatial = e.shape(node.outputs[0])[2:]
    begins = [int(p) for p in node.attrs["pads"][:rank]]
    shortfall = [max(b + n - f, 0) for b, n, f in zip(begins, out_spatial, full_spatial)]
    full = e.emit(full)
    if any(shortfall):
        full = e.emit(R.nn.pad(full, [0, 0, 0, 0] + [w for s in shortfall for w in (0, s)]))
    return R.strided_slice(full, list(range(2, 2 + rank)), begins, [b + n for b, n in zip(begins, out_spatial)])


# ---------------------------------------------------------------------------------------------
# Normalization and reductions
# ---------------------------------------------------------------------------------------------
def emit_batch_norm(e: _Emitter, node: Node) -> relax.Expr:
    """Inference batch norm as one multiply-add per channel: x * k + (bias - mean * k)."""
    x, scale, bias, mean, var = (e.operand(node, i) for i in range(5))
    rank, dtype = len(e.shape(node.inputs[0])), e.dtype(node.inputs[0])
    k = e.emit(R.multiply(scale, R.rsqrt(R.add(var, _scalar(node.attrs["epsilon"], dtype)))))
    shift = e.emit(R.subtract(bias, R.multiply(mean, k)))
    return R.add(R.multiply(x, _channel_vector(k, rank)), _channel_vector(shift, rank))


def emit_layer_norm(e: _Emitter, node: Node) -> relax.Expr:
    """Two-pass layer norm (mean, then the mean of squared deviations): as accurate as ONNX Runtime."""
    x, dtype = e.operand(node, 0), e.dtype(node.inputs[0])
    rank = len(e.shape(node.inputs[0]))
    axes = list(range(int(node.attrs["axis"]), rank))
    centered = e.emit(R.subtract(x, R.mean(x, axis=axes, keepdims=True)))
    variance = R.mean(R.multiply(centered, centered), axis=axes, keepdims=True)
    normalized = R.multiply(centered, R.rsqrt(R.add(variance, _scalar(node.attrs["epsilon"], dtype))))
    result = R.multiply(normalized, e.operand(node, 1))
    if e.has_operand(node, 2):
        result = R.add(result, e.operand(node, 2))
    return result


def emit_softmax(e: _Emitter, node: Node) -> relax.Expr:
    return R.nn.softmax(e.operand(node, 0), axis=int(node.attrs["axis"]))


def emit_log_softmax(e: _Emitter, node: Node) -> relax.Expr:
    return R.nn.log_softmax(e.operand(node, 0), axis=int(node.attrs["axis"]))


def _reduction(fn: Callable[..., relax.Expr]) -> Emitter:
    def emit(e: _Emitter, node: Node) -> relax.Expr:
        axes = [int(a) for a in node.attrs["axes"]]
        if not axes:  # normalized IR lists the axes; an empty list reduces nothing
            return R.reshape(e.operand(node, 0), list(e.shape(node.outputs[0])))
        return fn(e.operand(node, 0), axis=axes, keepdims=bool(node.attrs["keepdims"]))
    return emit


def emit_argmax(e: _Emitter, node: Node) -> relax.Expr:
    return R.argmax(e.operand(node, 0), axis=int(node.attrs["axis"]), keepdims=bool(node.attrs["keepdims"]))


# ---------------------------------------------------------------------------------------------
# Pooling and resizing
# ---------------------------------------------------------------------------------------------
def emit_max_pool(e: _Emitter, node: Node) -> relax.Expr:
    rank = _spatial_rank(node, e)
    pool = R.nn.max_pool1d if rank == 1 else R.nn.max_pool2d
    a = node.attrs
    return pool(e.operand(node, 0), pool_size=list(a["kernel_shape"]), strides=list(a["strides"]),
                padding=list(a["pads"]), dilation=list(a["dilations"]), ceil_mode=bool(a["ceil_mode"]))


def emit_average_pool(e: _Emitter, node: Node) -> relax.Expr:
    rank = _spatial_rank(node, e)
    pool = R.nn.avg_pool1d if rank == 1 else R.nn.avg_pool2d
    a = node.attrs
    return pool(e.operand(node, 0), pool_size=list(a["kernel_shape"]), strides=list(a["strides"]),
                padding=list(a["pads"]), ceil_mode=bool(a["ceil_mode"]),
                count_include_pad=bool(a["count_include_pad"]))


def _spatial_axes(e: _Emitter, node: Node) -> list[int]:
    return list(range(2, len(e.shape(node.inputs[0]))))


def emit_global_average_pool(e: _Emitter, node: Node) -> relax.Expr:
    return R.mean(e.operand(node, 0), axis=_spatial_axes(e, node), keepdims=True)


def emit_global_max_pool(e: _Emitter, node: Node) -> relax.Expr:
    return R.max(e.operand(node, 0), axis=_spatial_axes(e, node), keepdims=True)


_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def source_coordinates(out_len: int, in_len: int, scale: float, mode: str) -> np.ndarray:
    """ONNX Resize's coordinate transform: where each output position samples the input (float64)."""
    x = np.arange(out_len, dtype=np.float64)
    if mode in ("half_pixel", "pytorch_half_pixel"):
        if mode == "pytorch_half_pixel" and out_len <= 1:
            return np.zeros_like(x)
        return (x + 0.5) / scale - 0.5
    if mode == "align_corners":
        return x * (in_len - 1) / (out_len - 1) if out_len > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    return (x + 0.5) / scale  # tf_half_pixel_for_nn


def nearest_indices(coords: np.ndarray, nearest_mode: str, in_len: int) -> np.ndarray:
    modes: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "round_prefer_floor": lambda c: np.ceil(c - 0.5), "round_prefer_ceil": lambda c: np.floor(c + 0.5),
        "floor": np.floor, "ceil": np.ceil}
    rounded = modes[nearest_mode](coords)
    return np.clip(rounded, 0, in_len - 1).astype(np.int64)


def _resize_axis(e: _Emitter, x: relax.Expr, axis: int, rank: int, in_len: int, out_len: int,
                 scale: float, node: Node) -> relax.Expr:
    """Resize one axis with index (and weight) tables computed here, since every shape is static."""
    a = node.attrs
    coords = source_coordinates(out_len, in_len, scale, a["coordinate_transformation_mode"])
    if a["mode"] == "nearest":
        return R.take(x, relax.const(nearest_indices(coords, a["nearest_mode"], in_len)), axis=axis)
    coords = np.clip(coords, 0, in_len - 1)
    low = np.floor(coords).astype(np.int64)
    high = np.minimum(low + 1, in_len - 1)
    weight_shape = [1] * rank
    weight_shape[axis] = out_len
    weight = relax.const((coords - low).astype(e.dtype(node.inputs[0])).reshape(weight_shape))
    below = e.emit(R.take(x, relax.const(low), axis=axis))
    above = R.take(x, relax.const(high), axis=axis)
    return R.add(below, R.multiply(R.subtract(above, below), weight))


def emit_resize(e: _Emitter, node: Node) -> relax.Expr:
    """ONNX Resize (nearest or linear), separable: one gather (and blend) per resized axis."""
    a = node.attrs
    where = f"node {node.name!r} (Resize)"
    if a["mode"] not in ("nearest", "linear"):
        raise UnsupportedError(f"{where}: mode {a['mode']!r} is not supported (nearest, linear are)")
    if a["coordinate_transformation_mode"] not in _COORDINATE_MODES:
        raise UnsupportedError(f"{where}: coordinate_transformation_mode {a['coordinate_transformation_mode']!r} "
                               f"is not one of {list(_COORDINATE_MODES)}")
    if a["mode"] == "nearest" and a["nearest_mode"] not in _NEAREST_MODES:
        raise UnsupportedError(f"{where}: nearest_mode {a['nearest_mode']!r} is not one of {list(_NEAREST_MODES)}")
    x, in_shape = e.operand(node, 0), e.shape(node.inputs[0])
    for axis, (out_len, scale) in enumerate(zip(a["sizes"], a["scales"])):
        if out_len != in_shape[axis] or scale != 1.0:
            x = e.emit(_resize_axis(e, x, axis, len(in_shape), in_shape[axis], int(out_len), float(scale), node))
    return x


# ---------------------------------------------------------------------------------------------
# Data movement
# ---------------------------------------------------------------------------------------------
def _to_output_shape(e: _Emitter, node: Node) -> relax.Expr:
    """Reshape / Squeeze / Unsqueeze: the IR already knows the output shape."""
    return R.reshape(e.operand(node, 0), list(e.shape(node.outputs[0])))


def emit_transpose(e: _Emitter, node: Node) -> relax.Expr:
    return R.permute_dims(e.operand(node, 0), [int(p) for p in node.attrs["perm"]])


def emit_concat(e: _Emitter, node: Node) -> relax.Expr:
    parts = [e.operand(node, i) for i in range(len(node.inputs)) if e.has_operand(node, i)]
    return R.concat(parts, axis=int(node.attrs["axis"]))


def emit_split(e: _Emitter, node: Node) -> list[relax.Expr]:
    sizes = [int(s) for s in node.attrs["split"]]
    boundaries = np.cumsum(sizes)[:-1].tolist()
    x = e.operand(node, 0)
    if not boundaries:
        return [x]
    parts = e.emit(R.split(x, boundaries, axis=int(node.attrs["axis"])))
    return [relax.TupleGetItem(parts, i) for i in range(len(sizes))]


def emit_slice(e: _Emitter, node: Node) -> relax.Expr:
    """Strided slice; a negative step is a flip followed by a positive-step slice."""
    x, shape = e.operand(node, 0), e.shape(node.inputs[0])
    a = node.attrs
    axes, begins, ends, steps = [], [], [], []
    for axis, start, end, step in zip(a["axes"], a["starts"], a["ends"], a["steps"]):
        axis, start, end, step = int(axis), int(start), int(end), int(step)
        if step < 0:
            x = R.flip(x, axis)
            start, end, step = shape[axis] - 1 - start, shape[axis] - 1 - end, -step
        axes.append(axis)
        begins.append(max(0, min(start, shape[axis])))
        ends.append(max(0, min(end, shape[axis])))
        steps.append(step)
    return R.strided_slice(x, axes, begins, ends, steps, assume_inbound=True)


def emit_expand(e: _Emitter, node: Node) -> relax.Expr:
    return R.broadcast_to(e.operand(node, 0), list(e.shape(node.outputs[0])))


def emit_gather(e: _Emitter, node: Node) -> relax.Expr:
    """Gather with ONNX's negative indices (counted from the end of the axis)."""
    axis = int(node.attrs["axis"])
    extent = e.shape(node.inputs[0])[axis]
    indices = e.constant_value(node, 1)
    if indices is not None:
        index_expr = relax.const(np.where(indices < 0, indices + extent, indices).astype(indices.dtype))
    else:
        index_expr = e.operand(node, 1)
        dtype = e.dtype(node.inputs[1])
        index_expr = R.where(R.less(index_expr, _scalar(0, dtype)),
                             R.add(index_expr, _scalar(extent, dtype)), index_expr)
    # run-time indices are clipped: TVM's default "fast" take reads out of bounds (and may crash) on a bad
    # index in the input data; constant indices were checked at import
    gathered = e.emit(R.take(e.operand(node, 0), index_expr, axis=axis, mode="fast" if indices is not None else "clip"))
    return R.reshape(gathered, list(e.shape(node.outputs[0])))  # a 0-d index drops the axis


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def emit_pad(e: _Emitter, node: Node) -> relax.Expr:
    """Pad; negative pads (crops) become a slice after padding by the positive parts."""
    mode = node.attrs["mode"]
    if mode not in _PAD_MODES:
        raise UnsupportedError(f"node {node.name!r} (Pad): mode {mode!r} is not one of {sorted(_PAD_MODES)}")
    x, shape = e.operand(node, 0), e.shape(node.inputs[0])
    rank = len(shape)
    pads = [int(p) for p in node.attrs["pads"]]
    begins, ends = pads[:rank], pads[rank:]
    widths = [w for axis in range(rank) for w in (max(begins[axis], 0), max(ends[axis], 0))]
    padded = R.nn.pad(x, widths, pad_mode=_PAD_MODES[mode], pad_value=float(node.attrs["value"]))
    if min(pads) >= 0:
        return padded
    padded_shape = [shape[i] + max(begins[i], 0) + max(ends[i], 0) for i in range(rank)]
    starts = [max(-b, 0) for b in begins]
    stops = [padded_shape[i] - max(-ends[i], 0) for i in range(rank)]
    return R.strided_slice(padded, list(range(rank)), starts, stops)


def emit_tile(e: _Emitter, node: Node) -> relax.Expr:
    return R.tile(e.operand(node, 0), [int(r) for r in node.attrs["repeats"]])


def emit_depth_to_space(e: _Emitter, node: Node) -> relax.Expr:
    """ONNX DepthToSpace (DCR or CRD) as reshape -> transpose -> reshape."""
    n, c, h, w = e.shape(node.inputs[0])
    b = int(node.attrs["blocksize"])
    if node.attrs["mode"] == "DCR":
        split, perm = [n, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2]
    else:
        split, perm = [n, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3]
    blocks = R.permute_dims(R.reshape(e.operand(node, 0), split), perm)
    return R.reshape(blocks, [n, c // (b * b), h * b, w * b])


# ---------------------------------------------------------------------------------------------
# Quantized (integer) ops: exact integer arithmetic, bit for bit the reference (ops.QUANTIZED_OPS)
# ---------------------------------------------------------------------------------------------
# A QConv / QMatMul with constant weights of zero point 0 (the usual symmetric int8) multiplies the
# 8-bit codes directly and folds the input zero point into the bias (_qconv_raw_codes); otherwise zero
# points are subtracted in int32 before int32-accumulating convolutions and matmuls
# (out_dtype="int32": exact); requantization is int64 multiply, add and arithmetic right shift. The
# per-channel operands (multipliers, shifts, scales, biases) must be IR constants: they are read here.
def _static(e: _Emitter, node: Node, index: int) -> np.ndarray:
    array = e.constant_value(node, index)
    if array is None:
        raise UnsupportedError(f"node {node.name!r} ({node.op}): operand {index} ({node.inputs[index]!r}) "
                               "must be a constant")
    return array


def _broadcast_const(array: np.ndarray, rank: int, axis: int, dtype: str) -> relax.Constant:
    """A scalar or per-channel array as a constant broadcasting along `axis` of a rank-`rank` tensor."""
    array = np.asarray(array).astype(dtype)
    if array.size == 1:
        return relax.const(array.reshape(()), dtype)
    return relax.const(array.reshape([-1 if d == axis else 1 for d in range(rank)]), dtype)


def _wrap_int32(values: np.ndarray) -> np.ndarray:
    """int64 values reduced modulo 2^32 into int32 (two's complement), as int32 arithmetic wraps."""
    return np.asarray(values, np.int64).astype(np.uint32).astype(np.int32)


def _centered(e: _Emitter, x: relax.Expr, zero_point: int) -> relax.Expr:
    """codes - zero_point in int32."""
    x = R.astype(x, "int32")
    return R.subtract(x, _scalar(zero_point, "int32")) if zero_point else x


def _requantize(e: _Emitter, acc: relax.Expr, multiplier: np.ndarray | int, shift: np.ndarray | int, rank: int,
                axis: int, attrs: dict) -> relax.Expr:
    """clamp(((acc * M + 2^(s-1)) >> s) + zero_point, out_min, out_max) in int64, cast to out_dtype."""
    shift = np.asarray(shift, np.int64)
    rounding = np.left_shift(np.int64(1), shift - 1)
    value = R.astype(acc, "int64")
    if not (np.asarray(multiplier).size == 1 and int(np.asarray(multiplier).reshape(-1)[0]) == 1):
        value = R.multiply(value, _broadcast_const(np.asarray(multiplier, np.int64), rank, axis, "int64"))
    value = R.add(value, _broadcast_const(rounding, rank, axis, "int64"))
    value = R.right_shift(value, _broadcast_const(shift, rank, axis, "int64"))
    return _output_codes(value, attrs, "int64")


def _output_codes(value: relax.Expr, attrs: dict, dtype: str) -> relax.Expr:
    """clamp(value + out_zero_point, out_min, out_max) in `dtype` (value's), cast to out_dtype."""
    if attrs["out_zero_point"]:
        value = R.add(value, _scalar(attrs["out_zero_point"], dtype))
    value = R.minimum(R.maximum(value, _scalar(attrs["out_min"], dtype)), _scalar(attrs["out_max"], dtype))
    return R.astype(value, attrs["out_dtype"])


def _weighted_epilogue(e: _Emitter, node: Node, acc: relax.Expr, rank: int, axis: int,
                       bias_shift: np.ndarray | None = None) -> relax.Expr:
    """Bias (plus `bias_shift`, a zero-point correction), then the requantize or float epilogue of
    QConv / QMatMul (per channel along `axis`). Sums wrap in int32 as the accumulator does."""
    bias = _static(e, node, 3).astype(np.int64)
    if bias_shift is not None:
        bias = np.broadcast_to(bias, bias_shift.shape) + bias_shift
    acc = R.add(acc, _broadcast_const(_wrap_int32(bias), rank, axis, "int32"))
    if node.attrs["epilogue"] == "float":
        return R.multiply(R.astype(acc, "float32"), _broadcast_const(_static(e, node, 4), rank, axis, "float32"))
    return _requantize(e, acc, _static(e, node, 4), _static(e, node, 5), rank, axis, node.attrs)


def emit_quantize_linear(e: _Emitter, node: Node) -> relax.Expr:
    a = node.attrs
    rank = len(e.shape(node.inputs[0]))
    scale, zero_point = _static(e, node, 1).astype(np.float32), _static(e, node, 2).astype(np.int32)
    scaled = R.divide(e.operand(node, 0), _broadcast_const(scale, rank, a["axis"], "float32"))
    scaled = R.where(R.isnan(scaled), _scalar(0.0, "float32"), scaled)
    low = _broadcast_const((a["qmin"] - zero_point).astype(np.float32), rank, a["axis"], "float32")
    high = _broadcast_const((a["qmax"] - zero_point).astype(np.float32), rank, a["axis"], "float32")
    codes = R.astype(R.round(R.minimum(R.maximum(scaled, low), high)), "int32")
    codes = R.add(codes, _broadcast_const(zero_point, rank, a["axis"], "int32"))
    return R.astype(codes, a["dtype"])


def emit_dequantize_linear(e: _Emitter, node: Node) -> relax.Expr:
    rank = len(e.shape(node.inputs[0]))
    axis = node.attrs["axis"]
    centered = R.subtract(R.astype(e.operand(node, 0), "int32"),
                          _broadcast_const(_static(e, node, 2), rank, axis, "int32"))
    return R.multiply(R.astype(centered, "float32"), _broadcast_const(_static(e, node, 1), rank, axis, "float32"))


def emit_qconv(e: _Emitter, node: Node) -> relax.Expr:
    rank = _spatial_rank(node, e)
    a = node.attrs
    w_zero_point = _static(e, node, 2)
    weights = _constant_weight_codes(e, node, 1)
    if weights is not None and not np.any(w_zero_point != 0):
        return _qconv_raw_codes(e, node, rank, weights)
    x = _centered(e, e.operand(node, 0), int(a["x_zero_point"]))
    w = R.astype(e.operand(node, 1), "int32")
    if np.any(w_zero_point != 0):
        w = R.subtract(w, _broadcast_const(w_zero_point, rank + 2, 0, "int32"))
    conv = R.nn.conv1d if rank == 1 else R.nn.conv2d
    acc = conv(x, w, strides=list(a["strides"]), padding=list(a["pads"]), dilation=list(a["dilations"]),
               groups=int(a["group"]), out_dtype="int32")
    return _weighted_epilogue(e, node, e.emit(acc), rank + 2, 1)


# Input channels of an ungrouped integer convolution on raw codes are padded to a multiple of this: the
# reduction's innermost loop (the channels, in NHWC) then splits into the 4 (VNNI, AVX2 bytes) or 2 (AVX2
# words) steps of the CPU's dot-product intrinsics. Measured on MobileNetV2's first convolution (3 channels).
CHANNEL_MULTIPLE = 4
# Output channels (more than CHANNEL_MULTIPLE of them) are padded to a multiple of this: the lanes of the
# intrinsics (8 int32 accumulators on AVX2, 8 or 16 with VNNI) then cover them, instead of int32
# multiplies. Measured on PP-OCRv4 det's 96 -> 18 and 192 -> 42 1 x 1 convolutions.
OUTPUT_CHANNEL_MULTIPLE = 8


def _qconv_raw_codes(e: _Emitter, node: Node, rank: int, weights: np.ndarray) -> relax.Expr:
    """QConv on the 8-bit codes themselves, the input zero point corrected once per output channel.

    sum((x - zx) * w) = sum(x * w) - zx * sum(w): the convolution reads uint8 / int8 codes and int8
    weights (a quarter of the int32 traffic; the weights stay a packable parameter), and zx * sum(w[c])
    is folded into the bias at emit time. The input is padded with zx (the code of a real zero), so
    the correction holds at the borders too. Exact: every term is an integer and int32 wraps alike.
    An ungrouped convolution's input channels are padded to a multiple of CHANNEL_MULTIPLE, the weights
    with zeros (an RGB image's 3 channels: the kernels' dot products then apply, see the constant), and
    its output channels (beyond the first CHANNEL_MULTIPLE) to one of OUTPUT_CHANNEL_MULTIPLE, with zero
    filters whose accumulators are sliced off before the epilogue (whose per-channel constants keep
    their size: weight packing derives their layout from the channels read, and would fold a longer
    buffer onto them)."""
    a = node.attrs
    zero_point = int(a["x_zero_point"])
    x, pads = e.operand(node, 0), [int(p) for p in a["pads"]]
    w = e.integer_weight(node, 1, weights)
    ungrouped, outputs = int(a["group"]) == 1, weights.shape[0]
    extra_channels = -weights.shape[1] % CHANNEL_MULTIPLE if ungrouped else 0
    extra_outputs = -outputs % OUTPUT_CHANNEL_MULTIPLE if ungrouped and outputs > CHANNEL_MULTIPLE else 0
    if (zero_point and any(pads)) or extra_channels:
        spatial = ([width for axis in range(rank) for width in (pads[axis], pads[rank + axis])] if zero_point
                   else [0] * 2 * rank)
        x = R.nn.pad(x, [0, 0, 0, extra_channels] + spatial, pad_value=float(zero_point))
        pads = pads if not zero_point else [0] * (2 * rank)
    if extra_channels or extra_outputs:  # a constant: the kernels read its codes (cpu_schedule.weight_code_bounds)
        w = relax.const(np.pad(weights, [(0, extra_outputs), (0, extra_channels)] + [(0, 0)] * rank))
    conv = R.nn.conv1d if rank == 1 else R.nn.conv2d
    acc = conv(x, w, strides=list(a["strides"]), padding=pads, dilation=list(a["dilations"]),
               groups=int(a["group"]), out_dtype="int32")
    if extra_outputs:
        acc = R.strided_slice(e.emit(acc), axes=[1], begin=[0], end=[outputs])
    weight_sums = weights.astype(np.int64).reshape(outputs, -1).sum(axis=1)
    return _weighted_epilogue(e, node, e.emit(acc), rank + 2, 1, bias_shift=-zero_point * weight_sums)


def emit_qconv_transpose(e: _Emitter, node: Node) -> relax.Expr:
    """QConvTranspose as the float ConvTranspose's sub-pixel convolution (`_sub_pixel_conv_transpose`) on
    codes with int32 accumulation, then QConv's epilogue per output channel.

    With constant weights of zero point 0 the convolution reads the codes themselves, the input padded
    with its zero point's code, and each phase channel's zx * (sum of its weight taps) is subtracted
    (as `_qconv_raw_codes`); otherwise it convolves int32 x - zx with int32 w - zw. Positions that
    output_padding adds receive no products: their accumulator is 0, then the bias."""
    rank = _spatial_rank(node, e)
    a = node.attrs
    if any(int(d) != 1 for d in a["dilations"]):
        raise UnsupportedError(f"node {node.name!r} (QConvTranspose): dilations {list(a['dilations'])}; "
                               "the integer ConvTranspose supports dilation 1 only")
    x_shape, (c_in, o_group, *kernel) = e.shape(node.inputs[0]), e.shape(node.inputs[1])
    groups, strides = int(a["group"]), [int(v) for v in a["strides"]]
    taps = [-(-k // s) for k, s in zip(kernel, strides)]
    zero_point, w_zero_point = int(a["x_zero_point"]), _static(e, node, 2).astype(np.int64).reshape(-1)
    weights = e.constant_value(node, 1)
    raw = weights is not None and not np.any(w_zero_point != 0)
    if raw:
        x, w, padding = e.operand(node, 0), e.operand(node, 1), [0] * (2 * rank)
        if any(m > 1 for m in taps):
            x = R.nn.pad(x, [0, 0, 0, 0] + [width for m in taps for width in (m - 1, m - 1)], pad_value=float(zero_point))
    else:
        x, padding = _centered(e, e.operand(node, 0), zero_point), [m - 1 for m in taps] * 2
        w = _transpose_weights_centered(e, e.operand(node, 1), w_zero_point, groups, c_in, o_group, kernel)
    weight = _sub_pixel_weight(e, w, groups, c_in, o_group, kernel, strides, taps)
    conv = R.nn.conv1d if rank == 1 else R.nn.conv2d
    phases = conv(x, weight, strides=[1] * rank, padding=padding, dilation=[1] * rank, groups=groups,
                  out_dtype="int32")
    if raw and zero_point:
        sums = _phase_weight_sums(np.asarray(weights), groups, strides, taps)
        phases = R.add(e.emit(phases), _broadcast_const(_wrap_int32(-zero_point * sums), rank + 2, 1, "int32"))
    spatial = [x_shape[2 + i] + taps[i] - 1 for i in range(rank)]
    interleaved = _interleave_phases(e, e.emit(phases), x_shape[0], groups * o_group, strides, spatial)
    acc = _crop_to_output(e, node, interleaved, [n * s for n, s in zip(spatial, strides)], rank)
    return _weighted_epilogue(e, node, e.emit(acc), rank + 2, 1)


def _transpose_weights_centered(e: _Emitter, w: relax.Expr, zero_point: np.ndarray, groups: int, c_in: int,
                                o_group: int, kernel: list[int]) -> relax.Expr:
    """int32 ConvTranspose weight codes minus their zero points (a scalar, or one per output channel
    g * o_group + j, which reads w[group g's inputs, j])."""
    w = R.astype(w, "int32")
    if not np.any(zero_point != 0):
        return w
    if zero_point.size == 1:
        return R.subtract(w, _scalar(int(zero_point[0]), "int32"))
    split = e.emit(R.reshape(w, [groups, c_in // groups, o_group, *kernel]))
    offsets = relax.const(zero_point.astype(np.int32).reshape(groups, 1, o_group, *[1] * len(kernel)))
    return R.reshape(R.subtract(split, offsets), [c_in, o_group, *kernel])


def _phase_weight_sums(weights: np.ndarray, groups: int, strides: list[int], taps: list[int]) -> np.ndarray:
    """Per channel of `_sub_pixel_weight`'s convolution (output channel, then phases): the sum of its
    weight taps, i.e. of w[c, o, phase + s*m] over the group's inputs c and the taps m."""
    rank = len(strides)
    extra = [m * s - k for m, s, k in zip(taps, strides, weights.shape[2:])]
    padded = np.pad(weights.astype(np.int64), [(0, 0), (0, 0)] + [(0, pad) for pad in extra])
    c_in, o_group = weights.shape[:2]
    split = padded.reshape([groups, c_in // groups, o_group] + [d for m, s in zip(taps, strides) for d in (m, s)])
    return split.sum(axis=(1, *[3 + 2 * axis for axis in range(rank)])).reshape(-1)


def emit_qmatmul(e: _Emitter, node: Node) -> relax.Expr:
    b_rank = len(e.shape(node.inputs[1]))
    b_zero_point = _static(e, node, 2)
    rank = len(e.shape(node.outputs[0]))
    weights = _constant_weight_codes(e, node, 1)
    if weights is not None and b_rank == 2 and not np.any(b_zero_point != 0):
        # as _qconv_raw_codes: codes times int8 weights, zero point corrected by the column sums
        acc = e.emit(R.matmul(e.operand(node, 0), e.integer_weight(node, 1, weights), out_dtype="int32"))
        correction = -int(node.attrs["a_zero_point"]) * weights.astype(np.int64).sum(axis=0)
        return _weighted_epilogue(e, node, acc, rank, rank - 1, bias_shift=correction)
    a_centered = _centered(e, e.operand(node, 0), int(node.attrs["a_zero_point"]))
    b = R.astype(e.operand(node, 1), "int32")
    if np.any(b_zero_point != 0):
        b = R.subtract(b, _broadcast_const(b_zero_point, b_rank, b_rank - 1, "int32"))
    acc = e.emit(R.matmul(a_centered, b, out_dtype="int32"))
    return _weighted_epilogue(e, node, acc, rank, rank - 1)


def emit_qadd(e: _Emitter, node: Node) -> relax.Expr:
    """(da * Ma + db * Mb + 2^(s-1)) >> s, da and db the centered codes: in int32 where no sum can leave it
    (8-bit codes with the multipliers lower_integer gives them), else in int64 as the reference computes it."""
    a = node.attrs
    rank = len(e.shape(node.outputs[0]))
    multipliers = (int(a["a_multiplier"]), int(a["b_multiplier"]))
    spans = [_centered_span(e.dtype(name), int(a[f"{side}_zero_point"])) for name, side in zip(node.inputs, "ab")]
    if int(a["shift"]) >= 1 and sum(span * abs(m) for span, m in zip(spans, multipliers)) < 1 << 31:
        return _qadd_in_int32(e, node)
    left = R.multiply(R.astype(_centered(e, e.operand(node, 0), int(a["a_zero_point"])), "int64"),
                      _scalar(a["a_multiplier"], "int64"))
    right = R.multiply(R.astype(_centered(e, e.operand(node, 1), int(a["b_zero_point"])), "int64"),
                       _scalar(a["b_multiplier"], "int64"))
    return _requantize(e, R.add(left, right), 1, a["shift"], rank, 0, a)


def _centered_span(dtype: str, zero_point: int) -> int:
    """The largest |code - zero_point| of a code dtype of at most 16 bits; 2^31 (no int32 sum) for wider ones."""
    info = np.iinfo(dtype)
    if info.bits > 16:
        return 1 << 31
    return max(abs(int(info.min) - zero_point), abs(int(info.max) - zero_point))


def _qadd_in_int32(e: _Emitter, node: Node) -> relax.Expr:
    """QAdd in int32 lanes, for sums X = da * Ma + db * Mb that fit int32 (emit_qadd checks). The rounding
    term 2^(s-1) may not fit beside X, so it is added after the first s - 1 bits are gone: nested floor
    division gives (X + 2^(s-1)) >> s == ((X >> (s-1)) + 1) >> 1, bit for bit the int64 reference."""
    a = node.attrs
    shift = int(a["shift"])
    total = R.add(*(R.multiply(_centered(e, e.operand(node, i), int(a[f"{side}_zero_point"])),
                               _scalar(a[f"{side}_multiplier"], "int32")) for i, side in enumerate("ab")))
    if shift > 1:
        total = R.right_shift(total, _scalar(shift - 1, "int32"))
    return _output_codes(R.right_shift(R.add(total, _scalar(1, "int32")), _scalar(1, "int32")), a, "int32")


def emit_qmul(e: _Emitter, node: Node) -> relax.Expr:
    """The product of the centered codes, in int32 when both are 8-bit (|product| <= 255^2: exact, and the
    requantize chain then runs in 32-bit lanes, backends/requantize.py), else in int64."""
    a = node.attrs
    rank = len(e.shape(node.outputs[0]))
    centered = [_centered(e, e.operand(node, i), int(a[f"{side}_zero_point"])) for i, side in ((0, "a"), (1, "b"))]
    if all(e.dtype(name) in ("uint8", "int8") for name in node.inputs[:2]):
        return _requantize(e, e.emit(R.multiply(*centered)), a["multiplier"], a["shift"], rank, 0, a)
    product = R.multiply(*(R.astype(c, "int64") for c in centered))
    return _requantize(e, product, a["multiplier"], a["shift"], rank, 0, a)


def emit_qlookup(e: _Emitter, node: Node) -> relax.Expr:
    """table[q - qmin]; per-channel tables are flattened and indexed with channel * width + (q - qmin).
    A per-tensor lookup of a per-tensor lookup read nowhere else is one lookup in the composed table."""
    table_shape = e.shape(node.inputs[1])
    composed = _composed_lookup(e, node)
    if composed is not None:
        first, table = composed
        return R.take(relax.const(table), _centered(e, e.operand(first, 0), int(first.attrs["qmin"])), axis=0,
                      mode="clip")
    index = _centered(e, e.operand(node, 0), int(node.attrs["qmin"]))
    table = e.operand(node, 1)
    if len(table_shape) == 1:
        return R.take(table, index, axis=0, mode="clip")
    rank = len(e.shape(node.inputs[0]))
    channels, width = table_shape
    offsets = _broadcast_const(np.arange(channels, dtype=np.int32) * width, rank, int(node.attrs["axis"]), "int32")
    flat = R.reshape(table, [channels * width])
    return R.take(flat, R.add(index, offsets), axis=0, mode="clip")


def _composed_lookup(e: _Emitter, node: Node) -> tuple[Node, np.ndarray] | None:
    """(first, table) when `node` looks up, in a constant 1-D table, the codes another such QLookup
    (`first`) produced for it alone: table[j] = node's table[clip(first's table[j] - qmin)] (the clip of
    take's mode="clip"), so node(first(q)) == table[clip(q - first's qmin)]."""
    first = e.producers.get(node.inputs[0])
    second_table = e.constant_value(node, 1)
    if (first is None or first.op != "QLookup" or second_table is None or second_table.ndim != 1
            or len(e.consumers[node.inputs[0]]) != 1 or node.inputs[0] in e.graph.outputs):
        return None
    first_table = e.constant_value(first, 1)
    if first_table is None or first_table.ndim != 1:
        return None
    index = np.clip(first_table.astype(np.int64) - int(node.attrs["qmin"]), 0, second_table.size - 1)
    return first, second_table[index]


def emit_qglobal_average_pool(e: _Emitter, node: Node) -> relax.Expr:
    a = node.attrs
    rank = len(e.shape(node.inputs[0]))
    total = R.sum(_centered(e, e.operand(node, 0), int(a["x_zero_point"])), axis=list(range(2, rank)), keepdims=True)
    return _requantize(e, total, a["multiplier"], a["shift"], rank, 0, a)


def emit_qaverage_pool(e: _Emitter, node: Node) -> relax.Expr:
    """Window sums as a depthwise convolution with a kernel of ones (padding adds zeros), then requantize."""
    rank = _spatial_rank(node, e)
    a = node.attrs
    channels = e.shape(node.inputs[0])[1]
    ones = relax.const(np.ones([channels, 1, *a["kernel_shape"]], np.int32))
    conv = R.nn.conv1d if rank == 1 else R.nn.conv2d
    total = conv(_centered(e, e.operand(node, 0), int(a["x_zero_point"])), ones, strides=list(a["strides"]),
                 padding=list(a["pads"]), groups=channels, out_dtype="int32")
    return _requantize(e, e.emit(total), a["multiplier"], a["shift"], rank + 2, 0, a)


def emit_qsoftmax(e: _Emitter, node: Node) -> relax.Expr:
    a = node.attrs
    axis = int(a["axis"])
    if e.has_operand(node, 2):
        return _masked_qsoftmax(e, node)
    q = e.emit(R.astype(e.operand(node, 0), "int32"))
    steps = R.subtract(R.max(q, axis=axis, keepdims=True), q)
    exps = e.emit(R.take(R.astype(e.operand(node, 1), "int64"), steps, axis=0, mode="clip"))
    return _softmax_probabilities(e, exps, e.emit(R.sum(exps, axis=axis, keepdims=True)), a)


def _softmax_probabilities(e: _Emitter, exps: relax.Expr, total: relax.Expr, a: dict) -> relax.Expr:
    """One division per row (2^62 // max(total, 1)), then multiply and shift, as the interpreter's
    _softmax_probabilities: a division per element costs more than the rest of the softmax."""
    shift = SOFTMAX_RECIPROCAL_BITS - SOFTMAX_OUT_BITS[a["out_dtype"]]
    inverse = R.floor_divide(_scalar(1 << SOFTMAX_RECIPROCAL_BITS, "int64"), R.maximum(total, _scalar(1, "int64")))
    probs = R.right_shift(R.add(R.multiply(exps, e.emit(inverse)), _scalar(1 << (shift - 1), "int64")),
                          _scalar(shift, "int64"))
    return _output_codes(probs, a, "int64")


def _masked_qsoftmax(e: _Emitter, node: Node) -> relax.Expr:
    """QSoftmax with its `keep` mask: the row maximum over kept positions, exp = 0 elsewhere (a row with
    nothing kept is all zeros), as interpreter._masked_qsoftmax."""
    a = node.attrs
    axis = int(a["axis"])
    q = e.emit(R.astype(e.operand(node, 0), "int32"))
    keep = e.emit(R.astype(e.operand(node, 2), "bool"))
    top = R.max(R.where(keep, q, _scalar(MASKED_CODE, "int32")), axis=axis, keepdims=True)
    steps = e.emit(R.where(keep, R.subtract(top, q), _scalar(0, "int32")))
    exps = R.take(R.astype(e.operand(node, 1), "int64"), steps, axis=0, mode="clip")
    exps = e.emit(R.where(keep, exps, _scalar(0, "int64")))
    return _softmax_probabilities(e, exps, e.emit(R.sum(exps, axis=axis, keepdims=True)), a)


def _isqrt(e: _Emitter, v: relax.Expr) -> relax.Expr:
    """floor(sqrt(v)) of int64 v in [0, 2^62) exactly, as interpreter.isqrt: float64 square root (correctly
    rounded), floor, then one integer correction each way."""
    root = e.emit(R.astype(R.floor(R.sqrt(R.astype(v, "float64"))), "int64"))
    one = _scalar(1, "int64")
    root = e.emit(R.subtract(root, R.astype(R.greater(R.multiply(root, root), v), "int64")))
    above = R.add(root, one)
    return R.add(root, R.astype(R.less_equal(R.multiply(above, above), v), "int64"))


def emit_qlayer_norm(e: _Emitter, node: Node) -> relax.Expr:
    """QLayerNorm in int64 (ops.QUANTIZED_OPS): row sums, an exact integer square root, one division per
    row, then the folded gamma / beta and the output shift."""
    a = node.attrs
    shape = e.shape(node.inputs[0])
    axes = list(range(int(a["axis"]), len(shape)))
    count = _scalar(int(np.prod(shape[int(a["axis"]):])), "int64")
    centered = R.astype(e.operand(node, 0), "int64")
    if a["x_zero_point"]:
        centered = R.subtract(centered, _scalar(a["x_zero_point"], "int64"))
    centered = e.emit(centered)
    s1 = e.emit(R.sum(centered, axis=axes, keepdims=True))
    s2 = R.sum(R.multiply(centered, centered), axis=axes, keepdims=True)
    variance = R.add(R.subtract(R.multiply(count, s2), R.multiply(s1, s1)), _scalar(a["epsilon"], "int64"))
    scaled = e.emit(R.left_shift(variance, _scalar(2 * int(a["sqrt_shift"]), "int64")))
    root = R.maximum(_isqrt(e, scaled), _scalar(1, "int64"))
    inverse = e.emit(R.floor_divide(_scalar(1 << int(a["inv_shift"]), "int64"), root))
    norm_shift = int(a["norm_shift"])
    deviation = R.subtract(R.multiply(count, centered), s1)
    normalized = R.right_shift(R.add(R.multiply(deviation, inverse), _scalar(1 << (norm_shift - 1), "int64")),
                               _scalar(norm_shift, "int64"))
    multiplier = relax.const(_static(e, node, 1).astype(np.int64), "int64")
    bias = relax.const(_static(e, node, 2).astype(np.int64), "int64")
    affine = R.add(R.multiply(normalized, multiplier), bias)
    return _requantize(e, affine, 1, int(a["shift"]), len(shape), 0, a)


# ---------------------------------------------------------------------------------------------
# Low-precision formats (ops.LOW_PRECISION_OPS): stored bytes -> values, exactly the reference's
# ---------------------------------------------------------------------------------------------
# 4-bit codes are unpacked with shift / mask. Elements and scales are decoded by tables of their exact
# values (16 entries for FP4, 256 for FP8, E8M0 and E4M3), and FP8 is rounded with exact float32
# arithmetic (`_float8_steps`): TVM 0.27's float8 casts on llvm are wrong below the smallest normal number
# (0.0 -> float8_e4m3fn -> float32 gives 2^-7) and on NaN / Inf codes, and R.dequantize truncates FP8.
# Weight decoding reads parameters only, so the backend lifts it into main_transform_params: it runs
# once, when the weights are loaded.
def _table_values(table: np.ndarray, index: relax.Expr) -> relax.Expr:
    """table[index] for uint8 / int32 indices within the table."""
    return R.take(relax.const(table), R.astype(index, "int32"), axis=0, mode="clip")


def _float8_steps(e: _Emitter, x: relax.Expr, fmt: str) -> tuple[relax.Expr, relax.Expr, relax.Expr]:
    """(power, q, step) of the `fmt` element nearest |x| (float32), saturating, ties to even: the element
    is q * step, step = power * 2^-mantissa_bits, q = rne(a / step) (float32, an integer up to
    2^(mantissa_bits + 1)), a = min(|x|, max finite), power = 2^max(floor(log2 a), min_exponent).

    power comes from Rump, Ogita and Oishi's NextPowerTwo (2008): with q = a * 2^24 (exact),
    L = (q + a) - q is 2^ceil(log2 a), or 0 when a is a power of two itself; then halve L above a. Every
    step is exact float32 arithmetic, so subnormals (power clamped, q below 2^mantissa_bits), normals and a
    carry into the next binade (q = 2^(mantissa_bits + 1)) come out alike, with a handful of elementwise
    Relax ops (Relax has no bit casts, and a TIR function would stop ConvertLayout and the fusion with the
    op computing x)."""
    info = format_info(fmt)
    magnitude = e.emit(R.minimum(R.abs(x), _scalar(info.max_finite, "float32")))
    shifted = e.emit(R.multiply(magnitude, _scalar(2.0 ** 24, "float32")))
    # TVM's simplifier rewrites (q + a) - q to a, floats included: the select (always q, as a >= 0) hides q
    unseen = R.where(R.greater_equal(magnitude, _scalar(0.0, "float32")), shifted, R.negative(shifted))
    ceiling = e.emit(R.subtract(R.add(shifted, magnitude), unseen))
    ceiling = e.emit(R.where(R.equal(ceiling, _scalar(0.0, "float32")), magnitude, ceiling))
    power = R.where(R.greater(ceiling, magnitude), R.multiply(ceiling, _scalar(0.5, "float32")), ceiling)
    power = e.emit(R.maximum(power, _scalar(2.0 ** info.min_exponent, "float32")))
    step = e.emit(R.multiply(power, _scalar(2.0 ** -info.mantissa_bits, "float32")))
    return power, e.emit(R.round(R.divide(magnitude, step))), step


def _sign_bit(x: relax.Expr) -> relax.Expr:
    """x's sign bit: x < 0, or x = -0.0 (1 / -0.0 = -inf)."""
    zero = _scalar(0.0, "float32")
    return R.logical_or(R.less(x, zero), R.logical_and(R.equal(x, zero),
                                                       R.less(R.divide(_scalar(1.0, "float32"), x), zero)))


def _encode_float8(e: _Emitter, x: relax.Expr, fmt: str) -> relax.Expr:
    """uint8 bit patterns of the `fmt` elements nearest to x: the magnitude's code k * 2^mantissa_bits + q
    with k = log2(power) - min_exponent (`_float8_steps`; log of an exact power of two, rounded), x's sign
    bit (-0.0 gives 0x80, as ml_dtypes), ml_dtypes' NaN pattern for NaN."""
    info = format_info(fmt)
    x = e.emit(x)
    power, steps, _ = _float8_steps(e, x, fmt)
    binade = R.round(R.divide(R.log(R.multiply(power, _scalar(2.0 ** -info.min_exponent, "float32"))),
                              _scalar(math.log(2.0), "float32")))
    code = R.add(R.multiply(R.astype(binade, "int32"), _scalar(1 << info.mantissa_bits, "int32")),
                 R.astype(steps, "int32"))
    code = R.where(_sign_bit(x), R.add(code, _scalar(128, "int32")), code)
    return R.astype(R.where(R.isnan(x), _scalar(nan_code(fmt), "int32"), code), "uint8")


def _rounded_float8(e: _Emitter, x: relax.Expr, fmt: str) -> relax.Expr:
    """The float32 value of `_encode_float8`'s element, computed directly: q * step (exact) with x's sign
    (zeros keep theirs), NaN for NaN."""
    x = e.emit(x)
    _, steps, step = _float8_steps(e, x, fmt)
    value = e.emit(R.multiply(steps, step))
    value = R.where(R.less(x, _scalar(0.0, "float32")), R.negative(value), value)
    value = R.where(R.equal(x, _scalar(0.0, "float32")), x, value)
    return R.where(R.isnan(x), x, value)


def _nibble_fields(e: _Emitter, node: Node, shape: list[int]) -> relax.Expr:
    """The node's packed operand (uint8, ceil(n / 2) bytes) -> the 4-bit fields of `shape` (uint8 0..15),
    low nibble first."""
    count = int(np.prod(shape))
    packed = e.operand(node, 0)
    size = int(np.prod(e.shape(node.inputs[0])))
    if len(e.shape(node.inputs[0])) != 1:
        packed = R.reshape(packed, [size])
    low = e.emit(R.bitwise_and(packed, _scalar(15, "uint8")))
    high = e.emit(R.right_shift(packed, _scalar(4, "uint8")))
    pairs = R.concat([R.expand_dims(low, [1]), R.expand_dims(high, [1])], axis=1)  # R.stack fails ConvertLayout
    flat = e.emit(R.reshape(e.emit(pairs), [2 * size]))
    if 2 * size != count:
        flat = e.emit(R.strided_slice(flat, axes=[0], begin=[0], end=[count]))
    return R.reshape(flat, shape)


def _signed_fields(fields: relax.Expr, fmt: str) -> relax.Expr:
    """Integer codes as int32: int4 fields n -> (n ^ 8) - 8, other codes unchanged."""
    ints = R.astype(fields, "int32")
    if fmt == "int4":
        ints = R.subtract(R.bitwise_xor(ints, _scalar(8, "int32")), _scalar(8, "int32"))
    return ints


def _expanded(e: _Emitter, param: relax.Expr, shape: list[int], attrs: dict) -> relax.Expr:
    """A tensor / channel / block parameter broadcast against `shape` (block entries repeated over the block)."""
    axis = int(attrs["axis"])
    param = e.emit(param)
    if attrs["granularity"] == "tensor":
        return R.reshape(param, [])
    if attrs["granularity"] == "channel":
        return R.reshape(param, [-1 if d == axis else 1 for d in range(len(shape))])
    block = int(attrs["block_size"])
    repeated = e.emit(R.repeat(param, block, axis=axis))
    blocks = -(-shape[axis] // block)
    if blocks * block != shape[axis]:
        repeated = R.strided_slice(repeated, axes=[axis], begin=[0], end=[shape[axis]])
    return repeated


def _decoded_scale(e: _Emitter, node: Node, scale_format: str) -> relax.Expr:
    """float32 scales: as given, or E8M0 / E4M3 bytes decoded by table."""
    scale = e.operand(node, 1)
    return scale if scale_format == "fp32" else _table_values(scale_table(scale_format), scale)


def emit_dequantize_weight(e: _Emitter, node: Node) -> relax.Expr:
    a = node.attrs
    fmt, shape = a["format"], [int(d) for d in a["shape"]]
    info = format_info(fmt)
    codes = e.operand(node, 0)
    if fmt in SUB_BYTE_FORMATS:
        fields = _nibble_fields(e, node, shape)
    else:
        fields = R.reshape(codes, shape) if list(e.shape(node.inputs[0])) != shape else codes
    if not info.is_float:
        centered = R.subtract(_signed_fields(fields, fmt), _expanded(e, R.astype(e.operand(node, 2), "int32"), shape, a))
        values = R.astype(centered, "float32")
    else:
        values = _table_values(element_table(fmt), fields)
    scale = _decoded_scale(e, node, info.scale_format)
    if fmt == "nvfp4":  # the block scale times the tensor scale, rounded once to float32, as formats.effective_scale
        scale = R.multiply(scale, R.reshape(e.operand(node, 2), []))
    return R.multiply(values, _expanded(e, scale, shape, a))


def emit_unpack_codes(e: _Emitter, node: Node) -> relax.Expr:
    a = node.attrs
    shape = [int(d) for d in a["shape"]]
    fields = _nibble_fields(e, node, shape)
    return R.astype(_signed_fields(fields, a["format"]), "int8") if a["format"] == "int4" else fields


def emit_quantize_float(e: _Emitter, node: Node) -> relax.Expr:
    return _encode_float8(e, R.divide(e.operand(node, 0), R.reshape(e.operand(node, 1), [])), node.attrs["format"])


def emit_dequantize_float(e: _Emitter, node: Node) -> relax.Expr:
    """Table lookup of the bit patterns; or, reading a QuantizeFloat of the same format, the rounded value
    computed from that node's float input (the same number, `_rounded_float8`): the round trip is then
    elementwise arithmetic that fuses with the op producing x, and the bit patterns, read by nobody else,
    are never stored."""
    fmt = node.attrs["format"]
    producer = e.producers.get(node.inputs[0])
    if producer is not None and producer.op == "QuantizeFloat" and producer.attrs["format"] == fmt:
        scaled = R.divide(e.operand(producer, 0), R.reshape(e.operand(producer, 1), []))
        values = _rounded_float8(e, scaled, fmt)
    else:
        values = _table_values(element_table(fmt), e.operand(node, 0))
    return R.multiply(values, R.reshape(e.operand(node, 1), []))


def _constant_weight_codes(e: _Emitter, node: Node, index: int) -> np.ndarray | None:
    """Operand `index` as a numpy array when it is a constant, or UnpackCodes of a constant (unpacked here)."""
    array = e.constant_value(node, index)
    if array is not None:
        return array
    name = node.inputs[index]
    producer = e.producers.get(name)
    if producer is None or producer.op != "UnpackCodes" or producer.inputs[0] not in e.graph.constants:
        return None
    return unpack_nibbles(e.graph.constants[producer.inputs[0]], tuple(producer.attrs["shape"]),
                          producer.attrs["format"])


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
EMITTERS: dict[str, Emitter] = {
    # elementwise
    "Add": _binary(R.add), "Sub": _binary(R.subtract), "Mul": _binary(R.multiply), "Div": emit_div,
    "Pow": emit_pow, "Max": _variadic(R.maximum), "Min": _variadic(R.minimum),
    "Equal": _binary(R.equal), "Less": _binary(R.less), "Greater": _binary(R.greater),
    "LessOrEqual": _binary(R.less_equal), "GreaterOrEqual": _binary(R.greater_equal),
    "Where": lambda e, node: R.where(e.operand(node, 0), e.operand(node, 1), e.operand(node, 2)),
    "And": _binary(R.logical_and), "Or": _binary(R.logical_or), "Not": _unary(R.logical_not),
    "Relu": _unary(R.nn.relu), "Sigmoid": _unary(R.sigmoid), "Tanh": _unary(R.tanh), "Exp": _unary(R.exp),
    "Log": _unary(R.log), "Sqrt": _unary(R.sqrt), "Reciprocal": emit_reciprocal, "Neg": _unary(R.negative),
    "Abs": _unary(R.abs), "Erf": _unary(R.erf), "Floor": _unary(R.floor), "Ceil": _unary(R.ceil),
    "Round": _unary(R.round), "Sin": _unary(R.sin), "Cos": _unary(R.cos), "Softplus": emit_softplus,
    "Clip": emit_clip, "LeakyRelu": emit_leaky_relu, "Elu": emit_elu, "HardSigmoid": emit_hard_sigmoid,
    "HardSwish": emit_hard_swish, "Gelu": emit_gelu, "PRelu": emit_prelu, "Cast": emit_cast,
    # linear algebra and convolution
    "MatMul": emit_matmul, "Conv": emit_conv, "ConvTranspose": emit_conv_transpose,
    # normalization and reductions
    "BatchNormalization": emit_batch_norm, "LayerNormalization": emit_layer_norm,
    "Softmax": emit_softmax, "LogSoftmax": emit_log_softmax,
    "ReduceMean": _reduction(R.mean), "ReduceSum": _reduction(R.sum),
    "ReduceMax": _reduction(R.max), "ReduceMin": _reduction(R.min), "ArgMax": emit_argmax,
    # pooling and resizing
    "MaxPool": emit_max_pool, "AveragePool": emit_average_pool,
    "GlobalAveragePool": emit_global_average_pool, "GlobalMaxPool": emit_global_max_pool,
    "Resize": emit_resize,
    # data movement
    "Reshape": _to_output_shape, "Squeeze": _to_output_shape, "Unsqueeze": _to_output_shape,
    "Transpose": emit_transpose, "Concat": emit_concat, "Split": emit_split, "Slice": emit_slice,
    "Expand": emit_expand, "Gather": emit_gather, "Pad": emit_pad, "Tile": emit_tile,
    "DepthToSpace": emit_depth_to_space,
    # quantized (integer) ops
    "QuantizeLinear": emit_quantize_linear, "DequantizeLinear": emit_dequantize_linear,
    "QConv": emit_qconv, "QConvTranspose": emit_qconv_transpose, "QMatMul": emit_qmatmul, "QAdd": emit_qadd, "QMul": emit_qmul, "QLookup": emit_qlookup,
    "QGlobalAveragePool": emit_qglobal_average_pool, "QAveragePool": emit_qaverage_pool, "QSoftmax": emit_qsoftmax,
    # low-precision formats
    "DequantizeWeight": emit_dequantize_weight, "UnpackCodes": emit_unpack_codes,
    "QuantizeFloat": emit_quantize_float, "DequantizeFloat": emit_dequantize_float,
}
EMITTERS["QLayerNorm"] = emit_qlayer_norm
