"""bitsmith IR -> ONNX with QuantizeLinear / DequantizeLinear (QDQ): the annotated graph as a standard model.

    model = export_onnx(qgraph, "model.qdq.onnx")     # onnx.ModelProto, checked by onnx.checker
    ok, why = ort_runnable(qgraph)                    # can ONNX Runtime 1.31 run it?

Every IR op goes back to its ONNX form at the chosen opset: the operands the IR holds as attributes
(Reshape/Expand shape, Slice starts/ends/axes/steps, Clip min/max, Resize scales or sizes, Pad pads
and constant value, reduction axes from opset 18 (ReduceSum from 13), Squeeze/Unsqueeze axes, Split
sizes, Tile repeats) become int64 / float initializers again (`_EMITTERS`, one function per op
that needs more than its attributes copied).

Quantization follows bitsmith's simulation (`simulate.Simulator`) exactly:
- a quantized weight is stored as its codes (formats.quantize) in the ONNX element type of its
  format (INT8, UINT8, INT16, INT4, UINT4, FLOAT8E4M3FN, FLOAT8E5M2, FLOAT4E2M1), followed by a
  DequantizeLinear: per tensor, per axis (`axis`) or blocked (`axis` + `block_size`, opset 21);
- a quantized activation (node output or graph input) gets QuantizeLinear -> DequantizeLinear right
  where it is produced; the DequantizeLinear output keeps the IR name, so consumers and graph
  outputs are unchanged (a quantized graph input keeps its name too: its QDQ output is renamed);
- a dynamic spec (QuantSpec.dynamic, uint8 per tensor) becomes DynamicQuantizeLinear -> DequantizeLinear,
  which computes the scale and zero point from the tensor at run time exactly as the simulator does
  (formats.dynamic_spec); a constant with a dynamic spec is stored with the spec of its own values;
- MX formats have E8M0 block scales, which DequantizeLinear cannot take in ONNX 1.23 / ORT 1.31:
  their scales are exported as float32 (they are powers of two, so this is exact); NVFP4 stores its
  E4M3 block scales as FLOAT8E4M3FN, dequantized by the per-tensor float32 scale, which feeds the
  element DequantizeLinear (the product is the float32 `formats.effective_scale` bit for bit).

FP4 (FLOAT4E2M1: fp4_e2m1, mxfp4, nvfp4) needs opset 23. The model is standard ONNX, but ONNX Runtime
1.31 has no FLOAT4E2M1 kernel, so `ort_runnable` says no. Block-format *activations* (MX/NVFP4
scales computed from the data at run time) have no ONNX operator and are refused.

ONNX Runtime with graph optimizations off (ORT_DISABLE_ALL) runs the QDQ semantics: its float kernels
differ from the torch reference kernels by float rounding only, and its QuantizeLinear rounds exactly
as formats.quantize (tests/test_onnx_qdq.py has the measured agreement). With optimizations on it
fuses QDQ groups into integer kernels (QLinearConv; MatMulNBits for weight-only MatMul, which
quantizes the activations too) that compute differently, and ORT 1.31 refuses some FP8 and INT4
activation models outright (its QDQ rewrites produce a float8 MaxPool / QGemm, or fail on a float8
zero point in the Clip+QuantizeLinear fusion).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from bitsmith.errors import OutputError, UnsupportedError, UsageError
from bitsmith.formats import FP4_FORMATS, dynamic_spec, format_info, quantize
from bitsmith.ir import Graph, Node, QuantSpec, verify
from bitsmith.ops import OPS

MIN_OPSET = 17          # LayerNormalization
DEFAULT_OPSET = 21      # INT4/UINT4/INT16 and blocked QDQ
FP4_OPSET = 23          # FLOAT4E2M1
ORT_VERSION_CHECKED = "1.31"

# format -> (ml_dtypes / numpy element type of the stored codes, lowest opset that has it in Q/DQ)
ELEMENT_TYPES: dict[str, tuple[type, int]] = {
    "int8": (np.int8, 13), "uint8": (np.uint8, 13), "int16": (np.int16, 21), "int7": (np.int8, 13),
    "int4": (ml_dtypes.int4, 21), "uint4": (ml_dtypes.uint4, 21),
    "fp8_e4m3": (ml_dtypes.float8_e4m3fn, 19), "fp8_e5m2": (ml_dtypes.float8_e5m2, 19),
    "mxfp8": (ml_dtypes.float8_e4m3fn, 21),
    "fp4_e2m1": (ml_dtypes.float4_e2m1fn, FP4_OPSET), "mxfp4": (ml_dtypes.float4_e2m1fn, FP4_OPSET),
    "nvfp4": (ml_dtypes.float4_e2m1fn, FP4_OPSET),
}
BLOCKED_QDQ_OPSET = 21
OP_OPSETS = {"Gelu": 20}  # ops newer than MIN_OPSET


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def export_onnx(graph: Graph, path: str | Path | None = None, opset: int | None = None) -> onnx.ModelProto:
    """The graph as an ONNX model with QDQ nodes for its QuantSpecs; written to `path` if given.

    `opset` defaults to the lowest opset >= 21 that expresses the graph (23 when it holds FP4); an
    explicit opset too low for an op or a format is a UsageError. The model passes
    onnx.checker.check_model(full_check=True) before it is returned.
    """
    verify(graph, OPS)
    needed = required_opset(graph)
    if opset is None:
        opset = max(DEFAULT_OPSET, needed)
    if opset < needed:
        raise UsageError(f"export_onnx: graph {graph.name!r} needs ONNX opset {needed} or later "
                         f"({_opset_reason(graph, needed)}); pass opset={needed}")
    if opset > onnx.defs.onnx_opset_version():
        raise UsageError(f"export_onnx: opset {opset} is newer than this onnx package knows "
                         f"({onnx.defs.onnx_opset_version()})")
    model = _Exporter(graph, opset).run()
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        _save(model, Path(path))
    return model


def required_opset(graph: Graph) -> int:
    """The lowest opset that expresses every op and quantization format of `graph`."""
    needed = [MIN_OPSET] + [OP_OPSETS.get(node.op, MIN_OPSET) for node in graph.nodes]
    for value in graph.values.values():
        if value.quant is not None:
            needed.append(_spec_opset(value.quant))
    return max(needed)


def ort_runnable(graph: Graph) -> tuple[bool, str]:
    """(True, "") when ONNX Runtime 1.31's CPU provider can run export_onnx(graph); else
    (False, the reason, naming the formats and values at fault)."""
    dynamic = _block_activations(graph)
    if dynamic:
        return False, (f"block-scaled activations ({_listing(dynamic)}) compute their scales at run time; "
                       "ONNX has no operator for that, so export_onnx refuses the graph")
    fp4: dict[str, list[str]] = {}
    for name, value in graph.values.items():
        if value.quant is not None and value.quant.format in FP4_FORMATS:
            fp4.setdefault(value.quant.format, []).append(name)
    if fp4:
        formats = ", ".join(f"{fmt} ({_listing(names)})" for fmt, names in sorted(fp4.items()))
        return False, (f"FP4 E2M1 values: {formats}. The export stores them as FLOAT4E2M1 + DequantizeLinear "
                       f"(opset {FP4_OPSET}), which ONNX Runtime {ORT_VERSION_CHECKED} does not implement "
                       "(no CPU kernel for QuantizeLinear/DequantizeLinear on float4e2m1)")
    return True, ""


# ---------------------------------------------------------------------------------------------
# Opset and format checks
# ---------------------------------------------------------------------------------------------
def _spec_opset(spec: QuantSpec) -> int:
    if spec.format not in ELEMENT_TYPES:
        raise UnsupportedError(f"export_onnx: no ONNX element type for format {spec.format!r}")
    opset = ELEMENT_TYPES[spec.format][1]
    return max(opset, BLOCKED_QDQ_OPSET) if spec.granularity == "block" else opset


def _opset_reason(graph: Graph, needed: int) -> str:
    ops = sorted({n.op for n in graph.nodes if OP_OPSETS.get(n.op, 0) == needed})
    formats = sorted({v.quant.format + ("/block" if v.quant.granularity == "block" else "")
                      for v in graph.values.values() if v.quant is not None and _spec_opset(v.quant) == needed})
    return ", ".join([f"op {o}" for o in ops] + [f"format {f}" for f in formats])


def _block_activations(graph: Graph) -> list[str]:
    return [name for name, value in graph.values.items()
            if value.quant is not None and value.quant.granularity == "block" and name not in graph.constants]


def _listing(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(n) for n in names[:shown]) + more


def _save(model: onnx.ModelProto, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(model, str(path))
    except OSError as exc:
        raise OutputError(f"export_onnx: cannot write {str(path)!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# The exporter
# ---------------------------------------------------------------------------------------------
def _tensor_type(dtype: str) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class _Exporter:
    def __init__(self, graph: Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.taken = set(graph.values) | {n.name for n in graph.nodes}
        self.alias: dict[str, str] = {}  # IR value -> the ONNX name its consumers read

    def run(self) -> onnx.ModelProto:
        dynamic = _block_activations(self.graph)
        if dynamic:
            raise UnsupportedError(f"export_onnx: block-scaled activations ({_listing(dynamic)}) compute their "
                                   "scales from the data at run time; ONNX has no operator for that. Quantize "
                                   "activations per tensor or per channel.")
        for name, array in self.graph.constants.items():
            self._constant(name, array)
        for name in self.graph.inputs:
            self._graph_input(name)
        for node in self.graph.nodes:
            self._node(node)
        return self._model()

    # -- names and tensors ----------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def ref(self, name: str) -> str:
        return self.alias.get(name, name) if name else ""

    def initializer(self, base: str, array: np.ndarray, exact_name: bool = False) -> str:
        name = base if exact_name else self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, base: str, values: list[int]) -> str:
        return self.initializer(base, np.asarray(values, np.int64))

    def emit(self, op: str, inputs: list[str], outputs: list[str], name: str | None = None, **attrs) -> None:
        while inputs and not inputs[-1]:
            inputs = inputs[:-1]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name or self.fresh(f"{outputs[0]}_{op}"),
                                           **attrs))

    # -- constants and inputs -------------------------------------------------------------------
    def _constant(self, name: str, array: np.ndarray) -> None:
        spec = self.graph.values[name].quant
        if spec is None:
            self.initializer(name, array, exact_name=True)
            return
        if spec.dynamic:
            spec = dynamic_spec(array)
        codes: np.ndarray = quantize(array, spec).astype(ELEMENT_TYPES[spec.format][0])
        stored = self.initializer(f"{name}_quantized", codes)
        scale = self._scale_input(name, spec)
        self.emit("DequantizeLinear", [stored, scale, self._zero_point(name, spec)], [name], **_qdq_attrs(spec))

    def _scale_input(self, name: str, spec: QuantSpec) -> str:
        """The float32 scale DequantizeLinear multiplies by; NVFP4: its E4M3 block scales
        dequantized by the per-tensor scale (exactly formats.effective_scale)."""
        scale = spec.scale.reshape(()) if spec.granularity == "tensor" else spec.scale
        if spec.tensor_scale is None:
            return self.initializer(f"{name}_scale", scale.astype(np.float32))
        block = self.initializer(f"{name}_block_scale", scale.astype(ml_dtypes.float8_e4m3fn))
        tensor = self.initializer(f"{name}_tensor_scale", np.asarray(spec.tensor_scale, np.float32))
        out = self.fresh(f"{name}_scale")
        self.emit("DequantizeLinear", [block, tensor], [out])
        return out

    def _zero_point(self, name: str, spec: QuantSpec) -> str:
        zero_point = spec.zero_point.reshape(()) if spec.granularity == "tensor" else spec.zero_point
        return self.initializer(f"{name}_zero_point", zero_point.astype(ELEMENT_TYPES[spec.format][0]))

    def _graph_input(self, name: str) -> None:
        spec = self.graph.values[name].quant
        if spec is not None:
            self.alias[name] = self.fresh(f"{name}_qdq")
            self._qdq(name, self.alias[name], spec)

    def _qdq(self, source: str, target: str, spec: QuantSpec) -> None:
        """QuantizeLinear -> DequantizeLinear from `source` to `target` (saturating for floats);
        DynamicQuantizeLinear -> DequantizeLinear for a dynamic spec."""
        if spec.dynamic:
            codes, scale, zero_point = (self.fresh(f"{target}_{part}") for part in ("quantized", "scale", "zero_point"))
            self.emit("DynamicQuantizeLinear", [source], [codes, scale, zero_point])
            self.emit("DequantizeLinear", [codes, scale, zero_point], [target])
            return
        scale = self._scale_input(target, spec)
        zero_point = self._zero_point(target, spec)
        codes = self.fresh(f"{target}_quantized")
        attrs = _qdq_attrs(spec)
        q_attrs = dict(attrs, saturate=1) if format_info(spec.format).is_float else attrs
        self.emit("QuantizeLinear", [source, scale, zero_point], [codes], **q_attrs)
        self.emit("DequantizeLinear", [codes, scale, zero_point], [target], **attrs)

    # -- nodes ----------------------------------------------------------------------------------
    def _node(self, node: Node) -> None:
        emitter = _EMITTERS.get(node.op, _same)
        extra, attrs = emitter(self, node)
        inputs = [self.ref(node.inputs[0])] + extra if extra is not None else [self.ref(i) for i in node.inputs]
        outputs = []
        for out in node.outputs:
            spec = self.graph.values[out].quant
            outputs.append(out if spec is None else self.fresh(f"{out}_float"))
        self.emit(node.op, inputs, outputs, name=node.name, **attrs)
        for out, produced in zip(node.outputs, outputs):
            spec = self.graph.values[out].quant
            if produced != out and spec is not None:
                self._qdq(produced, out, spec)

    def value_info(self, name: str, onnx_name: str | None = None) -> onnx.ValueInfoProto:
        value = self.graph.values[name]
        return helper.make_tensor_value_info(onnx_name or name, _tensor_type(value.dtype), list(value.shape))

    def _model(self) -> onnx.ModelProto:
        constants = self.graph.constants
        inputs = [self.value_info(n) for n in self.graph.inputs]
        outputs = [self.value_info(n) for n in self.graph.outputs]
        boundary = set(self.graph.inputs) | set(self.graph.outputs)
        inner = [self.value_info(n) for n in self.graph.values if n not in constants and n not in boundary]
        body = helper.make_graph(self.nodes, self.graph.name, inputs, outputs, self.initializers, value_info=inner)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(body, opset_imports=opsets, producer_name="bitsmith",
                                  ir_version=helper.find_min_ir_version_for(opsets))
        recipe = self.graph.metadata.get("recipe")
        if recipe:
            helper.set_model_props(model, {"bitsmith.recipe": str(recipe)})
        return model


def _qdq_attrs(spec: QuantSpec) -> dict:
    if spec.granularity == "tensor":
        return {}
    if spec.granularity == "channel":
        return {"axis": int(spec.axis or 0)}
    return {"axis": int(spec.axis or 0), "block_size": int(spec.block_size or 0)}


# ---------------------------------------------------------------------------------------------
# Per-op emitters: (operands after the first input, or None to keep the IR inputs; ONNX attributes)
# ---------------------------------------------------------------------------------------------
Emitted = tuple[list[str] | None, dict]
Emitter = Callable[[_Exporter, Node], Emitted]


def _same(ex: _Exporter, node: Node) -> Emitted:
    return None, dict(node.attrs)


def _cast(ex: _Exporter, node: Node) -> Emitted:
    return None, {"to": _tensor_type(node.attrs["to"])}


def _operand_scalar(ex: _Exporter, node: Node, value: float, what: str) -> str:
    """A scalar of the first input's dtype (Clip bounds, Pad's constant value)."""
    dtype = np.dtype(ex.graph.values[node.inputs[0]].dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        value = min(max(value, info.min), info.max)
    return ex.initializer(f"{node.name}_{what}", np.array(value, dtype))


def _clip(ex: _Exporter, node: Node) -> Emitted:
    lo, hi = node.attrs["min"], node.attrs["max"]
    return [_operand_scalar(ex, node, lo, "min") if lo != -math.inf else "",
            _operand_scalar(ex, node, hi, "max") if hi != math.inf else ""], {}


def _reshape(ex: _Exporter, node: Node) -> Emitted:
    shape = node.attrs["shape"]
    return [ex.ints(f"{node.name}_shape", shape)], ({"allowzero": 1} if 0 in shape else {})


def _slice(ex: _Exporter, node: Node) -> Emitted:
    """The IR's clamped ends: -1 with a negative step means "past index 0", which ONNX spells as
    any end below -dim (a plain -1 would be the last element)."""
    a = node.attrs
    ends = [e if (step > 0 or e >= 0) else np.iinfo(np.int64).min for e, step in zip(a["ends"], a["steps"])]
    return [ex.ints(f"{node.name}_{k}", v) for k, v in
            (("starts", a["starts"]), ("ends", ends), ("axes", a["axes"]), ("steps", a["steps"]))], {}


def _resize(ex: _Exporter, node: Node) -> Emitted:
    """Sizes when the IR's coordinate scales are sizes / input (what ONNX derives from sizes), else
    the scales (whose floor(input * scale) are the IR's sizes)."""
    a = node.attrs
    in_shape = ex.graph.values[node.inputs[0]].shape
    attrs = {k: a[k] for k in ("mode", "coordinate_transformation_mode", "nearest_mode")}
    if all(s == o / i for s, o, i in zip(a["scales"], a["sizes"], in_shape)):
        return ["", "", ex.ints(f"{node.name}_sizes", a["sizes"])], attrs
    scales = np.asarray(a["scales"], np.float32)
    if [int(math.floor(i * float(s))) for i, s in zip(in_shape, scales)] != list(a["sizes"]):
        raise UnsupportedError(f"export_onnx: Resize node {node.name!r} has sizes {a['sizes']} and scales "
                               f"{a['scales']} that no ONNX Resize operand reproduces")
    return ["", ex.initializer(f"{node.name}_scales", scales)], attrs


def _pad(ex: _Exporter, node: Node) -> Emitted:
    operands = [ex.ints(f"{node.name}_pads", node.attrs["pads"])]
    if node.attrs["mode"] == "constant":
        operands.append(_operand_scalar(ex, node, node.attrs["value"], "value"))
    return operands, {"mode": node.attrs["mode"]}


def _reduce(ex: _Exporter, node: Node) -> Emitted:
    axes, keepdims = node.attrs["axes"], int(node.attrs["keepdims"])
    if ex.opset >= 18 or node.op == "ReduceSum":
        return [ex.ints(f"{node.name}_axes", axes)], {"keepdims": keepdims}
    return None, {"axes": axes, "keepdims": keepdims}


def _operand(attr: str, attrs: tuple[str, ...] = ()) -> Emitter:
    """Ops whose attribute `attr` is an int64 operand from opset 13 on (the others stay attributes)."""
    def emit(ex: _Exporter, node: Node) -> Emitted:
        return [ex.ints(f"{node.name}_{attr}", node.attrs[attr])], {k: node.attrs[k] for k in attrs}
    return emit


_EMITTERS: dict[str, Emitter] = {
    "Cast": _cast, "Clip": _clip, "Reshape": _reshape, "Slice": _slice, "Resize": _resize, "Pad": _pad,
    "ReduceMean": _reduce, "ReduceSum": _reduce, "ReduceMax": _reduce, "ReduceMin": _reduce,
    "Squeeze": _operand("axes"), "Unsqueeze": _operand("axes"), "Expand": _operand("shape"),
    "Split": _operand("split", ("axis",)), "Tile": _operand("repeats"),
}
