"""ONNX -> bitsmith IR.

Every ONNX node becomes zero or more IR nodes with normalized attributes (see bitsmith.ops): defaults
filled in, static operands turned into attributes, auto_pad resolved, Gemm/Flatten rewritten. Nodes
whose inputs are all constant are evaluated right away by the reference interpreter (constant
folding at import), which removes the Shape/Gather/Concat arithmetic exporters emit around Reshape.
Shapes are inferred by running each new node's kernel on torch's "meta" device, so every value has
a static shape once the caller fixes the dynamic input dimensions (`input_shapes`).

Before converting anything, the importer lists every op it cannot convert and raises ONE
UnsupportedError naming each op type, the nodes using it and the opset.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..errors import ModelError, UnsupportedError, UsageError
from ..interpreter import DTYPE_NAMES, TORCH_DTYPES, run_node
from ..ir import DTYPES, Graph, Node, verify
from ..ops import OPS

MIN_OPSET, MAX_OPSET = 11, 23
CONTROL_FLOW = {"If", "Loop", "Scan"}
Converter = Callable[["_Importer", onnx.NodeProto], None]
CONVERTERS: dict[str, Converter] = {}


def import_onnx(model: str | Path | bytes | onnx.ModelProto,
                input_shapes: dict[str, tuple[int, ...]] | None = None,
                name: str | None = None) -> Graph:
    """Import an ONNX model (path, serialized bytes or ModelProto) into a verified IR graph.

    `input_shapes` fixes dynamic input dimensions (the IR's shapes are static); a dynamic dimension
    without a hint is an error that names the input and the dimension.
    """
    proto, source = _load(model)
    importer = _Importer(proto, dict(input_shapes or {}), name or _default_name(proto, source), source)
    return importer.run()


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------
def _load(model: str | Path | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, "<ModelProto>"
    if isinstance(model, bytes):
        return _parse(model, "<bytes>"), "<bytes>"
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model file {str(path)!r} does not exist or is not a file")
    proto = _parse(path.read_bytes(), str(path))
    if any(t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        onnx.load_external_data_for_model(proto, str(path.parent))
    return proto, str(path)


def _parse(blob: bytes, source: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(blob)
    except Exception as exc:  # protobuf raises DecodeError and, on some inputs, other errors
        raise ModelError(f"{source} is not a valid ONNX file (protobuf parsing failed: {exc}); "
                         "is it truncated or another file type?") from None
    if proto.ir_version <= 0 or not proto.graph.node:
        raise ModelError(f"{source} does not contain an ONNX model (ir_version={proto.ir_version}, "
                         f"{len(proto.graph.node)} nodes); check that it is an .onnx file")
    return proto


def _default_name(proto: onnx.ModelProto, source: str) -> str:
    if source.startswith("<"):
        return proto.graph.name or "model"
    return Path(source).stem


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def _unsupported_ops(proto: onnx.ModelProto, opset: int) -> list[str]:
    """One line per unsupported op type: 'If (opset 16): nodes If_0, If_3'."""
    found: dict[tuple[str, str], list[str]] = {}
    for i, node in enumerate(proto.graph.node):
        domain = node.domain or ""
        if domain not in ("", "ai.onnx") or node.op_type not in CONVERTERS:
            key = (domain, node.op_type)
            found.setdefault(key, []).append(node.name or f"#{i}")
    lines = []
    for (domain, op), names in sorted(found.items()):
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        where = f"domain {domain!r}" if domain else f"opset {opset}"
        note = " (control flow)" if op in CONTROL_FLOW else ""
        lines.append(f"{op}{note} ({where}): nodes {shown}")
    return lines


# ---------------------------------------------------------------------------------------------
# The importer
# ---------------------------------------------------------------------------------------------
class _Importer:
    def __init__(self, proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], name: str, source: str):
        self.proto = proto
        self.source = source
        self.opset = _default_opset(proto)
        self.input_shapes = input_shapes
        self.graph = Graph(name=name, metadata={"source": source, "opset": self.opset,
                                                  "producer": proto.producer_name})
        self.alias: dict[str, str] = {}

    # -- driver --------------------------------------------------------------------------------
    def run(self) -> Graph:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise UnsupportedError(
                f"{self.source}: ONNX opset {self.opset} is outside the supported range {MIN_OPSET}-{MAX_OPSET}; "
                "convert it first with onnx.version_converter.convert_version(model, 17)")
        problems = _unsupported_ops(self.proto, self.opset)
        if problems:
            raise UnsupportedError(f"{self.source}: the model uses ops bitsmith cannot compile:\n  "
                                   + "\n  ".join(problems)
                                   + "\nRemove or replace them (e.g. export without control flow), or file an op request.")
        self._add_initializers()
        self._add_inputs()
        self._check_inputs_given()
        for index, node in enumerate(self.proto.graph.node):
            self.node_name = node.name or f"{node.op_type}_{index}"
            CONVERTERS[node.op_type](self, node)
        self._bind_outputs()
        self.graph.remove_unused()
        verify(self.graph, OPS)
        return self.graph

    def _bind_outputs(self) -> None:
        """Graph outputs keep the model's names, even when an Identity made them aliases."""
        produced = {o for n in self.graph.nodes for o in n.outputs}
        for output in self.proto.graph.output:
            name, source = output.name, self.resolve(output.name)
            if source != name and source in produced and source not in self.graph.outputs:
                self.graph.rename_value(source, name)
            elif source != name:
                self.node_name = f"output_{name}"
                self.emit("Reshape", [source], {"shape": list(self.graph.values[source].shape)}, [name])
            self.graph.outputs.append(name)

    def _add_initializers(self) -> None:
        for tensor in self.proto.graph.initializer:
            self.add_constant(tensor.name, numpy_helper.to_array(tensor))

    def _add_inputs(self) -> None:
        for value_info in self.proto.graph.input:
            if value_info.name in self.graph.constants:
                continue
            tensor_type = value_info.type.tensor_type
            dtype = self.np_dtype(tensor_type.elem_type, f"graph input {value_info.name!r}")
            shape = self._input_shape(value_info)
            self.graph.add_value(value_info.name, shape, dtype)
            self.graph.inputs.append(value_info.name)

    def _check_inputs_given(self) -> None:
        unknown = set(self.input_shapes) - set(self.graph.inputs)
        if unknown:
            raise UsageError(f"input_shapes names {sorted(unknown)}, but {self.source} has inputs {self.graph.inputs}")
        if not self.graph.inputs:
            raise ModelError(f"{self.source}: the model has no inputs (all its inputs are initializers); nothing to compile")

    def _input_shape(self, value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
        name = value_info.name
        dims = value_info.type.tensor_type.shape.dim
        declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        hint = self.input_shapes.get(name)
        if hint is None:
            dynamic = [i for i, d in enumerate(declared) if d is None or d <= 0]
            if dynamic or not value_info.type.tensor_type.HasField("shape"):
                labels = [dims[i].dim_param or "?" for i in dynamic]
                raise UsageError(
                    f"input {name!r} of {self.source} has dynamic dimensions {dynamic} ({', '.join(labels)}); "
                    f"give static shapes, e.g. input_shapes={{{name!r}: (1, ...)}} or --input-shape {name}=1x...")
            return tuple(int(d) for d in declared)  # type: ignore[arg-type]
        hint = tuple(int(d) for d in hint)
        if len(hint) != len(declared) or any(d not in (None, 0, h) and d > 0 for d, h in zip(declared, hint)):
            raise UsageError(f"input shape hint {hint} for {name!r} does not fit its declared shape "
                             f"{[d if d else dims[i].dim_param or '?' for i, d in enumerate(declared)]}")
        return hint

    # -- helpers for converters ----------------------------------------------------------------
    def np_dtype(self, elem_type: int, what: str) -> str:
        try:
            name = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
        except Exception:
            name = onnx.TensorProto.DataType.Name(elem_type)
        if name not in DTYPES:
            raise UnsupportedError(f"{self.source}: {what} has element type {name}, which bitsmith does not support")
        return name

    def add_constant(self, name: str, array: np.ndarray) -> None:
        if array.dtype.name not in DTYPES:
            raise UnsupportedError(f"{self.source}: constant {name!r} has element type {array.dtype.name}, "
                                   "which bitsmith does not support")
        self.graph.add_constant(name, array)

    def resolve(self, name: str) -> str:
        return self.alias.get(name, name)

    def inputs(self, node: onnx.NodeProto) -> list[str]:
        names = [self.resolve(n) for n in node.input]
        while names and not names[-1]:
            names.pop()
        return names

    def shape(self, name: str) -> tuple[int, ...]:
        return self.graph.values[self.resolve(name)].shape

    def const(self, name: str) -> np.ndarray | None:
        return self.graph.constants.get(self.resolve(name))

    def require_const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        array = self.const(node.input[index]) if index < len(node.input) and node.input[index] else None
        if array is None:
            raise UnsupportedError(
                f"node {self.node_name!r} ({node.op_type}): its {what} (input {index}) is computed at run time; "
                "bitsmith needs it static. Fix the input shapes (input_shapes=...) or fold it before export.")
        return array

    def optional_const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
        if index < len(node.input) and node.input[index]:
            return self.require_const(node, index, what)
        return None

    def fresh(self, base: str) -> str:
        return self.graph.fresh_name(base)

    def emit(self, op: str, inputs: list[str], attrs: dict[str, Any], outputs: list[str]) -> list[str]:
        """Add an IR node (or fold it into constants) and infer its outputs' types."""
        node = Node(op, self.fresh(self.node_name), inputs, outputs, attrs)
        if all(i in self.graph.constants for i in inputs if i):
            folded = run_node(node, [torch.from_numpy(np.array(self.graph.constants[i])) if i else None for i in inputs])
            for name, tensor in zip(outputs, folded):
                self.add_constant(name, tensor.numpy())
            return outputs
        for name, tensor in zip(outputs, self._infer(node)):
            self.graph.add_value(name, tuple(tensor.shape), DTYPE_NAMES[tensor.dtype])
        self.graph.nodes.append(node)
        return outputs

    def _infer(self, node: Node) -> list[torch.Tensor]:
        """Output tensors of `node` computed on the meta device (shapes only), or on zeros where a
        kernel has no meta implementation."""
        for device in ("meta", "cpu"):
            try:
                with torch.no_grad():
                    return run_node(node, [self._placeholder(i, device) for i in node.inputs])
            except (NotImplementedError, RuntimeError, IndexError, ValueError) as exc:
                error = exc
        shapes = [self.graph.values[i].type_str() for i in node.inputs if i]
        raise ModelError(f"node {self.node_name!r} ({node.op}) cannot run on inputs {shapes}: {error}") from None

    def _placeholder(self, name: str, device: str) -> torch.Tensor | None:
        if not name:
            return None
        if name in self.graph.constants:
            return torch.from_numpy(np.array(self.graph.constants[name])).to(device)
        value = self.graph.values[name]
        return torch.zeros(value.shape, dtype=TORCH_DTYPES[value.dtype], device=device)

    def emit_same(self, node: onnx.NodeProto, op: str, attrs: dict[str, Any] | None = None,
                  inputs: list[str] | None = None) -> None:
        self.emit(op, self.inputs(node) if inputs is None else inputs, attrs or {}, [node.output[0]])


# ---------------------------------------------------------------------------------------------
# Converters
# ---------------------------------------------------------------------------------------------
def converter(*op_types: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for op in op_types:
            CONVERTERS[op] = fn
        return fn
    return register


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[attr.name] = value
    return out


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


_SIMPLE = ("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Where", "And", "Or", "Not",
           "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Erf", "Floor",
           "Ceil", "Round", "Sin", "Cos", "Softplus", "MatMul", "PRelu", "HardSwish",
           "GlobalAveragePool", "GlobalMaxPool", "Max", "Min")


@converter(*_SIMPLE)
def _simple(imp: _Importer, node: onnx.NodeProto) -> None:
    imp.emit_same(node, node.op_type)


@converter("Sum")
def _sum(imp: _Importer, node: onnx.NodeProto) -> None:
    names = imp.inputs(node)
    acc = names[0]
    for i, name in enumerate(names[1:]):
        out = node.output[0] if i == len(names) - 2 else imp.fresh(f"{node.output[0]}_sum{i}")
        acc = imp.emit("Add", [acc, name], {}, [out])[0]
    if len(names) == 1:
        imp.alias[node.output[0]] = acc


@converter("Identity", "Dropout")
def _identity(imp: _Importer, node: onnx.NodeProto) -> None:
    imp.alias[node.output[0]] = imp.resolve(node.input[0])


@converter("Constant")
def _constant(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    if "value" in a:
        array = numpy_helper.to_array(a["value"])
    elif "value_float" in a:
        array = np.array(a["value_float"], np.float32)
    elif "value_floats" in a:
        array = np.array(a["value_floats"], np.float32)
    elif "value_int" in a:
        array = np.array(a["value_int"], np.int64)
    elif "value_ints" in a:
        array = np.array(a["value_ints"], np.int64)
    else:
        raise UnsupportedError(f"node {imp.node_name!r} (Constant): attribute {sorted(a)} is not supported")
    imp.add_constant(node.output[0], array)


@converter("Shape")
def _shape(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    shape = imp.shape(node.input[0])
    start, end = a.get("start", 0), a.get("end", len(shape))
    imp.add_constant(node.output[0], np.array(shape[start:end], np.int64))


@converter("Size")
def _size(imp: _Importer, node: onnx.NodeProto) -> None:
    imp.add_constant(node.output[0], np.array(math.prod(imp.shape(node.input[0])), np.int64))


@converter("ConstantOfShape")
def _constant_of_shape(imp: _Importer, node: onnx.NodeProto) -> None:
    shape = imp.require_const(node, 0, "shape")
    value = attrs_of(node).get("value")
    fill = numpy_helper.to_array(value).reshape(-1)[0] if value is not None else np.float32(0)
    imp.add_constant(node.output[0], np.full(tuple(int(d) for d in shape), fill, dtype=np.asarray(fill).dtype))


@converter("Range")
def _range(imp: _Importer, node: onnx.NodeProto) -> None:
    start, limit, delta = (imp.require_const(node, i, w) for i, w in enumerate(("start", "limit", "delta")))
    imp.add_constant(node.output[0], np.arange(start, limit, delta).astype(start.dtype))


@converter("Cast")
def _cast(imp: _Importer, node: onnx.NodeProto) -> None:
    to = imp.np_dtype(attrs_of(node)["to"], f"Cast node {imp.node_name!r}")
    imp.emit_same(node, "Cast", {"to": to})


@converter("Clip")
def _clip(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    if imp.opset < 11:
        lo, hi = a.get("min", -math.inf), a.get("max", math.inf)
    else:
        lo_c = imp.optional_const(node, 1, "min")
        hi_c = imp.optional_const(node, 2, "max")
        lo = -math.inf if lo_c is None else float(lo_c.reshape(-1)[0])
        hi = math.inf if hi_c is None else float(hi_c.reshape(-1)[0])
    imp.emit("Clip", [imp.resolve(node.input[0])], {"min": float(lo), "max": float(hi)}, [node.output[0]])


@converter("LeakyRelu")
def _leaky_relu(imp: _Importer, node: onnx.NodeProto) -> None:
    imp.emit_same(node, "LeakyRelu", {"alpha": float(attrs_of(node).get("alpha", 0.01))})


@converter("Elu")
def _elu(imp: _Importer, node: onnx.NodeProto) -> None:
    imp.emit_same(node, "Elu", {"alpha": float(attrs_of(node).get("alpha", 1.0))})


@converter("HardSigmoid")
def _hard_sigmoid(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    imp.emit_same(node, "HardSigmoid", {"alpha": float(a.get("alpha", 0.2)), "beta": float(a.get("beta", 0.5))})


@converter("Gelu")
def _gelu(imp: _Importer, node: onnx.NodeProto) -> None:
    imp.emit_same(node, "Gelu", {"approximate": attrs_of(node).get("approximate", "none")})


# -- convolution and pooling --------------------------------------------------------------------
def _auto_pads(auto_pad: str, in_spatial: tuple[int, ...], kernel: list[int], strides: list[int],
               dilations: list[int], pads: list[int] | None) -> list[int]:
    rank = len(in_spatial)
    if auto_pad in ("NOTSET", ""):
        return list(pads) if pads else [0] * (2 * rank)
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    begins, ends = [], []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _spatial_attrs(imp: _Importer, node: onnx.NodeProto, kernel: list[int]) -> dict[str, Any]:
    a = attrs_of(node)
    rank = len(kernel)
    strides = list(a.get("strides", [1] * rank))
    dilations = list(a.get("dilations", [1] * rank))
    in_spatial = imp.shape(node.input[0])[2:]
    pads = _auto_pads(a.get("auto_pad", "NOTSET"), in_spatial, kernel, strides, dilations, a.get("pads"))
    return {"strides": strides, "dilations": dilations, "pads": pads}


@converter("Conv")
def _conv(imp: _Importer, node: onnx.NodeProto) -> None:
    w_shape = imp.shape(node.input[1])
    attrs = _spatial_attrs(imp, node, list(w_shape[2:]))
    attrs["group"] = int(attrs_of(node).get("group", 1))
    imp.emit_same(node, "Conv", attrs)


@converter("ConvTranspose")
def _conv_transpose(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    w_shape = imp.shape(node.input[1])
    kernel = list(w_shape[2:])
    rank = len(kernel)
    strides = list(a.get("strides", [1] * rank))
    dilations = list(a.get("dilations", [1] * rank))
    output_padding = list(a.get("output_padding", [0] * rank))
    pads = list(a.get("pads", [0] * (2 * rank)))
    auto_pad = a.get("auto_pad", "NOTSET")
    if "output_shape" in a or auto_pad not in ("NOTSET", "VALID", ""):
        in_spatial = imp.shape(node.input[0])[2:]
        targets = list(a["output_shape"])[-rank:] if "output_shape" in a else [n * s for n, s in zip(in_spatial, strides)]
        pads = []
        begins, ends = [], []
        for n, k, s, d, op, t in zip(in_spatial, kernel, strides, dilations, output_padding, targets):
            total = s * (n - 1) + op + (k - 1) * d + 1 - t
            small, large = total // 2, total - total // 2
            begins.append(large if auto_pad == "SAME_LOWER" else small)
            ends.append(small if auto_pad == "SAME_LOWER" else large)
        pads = begins + ends
    attrs = {"strides": strides, "dilations": dilations, "pads": pads, "output_padding": output_padding,
             "group": int(a.get("group", 1))}
    imp.emit_same(node, "ConvTranspose", attrs)


@converter("MaxPool", "AveragePool")
def _pool(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedError(f"node {imp.node_name!r} (MaxPool): the indices output is not supported")
    kernel = list(a["kernel_shape"])
    attrs = _spatial_attrs(imp, node, kernel)
    attrs["kernel_shape"] = kernel
    attrs["ceil_mode"] = int(a.get("ceil_mode", 0))
    if node.op_type == "AveragePool":
        del attrs["dilations"]
        attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
    imp.emit_same(node, node.op_type, attrs)


@converter("Gemm")
def _gemm(imp: _Importer, node: onnx.NodeProto) -> None:
    """Y = alpha * A' B' + beta * C, emitted as MatMul (+ Add), B' and scaling folded when constant."""
    a = attrs_of(node)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    names = imp.inputs(node)
    out = node.output[0]
    lhs = names[0]
    if a.get("transA", 0):
        lhs = imp.emit("Transpose", [lhs], {"perm": [1, 0]}, [imp.fresh(f"{out}_At")])[0]
    rhs = names[1]
    if a.get("transB", 0):
        rhs = imp.emit("Transpose", [rhs], {"perm": [1, 0]}, [imp.fresh(f"{out}_Bt")])[0]
    if alpha != 1.0:
        scale = imp.fresh(f"{out}_alpha")
        imp.add_constant(scale, np.array(alpha, np.float32))
        rhs = imp.emit("Mul", [rhs, scale], {}, [imp.fresh(f"{out}_Bs")])[0]
    if len(names) < 3:
        imp.emit("MatMul", [lhs, rhs], {}, [out])
        return
    product = imp.emit("MatMul", [lhs, rhs], {}, [imp.fresh(f"{out}_mm")])[0]
    bias = names[2]
    if beta != 1.0:
        scale = imp.fresh(f"{out}_beta")
        imp.add_constant(scale, np.array(beta, np.float32))
        bias = imp.emit("Mul", [bias, scale], {}, [imp.fresh(f"{out}_Cs")])[0]
    imp.emit("Add", [product, bias], {}, [out])


# -- normalization and reductions ---------------------------------------------------------------
@converter("BatchNormalization")
def _batch_norm(imp: _Importer, node: onnx.NodeProto) -> None:
    imp.emit("BatchNormalization", imp.inputs(node)[:5], {"epsilon": float(attrs_of(node).get("epsilon", 1e-5))},
             [node.output[0]])


@converter("LayerNormalization")
def _layer_norm(imp: _Importer, node: onnx.NodeProto) -> None:
    if any(node.output[1:]):
        raise UnsupportedError(f"node {imp.node_name!r} (LayerNormalization): Mean/InvStdDev outputs are not supported")
    a = attrs_of(node)
    rank = len(imp.shape(node.input[0]))
    imp.emit_same(node, "LayerNormalization",
                  {"axis": _axis(int(a.get("axis", -1)), rank), "epsilon": float(a.get("epsilon", 1e-5))})


@converter("Softmax", "LogSoftmax")
def _softmax(imp: _Importer, node: onnx.NodeProto) -> None:
    shape = imp.shape(node.input[0])
    rank = len(shape)
    default = -1 if imp.opset >= 13 else 1
    axis = _axis(int(attrs_of(node).get("axis", default)), rank)
    if imp.opset >= 13 or axis == rank - 1:
        imp.emit_same(node, node.op_type, {"axis": axis})
        return
    # opset < 13: softmax over the flattened trailing dims [axis:]
    out = node.output[0]
    flat = [math.prod(shape[:axis]), math.prod(shape[axis:])]
    x2 = imp.emit("Reshape", [imp.resolve(node.input[0])], {"shape": flat}, [imp.fresh(f"{out}_2d")])[0]
    y2 = imp.emit(node.op_type, [x2], {"axis": 1}, [imp.fresh(f"{out}_sm")])[0]
    imp.emit("Reshape", [y2], {"shape": list(shape)}, [out])


def _reduce_axes(imp: _Importer, node: onnx.NodeProto, rank: int) -> list[int] | None:
    a = attrs_of(node)
    axes_from_input = imp.opset >= 18 or (node.op_type == "ReduceSum" and imp.opset >= 13)
    if axes_from_input:
        given = imp.optional_const(node, 1, "axes")
        axes = None if given is None else [int(x) for x in given.reshape(-1)]
    else:
        axes = a.get("axes")
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return None
        return list(range(rank))
    return sorted(_axis(int(x), rank) for x in axes)


@converter("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(imp: _Importer, node: onnx.NodeProto) -> None:
    rank = len(imp.shape(node.input[0]))
    axes = _reduce_axes(imp, node, rank)
    if axes is None:
        imp.alias[node.output[0]] = imp.resolve(node.input[0])
        return
    keepdims = int(attrs_of(node).get("keepdims", 1))
    imp.emit(node.op_type, [imp.resolve(node.input[0])], {"axes": axes, "keepdims": keepdims}, [node.output[0]])


@converter("ArgMax")
def _argmax(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    if a.get("select_last_index", 0):
        raise UnsupportedError(f"node {imp.node_name!r} (ArgMax): select_last_index=1 is not supported")
    rank = len(imp.shape(node.input[0]))
    imp.emit_same(node, "ArgMax", {"axis": _axis(int(a.get("axis", 0)), rank), "keepdims": int(a.get("keepdims", 1))})


# -- resizing -----------------------------------------------------------------------------------
@converter("Resize")
def _resize(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    shape = imp.shape(node.input[0])
    if a.get("exclude_outside", 0) or a.get("axes") or a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise UnsupportedError(f"node {imp.node_name!r} (Resize): exclude_outside / axes / keep_aspect_ratio_policy "
                               "are not supported")
    scales = imp.optional_const(node, 2, "scales")
    sizes = imp.optional_const(node, 3, "sizes")
    if sizes is not None and sizes.size:
        out_sizes = [int(s) for s in sizes]
        scale_list = [o / i for o, i in zip(out_sizes, shape)]
    elif scales is not None and scales.size:
        scale_list = [float(s) for s in scales]
        out_sizes = [int(math.floor(i * s)) for i, s in zip(shape, scale_list)]
    else:
        raise UnsupportedError(f"node {imp.node_name!r} (Resize): neither scales nor sizes is given")
    mode = a.get("mode", "nearest")
    if mode == "cubic":
        raise UnsupportedError(f"node {imp.node_name!r} (Resize): cubic mode is not supported (nearest, linear are)")
    attrs = {"sizes": out_sizes, "scales": scale_list, "mode": mode,
             "coordinate_transformation_mode": a.get("coordinate_transformation_mode", "half_pixel"),
             "nearest_mode": a.get("nearest_mode", "round_prefer_floor")}
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize":
        raise UnsupportedError(f"node {imp.node_name!r} (Resize): tf_crop_and_resize is not supported")
    imp.emit("Resize", [imp.resolve(node.input[0])], attrs, [node.output[0]])


# -- data movement ------------------------------------------------------------------------------
def _resolve_reshape(in_shape: tuple[int, ...], target: list[int], allowzero: bool) -> list[int]:
    out = [in_shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(in_shape) // known if known else 0
    return out


@converter("Reshape")
def _reshape(imp: _Importer, node: onnx.NodeProto) -> None:
    target = [int(d) for d in imp.require_const(node, 1, "target shape")]
    shape = _resolve_reshape(imp.shape(node.input[0]), target, bool(attrs_of(node).get("allowzero", 0)))
    if math.prod(shape) != math.prod(imp.shape(node.input[0])):
        raise ModelError(f"node {imp.node_name!r} (Reshape): cannot reshape {list(imp.shape(node.input[0]))} to {target}")
    imp.emit("Reshape", [imp.resolve(node.input[0])], {"shape": shape}, [node.output[0]])


@converter("Flatten")
def _flatten(imp: _Importer, node: onnx.NodeProto) -> None:
    shape = imp.shape(node.input[0])
    axis = _axis(int(attrs_of(node).get("axis", 1)), len(shape))
    imp.emit("Reshape", [imp.resolve(node.input[0])],
             {"shape": [math.prod(shape[:axis]), math.prod(shape[axis:])]}, [node.output[0]])


@converter("Transpose")
def _transpose(imp: _Importer, node: onnx.NodeProto) -> None:
    rank = len(imp.shape(node.input[0]))
    perm = attrs_of(node).get("perm", list(reversed(range(rank))))
    imp.emit_same(node, "Transpose", {"perm": [int(p) for p in perm]})


@converter("Concat")
def _concat(imp: _Importer, node: onnx.NodeProto) -> None:
    rank = len(imp.shape(node.input[0]))
    imp.emit_same(node, "Concat", {"axis": _axis(int(attrs_of(node)["axis"]), rank)})


@converter("Split")
def _split(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    shape = imp.shape(node.input[0])
    axis = _axis(int(a.get("axis", 0)), len(shape))
    given = imp.optional_const(node, 1, "split sizes") if imp.opset >= 13 else a.get("split")
    count = len(node.output)
    if given is not None and len(given):
        split = [int(s) for s in given]
    else:
        chunk = -(-shape[axis] // count)
        split = [min(chunk, shape[axis] - i * chunk) for i in range(count)]
    imp.emit("Split", [imp.resolve(node.input[0])], {"axis": axis, "split": split}, list(node.output))


def _clamp_slice(start: int, end: int, step: int, dim: int) -> tuple[int, int]:
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


@converter("Slice")
def _slice(imp: _Importer, node: onnx.NodeProto) -> None:
    shape = imp.shape(node.input[0])
    rank = len(shape)
    starts = [int(x) for x in imp.require_const(node, 1, "starts")]
    ends = [int(x) for x in imp.require_const(node, 2, "ends")]
    axes_c = imp.optional_const(node, 3, "axes")
    steps_c = imp.optional_const(node, 4, "steps")
    axes = [_axis(int(x), rank) for x in axes_c] if axes_c is not None else list(range(len(starts)))
    steps = [int(x) for x in steps_c] if steps_c is not None else [1] * len(starts)
    norm = [_clamp_slice(s, e, st, shape[ax]) for s, e, st, ax in zip(starts, ends, steps, axes)]
    imp.emit("Slice", [imp.resolve(node.input[0])],
             {"starts": [s for s, _ in norm], "ends": [e for _, e in norm], "axes": axes, "steps": steps},
             [node.output[0]])


def _axes_operand(imp: _Importer, node: onnx.NodeProto) -> list[int] | None:
    if imp.opset >= 13:
        given = imp.optional_const(node, 1, "axes")
        return None if given is None else [int(x) for x in given.reshape(-1)]
    axes = attrs_of(node).get("axes")
    return None if axes is None else [int(x) for x in axes]


@converter("Squeeze")
def _squeeze(imp: _Importer, node: onnx.NodeProto) -> None:
    shape = imp.shape(node.input[0])
    axes = _axes_operand(imp, node)
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else sorted(_axis(x, len(shape)) for x in axes)
    imp.emit("Squeeze", [imp.resolve(node.input[0])], {"axes": axes}, [node.output[0]])


@converter("Unsqueeze")
def _unsqueeze(imp: _Importer, node: onnx.NodeProto) -> None:
    rank = len(imp.shape(node.input[0]))
    axes = _axes_operand(imp, node) or []
    out_rank = rank + len(axes)
    imp.emit("Unsqueeze", [imp.resolve(node.input[0])], {"axes": sorted(_axis(x, out_rank) for x in axes)},
             [node.output[0]])


@converter("Expand")
def _expand(imp: _Importer, node: onnx.NodeProto) -> None:
    target = tuple(int(d) for d in imp.require_const(node, 1, "shape"))
    final = list(np.broadcast_shapes(imp.shape(node.input[0]), target))
    imp.emit("Expand", [imp.resolve(node.input[0])], {"shape": final}, [node.output[0]])


@converter("Gather")
def _gather(imp: _Importer, node: onnx.NodeProto) -> None:
    rank = len(imp.shape(node.input[0]))
    imp.emit_same(node, "Gather", {"axis": _axis(int(attrs_of(node).get("axis", 0)), rank)})


@converter("Pad")
def _pad(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    rank = len(imp.shape(node.input[0]))
    mode = a.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise UnsupportedError(f"node {imp.node_name!r} (Pad): mode {mode!r} is not supported")
    if imp.opset < 11:
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        pads = [int(x) for x in imp.require_const(node, 1, "pads")]
        value_c = imp.optional_const(node, 2, "constant_value")
        value = 0.0 if value_c is None else float(value_c.reshape(-1)[0])
        axes_c = imp.optional_const(node, 3, "axes")
        if axes_c is not None:
            axes = [_axis(int(x), rank) for x in axes_c]
            full = [0] * (2 * rank)
            for i, ax in enumerate(axes):
                full[ax], full[rank + ax] = pads[i], pads[len(axes) + i]
            pads = full
    imp.emit("Pad", [imp.resolve(node.input[0])], {"pads": pads, "mode": mode, "value": value}, [node.output[0]])


@converter("Tile")
def _tile(imp: _Importer, node: onnx.NodeProto) -> None:
    repeats = [int(x) for x in imp.require_const(node, 1, "repeats")]
    imp.emit("Tile", [imp.resolve(node.input[0])], {"repeats": repeats}, [node.output[0]])


@converter("DepthToSpace")
def _depth_to_space(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    imp.emit_same(node, "DepthToSpace", {"blocksize": int(a["blocksize"]), "mode": a.get("mode", "DCR")})
