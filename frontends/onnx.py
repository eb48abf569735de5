"""ONNX -> bitsmith IR.

Every ONNX node becomes zero or more IR nodes with normalized attributes (see bitsmith.ops): defaults
filled in, static operands turned into attributes, auto_pad resolved, Gemm/Flatten rewritten. Nodes
whose inputs are all constant are evaluated right away by the reference interpreter (constant
folding at import), which removes the Shape/Gather/Concat arithmetic exporters emit around Reshape.
Shapes are inferred by running each new node's kernel on torch's "meta" device, so every value has
a static shape once the caller fixes the dynamic input dimensions (`input_shapes`).

Before converting anything, the importer lists every op it cannot convert and raises ONE
UnsupportedError naming each op type, the nodes using it and the opset.

Pre-quantized models import into the same annotated IR that bitsmith's own quantization produces
(float values carrying QuantSpecs; see `_dequantize_linear` and the converters after it):
- QDQ: DequantizeLinear of a constant becomes a float constant holding the dequantized values,
  annotated with the spec (so fake-quantizing it changes nothing); QuantizeLinear -> DequantizeLinear
  annotates the quantized float value itself and both nodes disappear;
- QOperator: QLinearConv, QLinearMatMul (and ONNX Runtime's com.microsoft QGemm, QLinearAdd,
  QLinearGlobalAveragePool, QLinearSoftmax) become their float ops on annotated values, with
  dequantized weights and int32 biases;
- dynamic quantization: DynamicQuantizeLinear -> ConvInteger / MatMulInteger -> Cast -> Mul(x_scale *
  w_scale) becomes one float Conv / MatMul whose input carries a dynamic uint8 spec.
An integer tensor is only ever read through those patterns (or by layout ops that move codes
unchanged, such as MaxPool, Reshape or Flatten, whose outputs keep the spec); anything else is an
UnsupportedError naming the node.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn, cast

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..errors import BitsmithError, ModelError, UnsupportedError, UsageError
from ..formats import dequantize, format_info, param_shape
from ..interpreter import DTYPE_NAMES, TORCH_DTYPES, run_node
from ..ir import DTYPES, Graph, Node, QuantSpec, verify
from ..ops import OPS
from .onnx_validate import onnx_diagnosis, tensor_array, validate

MIN_OPSET, MAX_OPSET = 11, 23
CONTROL_FLOW = {"If", "Loop", "Scan"}
MAX_ELEMENTS = 2**31 - 1  # the largest tensor bitsmith accepts (8 GiB of float32); larger come from malformed shapes
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


def _check_size(shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """`shape`, if a tensor of that shape fits the IR (32-bit element indices)."""
    if math.prod(shape) > MAX_ELEMENTS:
        raise UnsupportedError(f"{what} has shape {list(shape)}: {math.prod(shape):,} elements, more than the "
                               f"{MAX_ELEMENTS:,} bitsmith supports in one tensor; check the model's shapes and "
                               "the input shapes given")
    return shape


def _default_name(proto: onnx.ModelProto, source: str) -> str:
    if source.startswith("<"):
        return proto.graph.name or "model"
    return Path(source).stem


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def _converter_key(node: onnx.NodeProto) -> str:
    """CONVERTERS key: the op type for the default domain, 'domain:op' for another (com.microsoft:QGemm)."""
    domain = node.domain or ""
    return node.op_type if domain in ("", "ai.onnx") else f"{domain}:{node.op_type}"


def _unsupported_ops(proto: onnx.ModelProto, opset: int) -> list[str]:
    """One line per unsupported op type: 'If (opset 16): nodes If_0, If_3'."""
    found: dict[tuple[str, str], list[str]] = {}
    for i, node in enumerate(proto.graph.node):
        domain = node.domain or ""
        if _converter_key(node) not in CONVERTERS:
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
        # pre-quantized models: integer tensors (ONNX name -> the annotated float value standing for
        # them), constants of element types the IR has no dtype for (int4, float8... codes and zero
        # points, read only by quantization ops), and the integer-op patterns matched before conversion
        self.codes: dict[str, _Codes] = {}
        self.raw: dict[str, np.ndarray] = {}
        self.integer_ops: dict[str, _IntegerMatch] = {}
        self.absorbed: set[int] = set()
        graph = proto.graph
        self.onnx_consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.onnx_consumers.setdefault(name, []).append(node)
        self.onnx_outputs = {o.name for o in graph.output}
        self.onnx_names = ({n for node in graph.node for n in (*node.input, *node.output)}
                           | {t.name for t in graph.initializer} | {v.name for v in graph.input} | self.onnx_outputs)

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
        validate(self.proto, self.source)
        self._add_initializers()
        self._add_inputs()
        self._check_inputs_given()
        _match_integer_ops(self)
        for index, node in enumerate(self.proto.graph.node):
            if index in self.absorbed:  # part of a DynamicQuantizeLinear -> ConvInteger/MatMulInteger pattern
                continue
            self.node_name = node.name or f"{node.op_type}_{index}"
            quantized = self._check_integer_inputs(node)
            self._convert(node)
            if quantized is not None:
                self._keep_codes(node, quantized)
        self._bind_outputs()
        self.graph.remove_unused()
        verify(self.graph, OPS)
        return self.graph

    def _convert(self, node: onnx.NodeProto) -> None:
        """Run the node's converter. A converter that fails with anything but a bitsmith error met
        operands or attributes that break the op's rules in a way the checks before conversion do not
        catch: ask ONNX's strict shape inference why, and report it as a ModelError naming the node."""
        try:
            CONVERTERS[_converter_key(node)](self, node)
        except BitsmithError:
            raise
        except Exception as exc:
            reason = onnx_diagnosis(self.proto, self.input_shapes)
            error = ModelError(
                f"{self.source}: node {self.node_name!r} ({node.op_type}) cannot be converted: "
                + (f"ONNX shape inference reports: {reason}" if reason else f"{type(exc).__name__}: {exc}")
                + ". Check the model with onnx.checker.check_model(model, full_check=True); if ONNX Runtime runs "
                "it, please report this as a bitsmith bug.")
            error.onnx_reason = reason
            raise error from exc

    def _bind_outputs(self) -> None:
        """Graph outputs keep the model's names, even when an Identity made them aliases."""
        produced = {o for n in self.graph.nodes for o in n.outputs}
        for output in self.proto.graph.output:
            if output.name in self.codes or output.name in self.raw:
                what = f"node {self.codes[output.name].node!r}" if output.name in self.codes else "a constant"
                raise UnsupportedError(f"{self.source}: graph output {output.name!r} is an integer tensor from {what}; "
                                       "bitsmith imports quantized tensors only where DequantizeLinear (or a QLinear "
                                       "op) reads them")
            name, source = output.name, self.resolve(output.name)
            if source != name and source in produced and source not in self.graph.outputs:
                self.graph.rename_value(source, name)
            elif source != name:
                self.node_name = f"output_{name}"
                self.emit("Reshape", [source], {"shape": list(self.graph.values[source].shape)}, [name])
            self.graph.outputs.append(name)

    def _add_initializers(self) -> None:
        for tensor in self.proto.graph.initializer:
            self.store_constant(tensor.name, tensor_array(tensor, f"initializer {tensor.name!r}", self.source))

    def _check_integer_inputs(self, node: onnx.NodeProto) -> list["_Codes"] | None:
        """Integer tensors may only be read by the converters that understand them (QUANTIZED_READERS),
        or by a code-preserving layout op (CODE_PRESERVING, data input only). Returns the quantized
        inputs of a code-preserving op, whose outputs then keep their spec (`_keep_codes`)."""
        key = _converter_key(node)
        for name in node.input:
            if name in self.raw and key not in QUANTIZED_READERS and key != "QuantizeLinear":
                raise UnsupportedError(f"{self.source}: constant {name!r} has element type {self.raw[name].dtype.name}, "
                                       f"which bitsmith supports only as quantized codes or zero points; node "
                                       f"{self.node_name!r} ({node.op_type}) reads it")
        quantized = [(i, name) for i, name in enumerate(node.input) if name in self.codes]
        if not quantized or key in QUANTIZED_READERS:
            return None
        data_inputs = range(len(node.input)) if key == "Concat" else (0,)
        if key in CODE_PRESERVING and all(i in data_inputs for i, _ in quantized):
            specs = [self.codes[name] for _, name in quantized]
            if all(c.spec.same_as(specs[0].spec) and not c.spec.dynamic for c in specs):
                return specs
        name = quantized[0][1]
        raise UnsupportedError(
            f"{self.source}: node {self.node_name!r} ({node.op_type}) reads {name!r}, the integer output of node "
            f"{self.codes[name].node!r}; bitsmith imports quantized tensors only where DequantizeLinear, a QLinear op "
            f"or a layout op that moves codes unchanged ({', '.join(CODE_PRESERVING)}) reads them")

    def _keep_codes(self, node: onnx.NodeProto, quantized: list["_Codes"]) -> None:
        """A layout op moved integer codes: its outputs are codes with the same spec."""
        spec = quantized[0].spec
        for out in node.output:
            if not out:
                continue
            name = self.resolve(out)
            value = self.graph.values[name]
            if value.quant is None:
                value.quant = dataclasses.replace(spec)
            self.codes[out] = _Codes(name, spec, quantized[0].node)

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
            return _check_size(tuple(int(d) for d in declared), f"{self.source}: input {name!r}")  # type: ignore[arg-type]
        hint = tuple(int(d) for d in hint)
        if any(d < 1 for d in hint):
            raise UsageError(f"input shape hint {hint} for {name!r} has a dimension below 1; give positive sizes")
        if len(hint) != len(declared) or any(d not in (None, 0, h) and d > 0 for d, h in zip(declared, hint)):
            raise UsageError(f"input shape hint {hint} for {name!r} does not fit its declared shape "
                             f"{[d if d else dims[i].dim_param or '?' for i, d in enumerate(declared)]}")
        return _check_size(hint, f"{self.source}: input {name!r}")

    # -- helpers for converters ----------------------------------------------------------------
    def np_dtype(self, elem_type: int, what: str) -> str:
        if elem_type not in onnx.TensorProto.DataType.values():
            raise ModelError(f"{self.source}: {what} has element type code {elem_type}, which is not an ONNX type")
        try:
            name = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
        except Exception:
            name = onnx.TensorProto.DataType.Name(elem_type)
        if name not in DTYPES:
            raise UnsupportedError(f"{self.source}: {what} has element type {name}, which bitsmith does not support")
        return name

    def store_constant(self, name: str, array: np.ndarray) -> None:
        """A constant: in the graph, or (int4, float8... codes and zero points, which only quantization
        ops read) aside."""
        if array.dtype.name in DTYPES:
            self.add_constant(name, array)
        else:
            self.raw[name] = array

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

    def require_vector(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        """A static 1-D operand (a shape, axes, pads, starts...), as the ONNX spec requires."""
        array = self.require_const(node, index, what)
        if array.ndim != 1:
            raise ModelError(f"node {self.node_name!r} ({node.op_type}): its {what} (input {index}) must be a 1-D "
                             f"tensor, not one of shape {list(array.shape)}; the model is malformed")
        return array

    def optional_vector(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
        if index < len(node.input) and node.input[index]:
            return self.require_vector(node, index, what)
        return None

    def fresh(self, base: str) -> str:
        return self.graph.fresh_name(base)

    def fresh_value(self, base: str) -> str:
        """A value name used neither in the graph nor anywhere in the ONNX model (so no later ONNX
        tensor can claim it)."""
        candidate, i = base, 0
        while True:
            name = self.graph.fresh_name(candidate)
            if name not in self.onnx_names:
                return name
            i += 1
            candidate = f"{base}_{i}"

    def annotate(self, node: onnx.NodeProto, name: str, spec: QuantSpec, copy_name: str) -> str:
        """The float value `name` (ONNX) quantized with `spec`: the value itself when the quantizer is
        its only reader, else a copy (an identity Reshape named `copy_name`), so that the model's
        other readers keep the unquantized value."""
        source = self.resolve(name)
        value = self.graph.values[source]
        if value.dtype != "float32":
            raise UnsupportedError(f"node {self.node_name!r} ({node.op_type}): it quantizes {name!r} of type "
                                   f"{value.dtype}; bitsmith imports quantization of float32 values only")
        readers = self.onnx_consumers.get(name, [])
        if source == name and len(readers) == 1 and name not in self.onnx_outputs and value.quant is None:
            value.quant = spec
            return source
        copy = self.emit("Reshape", [source], {"shape": list(value.shape)}, [self.fresh(copy_name)])[0]
        self.graph.values[copy].quant = spec
        return copy

    def emit(self, op: str, inputs: list[str], attrs: dict[str, Any], outputs: list[str]) -> list[str]:
        """Add an IR node (or fold it into constants) and infer its outputs' types."""
        node = Node(op, self.fresh(self.node_name), inputs, outputs, attrs)
        if all(i in self.graph.constants for i in inputs if i):
            shapes = self._run(node, "meta")  # sizes first: a malformed shape operand may ask for terabytes
            if not isinstance(shapes, Exception):
                self._check_sizes(node, shapes)
            folded = self._infer(node, devices=("cpu",))
            for name, tensor in zip(outputs, folded):
                self.add_constant(name, tensor.numpy())
            spec = self.graph.values[inputs[0]].quant if inputs and inputs[0] else None
            if op == "Transpose" and spec is not None:  # a dequantized weight keeps its spec (Gemm's transB)
                self.graph.values[outputs[0]].quant = _transposed_spec(spec, attrs["perm"])
            return outputs
        inferred = self._infer(node)
        self._check_sizes(node, inferred)
        for name, tensor in zip(outputs, inferred):
            self.graph.add_value(name, tuple(tensor.shape), DTYPE_NAMES[tensor.dtype])
        self.graph.nodes.append(node)
        return outputs

    def _run(self, node: Node, device: str) -> list[torch.Tensor] | Exception:
        try:
            with torch.no_grad():
                return run_node(node, [self._placeholder(i, device) for i in node.inputs])
        except (NotImplementedError, RuntimeError, IndexError, ValueError) as exc:
            return exc

    def _infer(self, node: Node, devices: tuple[str, ...] = ("meta", "cpu")) -> list[torch.Tensor]:
        """Output tensors of `node` computed on the meta device (shapes only), or on zeros where a
        kernel has no meta implementation (on the constants themselves when folding)."""
        for device in devices:
            result = self._run(node, device)
            if not isinstance(result, Exception):
                return result
        shapes = [self.graph.values[i].type_str() for i in node.inputs if i]
        raise ModelError(f"node {self.node_name!r} ({node.op}) cannot run on inputs {shapes}: {result}") from None

    def _check_sizes(self, node: Node, tensors: list[torch.Tensor]) -> None:
        for name, tensor in zip(node.outputs, tensors):
            _check_size(tuple(tensor.shape), f"node {self.node_name!r} ({node.op}): output {name!r}")

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
def converter(*op_types: str, domain: str = "") -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for op in op_types:
            CONVERTERS[f"{domain}:{op}" if domain else op] = fn
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
        array = tensor_array(a["value"], f"the value of Constant node {imp.node_name!r}", imp.source)
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
    imp.store_constant(node.output[0], array)


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
    shape = imp.require_vector(node, 0, "shape")
    value = attrs_of(node).get("value")
    fill = np.float32(0)
    if value is not None:
        fill_array = tensor_array(value, f"the value of ConstantOfShape node {imp.node_name!r}", imp.source)
        if fill_array.size != 1:
            raise ModelError(f"node {imp.node_name!r} (ConstantOfShape): its value must hold one element, "
                             f"not {list(fill_array.shape)}")
        fill = fill_array.reshape(-1)[0]
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ModelError(f"node {imp.node_name!r} (ConstantOfShape): negative dimension in shape {list(dims)}")
    _check_size(dims, f"node {imp.node_name!r} (ConstantOfShape): output {node.output[0]!r}")
    imp.add_constant(node.output[0], np.full(dims, fill, dtype=np.asarray(fill).dtype))


@converter("Range")
def _range(imp: _Importer, node: onnx.NodeProto) -> None:
    start, limit, delta = (imp.require_const(node, i, w) for i, w in enumerate(("start", "limit", "delta")))
    if start.size != 1 or limit.size != 1 or delta.size != 1 or delta.reshape(-1)[0] == 0:
        raise ModelError(f"node {imp.node_name!r} (Range): start, limit and delta must be scalars and delta non-zero")
    steps = (float(limit.reshape(-1)[0]) - float(start.reshape(-1)[0])) / float(delta.reshape(-1)[0])
    if not math.isfinite(steps):
        raise ModelError(f"node {imp.node_name!r} (Range): start, limit and delta must be finite")
    count = math.ceil(steps)
    _check_size((max(count, 0),), f"node {imp.node_name!r} (Range): output {node.output[0]!r}")
    arange: Any = np.arange  # numpy's stubs take Python scalars; 0-d arrays keep their dtype here
    imp.add_constant(node.output[0], arange(start, limit, delta).astype(start.dtype))


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


def _check_spatial_rank(imp: _Importer, node: onnx.NodeProto, *names: str) -> None:
    """Convolutions and pools take (N, C, spatial...) tensors with one to three spatial axes."""
    for name in names:
        rank = len(imp.shape(name))
        if not 3 <= rank <= 5:
            raise ModelError(f"node {imp.node_name!r} ({node.op_type}): {name!r} has rank {rank}; it needs rank 3 "
                             "to 5 (batch, channels and one to three spatial axes)")


@converter("Conv")
def _conv(imp: _Importer, node: onnx.NodeProto) -> None:
    _check_spatial_rank(imp, node, node.input[0], node.input[1])
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
    _check_spatial_rank(imp, node, node.input[0])
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
    _emit_softmax(imp, node.op_type, imp.resolve(node.input[0]), attrs_of(node).get("axis"), imp.opset, node.output[0])


def _emit_softmax(imp: _Importer, op: str, x: str, axis: int | None, opset: int, out: str) -> None:
    shape = imp.graph.values[x].shape
    rank = len(shape)
    default = -1 if opset >= 13 else 1
    axis = _axis(int(default if axis is None else axis), rank)
    if opset >= 13 or axis == rank - 1:
        imp.emit(op, [x], {"axis": axis}, [out])
        return
    # opset < 13: softmax over the flattened trailing dims [axis:]
    flat = [math.prod(shape[:axis]), math.prod(shape[axis:])]
    x2 = imp.emit("Reshape", [x], {"shape": flat}, [imp.fresh(f"{out}_2d")])[0]
    y2 = imp.emit(op, [x2], {"axis": 1}, [imp.fresh(f"{out}_sm")])[0]
    imp.emit("Reshape", [y2], {"shape": list(shape)}, [out])


def _reduce_axes(imp: _Importer, node: onnx.NodeProto, rank: int) -> list[int] | None:
    a = attrs_of(node)
    axes_from_input = imp.opset >= 18 or (node.op_type == "ReduceSum" and imp.opset >= 13)
    if axes_from_input:
        given = imp.optional_vector(node, 1, "axes")
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
    scales = imp.optional_vector(node, 2, "scales")
    sizes = imp.optional_vector(node, 3, "sizes")
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
    target = [int(d) for d in imp.require_vector(node, 1, "target shape")]
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
    given = imp.optional_vector(node, 1, "split sizes") if imp.opset >= 13 else a.get("split")
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
    starts = [int(x) for x in imp.require_vector(node, 1, "starts")]
    ends = [int(x) for x in imp.require_vector(node, 2, "ends")]
    axes_c = imp.optional_vector(node, 3, "axes")
    steps_c = imp.optional_vector(node, 4, "steps")
    axes = [_axis(int(x), rank) for x in axes_c] if axes_c is not None else list(range(len(starts)))
    steps = [int(x) for x in steps_c] if steps_c is not None else [1] * len(starts)
    norm = [_clamp_slice(s, e, st, shape[ax]) for s, e, st, ax in zip(starts, ends, steps, axes)]
    imp.emit("Slice", [imp.resolve(node.input[0])],
             {"starts": [s for s, _ in norm], "ends": [e for _, e in norm], "axes": axes, "steps": steps},
             [node.output[0]])


def _axes_operand(imp: _Importer, node: onnx.NodeProto) -> list[int] | None:
    if imp.opset >= 13:
        given = imp.optional_vector(node, 1, "axes")
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
    target = tuple(int(d) for d in imp.require_vector(node, 1, "shape"))
    final = list(np.broadcast_shapes(imp.shape(node.input[0]), target))
    imp.emit("Expand", [imp.resolve(node.input[0])], {"shape": final}, [node.output[0]])


@converter("Gather")
def _gather(imp: _Importer, node: onnx.NodeProto) -> None:
    shape = imp.shape(node.input[0])
    axis = _axis(int(attrs_of(node).get("axis", 0)), len(shape))
    if not 0 <= axis < len(shape):
        raise ModelError(f"node {imp.node_name!r} (Gather): axis {axis} is out of range for rank {len(shape)}")
    indices = imp.const(node.input[1])
    if indices is not None and indices.size and not (-shape[axis] <= indices.min() and indices.max() < shape[axis]):
        raise ModelError(f"node {imp.node_name!r} (Gather): indices {int(indices.min())}..{int(indices.max())} fall "
                         f"outside axis {axis} of size {shape[axis]}; the model is malformed")
    imp.emit_same(node, "Gather", {"axis": axis})


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
        pads = [int(x) for x in imp.require_vector(node, 1, "pads")]
        value_c = imp.optional_const(node, 2, "constant_value")
        value = 0.0 if value_c is None else float(value_c.reshape(-1)[0])
        axes_c = imp.optional_vector(node, 3, "axes")
        if axes_c is not None:
            axes = [_axis(int(x), rank) for x in axes_c]
            full = [0] * (2 * rank)
            for i, ax in enumerate(axes):
                full[ax], full[rank + ax] = pads[i], pads[len(axes) + i]
            pads = full
    imp.emit("Pad", [imp.resolve(node.input[0])], {"pads": pads, "mode": mode, "value": value}, [node.output[0]])


@converter("Tile")
def _tile(imp: _Importer, node: onnx.NodeProto) -> None:
    repeats = [int(x) for x in imp.require_vector(node, 1, "repeats")]
    imp.emit("Tile", [imp.resolve(node.input[0])], {"repeats": repeats}, [node.output[0]])


@converter("DepthToSpace")
def _depth_to_space(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    imp.emit_same(node, "DepthToSpace", {"blocksize": int(a["blocksize"]), "mode": a.get("mode", "DCR")})


# -- pre-quantized models -----------------------------------------------------------------------
# ONNX element type of quantized codes (numpy / ml_dtypes name) -> bitsmith format
ELEMENT_FORMATS = {"int8": "int8", "uint8": "uint8", "int16": "int16", "int4": "int4", "uint4": "uint4",
                   "float8_e4m3fn": "fp8_e4m3", "float8_e5m2": "fp8_e5m2", "float4_e2m1fn": "fp4_e2m1"}
# converters that read integer tensors themselves
QUANTIZED_READERS = ("DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                     "com.microsoft:QGemm", "com.microsoft:QLinearAdd", "com.microsoft:QLinearGlobalAveragePool",
                     "com.microsoft:QLinearSoftmax")
# layout ops that move integer codes unchanged, so the float values move the same way: their outputs are
# codes with the input's spec (MaxPool too: with a positive scale the largest code is the largest value)
CODE_PRESERVING = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice",
                   "Split", "Concat", "Gather", "DepthToSpace")
_INTEGER_PATTERN = ("DynamicQuantizeLinear -> {op} -> Cast(float) -> Mul(x_scale * w_scale), optionally with an "
                    "int32 bias Floor(b / (x_scale * w_scale)) added before the Cast (as onnx.quantize wrote it)")


@dataclass(frozen=True)
class _Codes:
    """An integer tensor of the ONNX model: the IR float value standing for its dequantized values
    (annotated with `spec`) and the node that produced it (for error messages)."""

    name: str
    spec: QuantSpec
    node: str


@dataclass(frozen=True)
class _IntegerMatch:
    """A matched ConvInteger / MatMulInteger pattern (see `_match_integer_ops`)."""

    weight_scale: str       # the constant operand of Mul(x_scale, w_scale)
    bias: str | None        # the float bias of onnx.quantize's int32 bias chain
    output: str             # the final Mul's output: the float result


def _transposed_spec(spec: QuantSpec, perm: list[int]) -> QuantSpec:
    if spec.granularity == "tensor":
        return dataclasses.replace(spec)
    axis = list(perm).index(cast(int, spec.axis))
    if spec.granularity == "channel":
        return dataclasses.replace(spec, axis=axis)
    return dataclasses.replace(spec, axis=axis, scale=spec.scale.transpose(perm), zero_point=spec.zero_point.transpose(perm))


def _format_of(imp: _Importer, node: onnx.NodeProto, element: str, what: str) -> str:
    fmt = ELEMENT_FORMATS.get(element)
    if fmt is None:
        raise UnsupportedError(f"node {imp.node_name!r} ({node.op_type}): {what} has element type {element}; bitsmith "
                               f"imports quantized {', '.join(ELEMENT_FORMATS)} (and int32 biases)")
    return fmt


def _spec(imp: _Importer, node: onnx.NodeProto, fmt: str, scale: np.ndarray, zero_point: np.ndarray | None,
          shape: tuple[int, ...], axis: int, block_size: int, what: str) -> QuantSpec:
    """The QuantSpec of ONNX (De)QuantizeLinear parameters for a tensor of `shape`: per tensor (a
    one-element scale), per axis (a 1-D scale along `axis`) or blocked (`block_size` > 0, opset 21)."""
    where = f"node {imp.node_name!r} ({node.op_type})"
    if scale.dtype != np.float32:
        raise UnsupportedError(f"{where}: {what} has a {scale.dtype.name} scale; bitsmith imports float32 scales")
    info = format_info(fmt)
    scale = np.array(scale, np.float32)  # (a copy: the model's arrays are read-only)
    zp = np.zeros(scale.shape, np.int32) if zero_point is None else np.asarray(zero_point).astype(np.int32)
    if info.is_float and np.any(zp != 0):
        raise UnsupportedError(f"{where}: {what} is {fmt} with a non-zero zero point")
    spec_axis: int | None
    if block_size:
        granularity, spec_axis = "block", _axis(axis, len(shape))
    elif scale.size == 1 and zp.size == 1 and scale.ndim <= 1:
        granularity, spec_axis, scale, zp = "tensor", None, scale.reshape(()), zp.reshape(())
    else:
        granularity, spec_axis = "channel", _axis(axis, len(shape))
        if not 0 <= spec_axis < len(shape) or scale.ndim > 1 or zp.ndim > 1 or {scale.size, zp.size} - {1, shape[spec_axis]}:
            raise ModelError(f"{where}: {what} has scale {list(scale.shape)} / zero point {list(zp.shape)}, which fit "
                             f"neither one quantizer nor one per index of axis {spec_axis} of a {list(shape)} tensor")
        scale, zp = np.broadcast_to(scale, (shape[spec_axis],)).copy(), np.broadcast_to(zp, (shape[spec_axis],)).copy()
    zero = 0 if (info.is_float or info.qmin < 0) else (int(info.qmax) + 1) // 2
    spec = QuantSpec(fmt, info.bits, granularity, spec_axis, block_size or None, scale, zp,
                     symmetric=bool(np.all(zp == zero)))
    expected = param_shape(tuple(shape), granularity, spec_axis, block_size or None)
    if spec.scale.shape != expected or spec.zero_point.shape != expected:
        raise ModelError(f"{where}: {what} has scale {list(scale.shape)} / zero point {list(zp.shape)}, but a "
                         f"{granularity} quantizer of a {list(shape)} tensor needs {list(expected)}")
    return spec


def _operand(imp: _Importer, node: onnx.NodeProto, index: int) -> np.ndarray | None:
    """Constant input `index` (graph constant or int4/float8 codes kept aside), None when omitted."""
    if index >= len(node.input) or not node.input[index]:
        return None
    name = node.input[index]
    if name in imp.raw:
        return imp.raw[name]
    return imp.require_const(node, index, f"input {name!r}")


def _qdq_spec(imp: _Importer, node: onnx.NodeProto, fmt: str, shape: tuple[int, ...]) -> QuantSpec:
    a = attrs_of(node)
    return _spec(imp, node, fmt, imp.require_const(node, 1, "scale"), _operand(imp, node, 2), shape,
                 int(a.get("axis", 1)), int(a.get("block_size", 0)), f"the quantizer of {node.input[0]!r}")


def _dequantized_name(imp: _Importer, name: str) -> str:
    return imp.fresh_value(name[:-len("_quantized")] if name.endswith("_quantized") else f"{name}_dequantized")


def _add_dequantized(imp: _Importer, name: str, codes: np.ndarray, spec: QuantSpec) -> str:
    """An annotated float constant holding the dequantized codes (so fake-quantizing it is exact)."""
    if spec.format in ("int4", "uint4"):
        codes = codes.astype(np.int8 if spec.format == "int4" else np.uint8)
    imp.add_constant(name, dequantize(codes, spec))
    imp.graph.values[name].quant = spec
    return name


def _claim_codes(imp: _Importer, node: onnx.NodeProto, name: str, spec: QuantSpec) -> None:
    """`node`'s output `name` is an integer tensor whose float value is the IR value `name`."""
    imp.graph.values[name].quant = spec
    imp.codes[name] = _Codes(name, spec, imp.node_name)


@converter("QuantizeLinear")
def _quantize_linear(imp: _Importer, node: onnx.NodeProto) -> None:
    """Its float input, annotated (the codes alias it; only DequantizeLinear and QLinear ops read them)."""
    a = attrs_of(node)
    zero_point = _operand(imp, node, 2)
    if zero_point is not None:
        element = zero_point.dtype.name
    elif a.get("output_dtype"):
        element = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(a["output_dtype"])).name
    else:
        element = "uint8"
    spec = _qdq_spec(imp, node, _format_of(imp, node, element, "its output"), imp.shape(node.input[0]))
    if format_info(spec.format).is_float and not a.get("saturate", 1):
        raise UnsupportedError(f"node {imp.node_name!r} (QuantizeLinear): saturate=0 is not supported "
                               "(bitsmith's float formats saturate)")
    if spec.granularity == "block" and imp.const(node.input[0]) is None:
        raise UnsupportedError(f"node {imp.node_name!r} (QuantizeLinear): blocked quantization of a run-time value is "
                               "not supported (bitsmith's block-quantized activations take their scales from the data)")
    name = imp.annotate(node, node.input[0], spec, node.output[0])
    imp.codes[node.output[0]] = _Codes(name, spec, imp.node_name)
    imp.alias[node.output[0]] = name


@converter("DequantizeLinear")
def _dequantize_linear(imp: _Importer, node: onnx.NodeProto) -> None:
    """A QuantizeLinear's codes: the annotated float value they stand for. A constant: the dequantized
    float constant, annotated with the spec (int32 biases stay unannotated: no int32 format)."""
    source, out = node.input[0], node.output[0]
    codes = imp.codes.get(source)
    if codes is not None:
        if not codes.spec.dynamic and not _qdq_spec(imp, node, codes.spec.format, imp.shape(source)).same_as(codes.spec):
            raise UnsupportedError(f"node {imp.node_name!r} (DequantizeLinear): it dequantizes {source!r} with other "
                                   f"parameters than node {codes.node!r} quantized it with")
        imp.alias[out] = codes.name
        return
    array = imp.raw.get(source, imp.const(source))
    if array is None:
        raise UnsupportedError(f"node {imp.node_name!r} (DequantizeLinear): its input {source!r} is neither a constant "
                               "nor the output of QuantizeLinear or a QLinear op")
    if array.dtype == np.int32:
        scale = imp.require_const(node, 1, "scale")
        zero_point = _operand(imp, node, 2)
        axis = _axis(int(attrs_of(node).get("axis", 1)), array.ndim)
        if scale.size > 1 and not (0 <= axis < array.ndim and scale.size == array.shape[axis]):
            raise ModelError(f"node {imp.node_name!r} (DequantizeLinear): {scale.size} scales do not fit axis {axis} "
                             f"of the {list(array.shape)} constant {source!r}")
        shape = [-1 if d == axis else 1 for d in range(array.ndim)] if scale.size > 1 else []
        ints = array.astype(np.int64) - (0 if zero_point is None else zero_point.astype(np.int64).reshape(shape))
        imp.add_constant(out, (ints.astype(np.float32) * scale.reshape(shape)).astype(np.float32))
        return
    spec = _qdq_spec(imp, node, _format_of(imp, node, array.dtype.name, f"constant {source!r}"), array.shape)
    _add_dequantized(imp, out, array, spec)


def _qlinear_input(imp: _Importer, node: onnx.NodeProto, index: int, axis: int = 1) -> str:
    """Operand `index` of a QLinear op, its scale and zero point at index + 1 and + 2: the float value
    of an integer tensor, or a constant dequantized into an annotated float constant."""
    name = node.input[index]
    scale, zero_point = imp.require_const(node, index + 1, "scale"), _operand(imp, node, index + 2)
    codes = imp.codes.get(name)
    if codes is not None:
        spec = _spec(imp, node, codes.spec.format, scale, zero_point, imp.shape(name), axis, 0, f"input {name!r}")
        if not spec.same_as(codes.spec):
            raise UnsupportedError(f"node {imp.node_name!r} ({node.op_type}): it reads {name!r} with other quantization "
                                   f"parameters than node {codes.node!r} produced it with")
        return codes.name
    array = imp.const(name)
    if array is None:
        raise UnsupportedError(f"node {imp.node_name!r} ({node.op_type}): its input {name!r} is neither a constant nor "
                               "a quantized tensor (the output of QuantizeLinear or a QLinear op)")
    spec = _spec(imp, node, _format_of(imp, node, array.dtype.name, f"input {name!r}"), scale, zero_point,
                 array.shape, axis, 0, f"input {name!r}")
    return _add_dequantized(imp, _dequantized_name(imp, name), array, spec)


def _qlinear_output_spec(imp: _Importer, node: onnx.NodeProto, index: int, out: str) -> QuantSpec:
    scale, zero_point = imp.require_const(node, index, "output scale"), _operand(imp, node, index + 1)
    element = "uint8" if zero_point is None else zero_point.dtype.name
    return _spec(imp, node, _format_of(imp, node, element, "its output"), scale, zero_point,
                 imp.graph.values[out].shape, 1, 0, "its output")


def _int32_bias(imp: _Importer, node: onnx.NodeProto, index: int, scale: np.ndarray) -> str:
    """An int32 bias (added to the int32 accumulator, so its scale is the product's) as float."""
    codes = imp.require_const(node, index, "bias")
    if codes.dtype != np.int32:
        raise UnsupportedError(f"node {imp.node_name!r} ({node.op_type}): bias of type {codes.dtype.name}, not int32")
    name = _dequantized_name(imp, node.input[index])
    imp.add_constant(name, (codes.astype(np.float32) * scale.astype(np.float32)).astype(np.float32))
    return name


@converter("QLinearConv")
def _qlinear_conv(imp: _Importer, node: onnx.NodeProto) -> None:
    inputs = [_qlinear_input(imp, node, 0), _qlinear_input(imp, node, 3, axis=0)]
    if len(node.input) > 8 and node.input[8]:
        scale = imp.require_const(node, 1, "scale") * imp.require_const(node, 4, "weight scale")
        inputs.append(_int32_bias(imp, node, 8, scale))
    attrs = _spatial_attrs(imp, node, list(imp.graph.values[inputs[1]].shape[2:]))
    attrs["group"] = int(attrs_of(node).get("group", 1))
    out = node.output[0]
    imp.emit("Conv", inputs, attrs, [out])
    _claim_codes(imp, node, out, _qlinear_output_spec(imp, node, 6, out))


@converter("QLinearMatMul")
def _qlinear_matmul(imp: _Importer, node: onnx.NodeProto) -> None:
    a_rank, b_rank = len(imp.shape(node.input[0])), len(imp.shape(node.input[3]))
    lhs = _qlinear_input(imp, node, 0, axis=max(a_rank - 2, 0))  # per row
    rhs = _qlinear_input(imp, node, 3, axis=b_rank - 1)          # per column
    out = node.output[0]
    imp.emit("MatMul", [lhs, rhs], {}, [out])
    _claim_codes(imp, node, out, _qlinear_output_spec(imp, node, 6, out))


@converter("QGemm", domain="com.microsoft")
def _qgemm(imp: _Importer, node: onnx.NodeProto) -> None:
    """ONNX Runtime's quantized Gemm: alpha * A' B' + C, C int32 with scale alpha * a_scale * b_scale;
    the output is quantized when y_scale is given, float otherwise."""
    a = attrs_of(node)
    alpha, trans_a, trans_b = float(a.get("alpha", 1.0)), int(a.get("transA", 0)), int(a.get("transB", 0))
    out = node.output[0]
    lhs = _qlinear_input(imp, node, 0, axis=1 if trans_a else 0)
    rhs = _qlinear_input(imp, node, 3, axis=0 if trans_b else 1)
    if trans_a:
        lhs = imp.emit("Transpose", [lhs], {"perm": [1, 0]}, [imp.fresh_value(f"{out}_At")])[0]
    if trans_b:
        rhs = imp.emit("Transpose", [rhs], {"perm": [1, 0]}, [imp.fresh_value(f"{out}_Bt")])[0]
    has_bias = len(node.input) > 6 and bool(node.input[6])
    result = imp.emit("MatMul", [lhs, rhs], {}, [out if alpha == 1.0 and not has_bias else imp.fresh_value(f"{out}_mm")])[0]
    if alpha != 1.0:
        factor = imp.fresh_value(f"{out}_alpha")
        imp.add_constant(factor, np.array(alpha, np.float32))
        result = imp.emit("Mul", [result, factor], {}, [out if not has_bias else imp.fresh_value(f"{out}_scaled")])[0]
    if has_bias:
        scale = np.float32(alpha) * imp.require_const(node, 1, "scale") * imp.require_const(node, 4, "weight scale")
        imp.emit("Add", [result, _int32_bias(imp, node, 6, scale)], {}, [out])
    if len(node.input) > 7 and node.input[7]:
        _claim_codes(imp, node, out, _qlinear_output_spec(imp, node, 7, out))


@converter("QLinearAdd", domain="com.microsoft")
def _qlinear_add(imp: _Importer, node: onnx.NodeProto) -> None:
    out = node.output[0]
    imp.emit("Add", [_qlinear_input(imp, node, 0), _qlinear_input(imp, node, 3)], {}, [out])
    _claim_codes(imp, node, out, _qlinear_output_spec(imp, node, 6, out))


@converter("QLinearGlobalAveragePool", domain="com.microsoft")
def _qlinear_global_average_pool(imp: _Importer, node: onnx.NodeProto) -> None:
    if attrs_of(node).get("channels_last", 0):
        raise UnsupportedError(f"node {imp.node_name!r} (QLinearGlobalAveragePool): channels_last=1 is not supported")
    out = node.output[0]
    imp.emit("GlobalAveragePool", [_qlinear_input(imp, node, 0)], {}, [out])
    _claim_codes(imp, node, out, _qlinear_output_spec(imp, node, 3, out))


@converter("QLinearSoftmax", domain="com.microsoft")
def _qlinear_softmax(imp: _Importer, node: onnx.NodeProto) -> None:
    a = attrs_of(node)
    out = node.output[0]
    _emit_softmax(imp, "Softmax", _qlinear_input(imp, node, 0), a.get("axis"), int(a.get("opset", imp.opset)), out)
    _claim_codes(imp, node, out, _qlinear_output_spec(imp, node, 3, out))


@converter("DynamicQuantizeLinear")
def _dynamic_quantize_linear(imp: _Importer, node: onnx.NodeProto) -> None:
    """Its input, annotated with a dynamic uint8 spec; the scale and zero point outputs are only read
    inside the matched integer-op patterns (`_match_integer_ops`), which fold them away."""
    spec = QuantSpec("uint8", 8, "tensor", symmetric=False, dynamic=True)
    name = imp.annotate(node, node.input[0], spec, node.output[0])
    imp.codes[node.output[0]] = _Codes(name, spec, imp.node_name)
    imp.alias[node.output[0]] = name


def _channel_vector(imp: _Importer, node: onnx.NodeProto, array: np.ndarray, rank: int, axis: int,
                    what: str) -> np.ndarray:
    """A scale or zero point that broadcasts against a rank-`rank` result along `axis` only, as a scalar
    or 1-D array."""
    if array.size == 1:
        return array.reshape(())
    dims = (1,) * (rank - array.ndim) + tuple(array.shape)
    if len(dims) != rank or any(d != 1 for i, d in enumerate(dims) if i != axis):
        raise UnsupportedError(f"node {imp.node_name!r} ({node.op_type}): {what} of shape {list(array.shape)} does not "
                               "scale the output channels")
    return array.reshape(-1)


@converter("ConvInteger", "MatMulInteger")
def _integer_op(imp: _Importer, node: onnx.NodeProto) -> None:
    """The matched pattern DynamicQuantizeLinear -> op -> Cast -> Mul(x_scale * w_scale) as a float
    Conv / MatMul of the dynamically quantized input and the dequantized weight.

    onnx.quantize's int32 bias, Floor(b / (x_scale * w_scale)), is rounded with the run-time scale;
    the IR keeps the float bias b, which differs from it by less than one accumulator step
    (x_scale * w_scale) per output channel."""
    match = imp.integer_ops[node.output[0]]
    conv = node.op_type == "ConvInteger"
    codes = imp.require_const(node, 1, "weight")
    w_zero = _operand(imp, node, 3)
    w_scale = imp.const(match.weight_scale)
    if w_scale is None:
        raise UnsupportedError(f"node {imp.node_name!r} ({node.op_type}): its weight scale {match.weight_scale!r} is "
                               "computed at run time")
    x = imp.resolve(node.input[0])
    rank = len(imp.graph.values[x].shape) if conv else max(len(imp.graph.values[x].shape), codes.ndim)
    out_axis, w_axis = (1, 0) if conv else (rank - 1, codes.ndim - 1)
    scale = _channel_vector(imp, node, w_scale, rank, out_axis, "the weight scale")
    zero = None if w_zero is None else (w_zero.reshape(()) if w_zero.size == 1 else w_zero.reshape(-1))
    if zero is not None and zero.size > 1 and scale.size == 1:
        scale = np.broadcast_to(scale, zero.shape).copy()
    spec = _spec(imp, node, _format_of(imp, node, codes.dtype.name, "the weight"), scale, zero, codes.shape, w_axis, 0,
                 "the weight")
    weight = _add_dequantized(imp, _dequantized_name(imp, node.input[1]), codes, spec)
    bias = None if match.bias is None else imp.const(match.bias)
    if match.bias is not None and bias is None:
        raise UnsupportedError(f"node {imp.node_name!r} ({node.op_type}): its bias {match.bias!r} is computed at run time")
    if conv:
        attrs = _spatial_attrs(imp, node, list(codes.shape[2:]))
        attrs["group"] = int(attrs_of(node).get("group", 1))
        inputs = [x, weight]
        if bias is not None:
            if bias.size != codes.shape[0]:
                raise UnsupportedError(f"node {imp.node_name!r} (ConvInteger): its bias has {bias.size} values for "
                                       f"{codes.shape[0]} output channels")
            bias_name = imp.fresh_value(f"{match.bias}_bias")
            imp.add_constant(bias_name, bias.reshape(-1).astype(np.float32))
            inputs.append(bias_name)
        imp.emit("Conv", inputs, attrs, [match.output])
        return
    product = match.output if bias is None else imp.fresh_value(f"{match.output}_matmul")
    imp.emit("MatMul", [x, weight], {}, [product])
    if bias is not None and match.bias is not None:
        imp.emit("Add", [product, imp.resolve(match.bias)], {}, [match.output])


def _match_integer_ops(imp: _Importer) -> None:
    """Match every ConvInteger / MatMulInteger to the pattern
    DynamicQuantizeLinear(x) -> op(x_q, w, x_zp, w_zp) [-> Add(Reshape(Cast(Floor(Div(b, Mul(x_scale, w_scale))))))]
    -> Cast(float) -> Mul(., Mul(x_scale, w_scale)); the Casts, Muls and bias nodes are absorbed (not
    converted: `_integer_op` emits the whole pattern). Every output of a DynamicQuantizeLinear must be
    read inside matched patterns (or by a DequantizeLinear of all three). Anything else is an
    UnsupportedError naming the node."""
    nodes = list(imp.proto.graph.node)
    index_of = {id(node): i for i, node in enumerate(nodes)}
    producer = {out: node for node in nodes for out in node.output if out}

    def label(node: onnx.NodeProto) -> str:
        return node.name or f"{node.op_type}_{index_of[id(node)]}"

    def only_reader(name: str) -> onnx.NodeProto | None:
        readers = imp.onnx_consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in imp.onnx_outputs else None

    def made_by(name: str, op: str, reader: onnx.NodeProto) -> onnx.NodeProto | None:
        node = producer.get(name)
        return node if node is not None and node.op_type == op and only_reader(name) is reader else None

    def scale_product(name: str, reader: onnx.NodeProto, dql: onnx.NodeProto) -> tuple[str, onnx.NodeProto] | None:
        """Mul(x_scale, w_scale) read only by `reader`: (w_scale, the Mul)."""
        mul = made_by(name, "Mul", reader)
        if mul is None or dql.output[1] not in mul.input:
            return None
        other = [n for n in mul.input if n != dql.output[1]]
        return (other[0], mul) if len(other) == 1 else None

    claimed: set[int] = set()
    for node in nodes:
        if node.op_type not in ("ConvInteger", "MatMulInteger") or _converter_key(node) != node.op_type:
            continue

        def fail(reason: str) -> NoReturn:
            raise UnsupportedError(f"{imp.source}: node {label(node)!r} ({node.op_type}): {reason}; bitsmith imports "
                                   f"{node.op_type} only in the pattern {_INTEGER_PATTERN.format(op=node.op_type)}")
        dql = producer.get(node.input[0])
        if dql is None or dql.op_type != "DynamicQuantizeLinear":
            fail(f"its input {node.input[0]!r} does not come from DynamicQuantizeLinear")
        if len(node.input) < 3 or node.input[2] != dql.output[2]:
            fail("its input zero point is not the one DynamicQuantizeLinear computed")
        absorbed: list[onnx.NodeProto] = []
        value, reader, bias = node.output[0], only_reader(node.output[0]), None
        if reader is not None and reader.op_type == "Add":
            add = reader
            other = add.input[1] if add.input[0] == value else add.input[0]
            reshape = made_by(other, "Reshape", add)
            cast = made_by(reshape.input[0] if reshape is not None else other, "Cast", reshape or add)
            floor = made_by(cast.input[0], "Floor", cast) if cast is not None else None
            div = made_by(floor.input[0], "Div", floor) if floor is not None else None
            product = scale_product(div.input[1], div, dql) if div is not None else None
            if cast is None or attrs_of(cast).get("to") != onnx.TensorProto.INT32 or product is None or div is None:
                fail("its output is added to something other than an int32 bias Floor(b / (x_scale * w_scale))")
            bias, bias_scale = div.input[0], product[0]
            absorbed += [n for n in (reshape, cast, floor, div, product[1], add) if n is not None]
            value, reader = add.output[0], only_reader(add.output[0])
        if reader is None or reader.op_type != "Cast" or attrs_of(reader).get("to") != onnx.TensorProto.FLOAT:
            fail("its result is not read by one Cast to float only")
        mul = only_reader(reader.output[0])
        if mul is None or mul.op_type != "Mul":
            fail("the Cast to float is not followed by a Mul only")
        other = mul.input[1] if mul.input[0] == reader.output[0] else mul.input[0]
        product = scale_product(other, mul, dql)
        if product is None:
            fail("its float result is not multiplied by DynamicQuantizeLinear's scale times a weight scale")
        if bias is not None and bias_scale != product[0]:
            fail(f"its bias is quantized with weight scale {bias_scale!r}, its output with {product[0]!r}")
        absorbed += [reader, mul, product[1]]
        imp.integer_ops[node.output[0]] = _IntegerMatch(product[0], bias, mul.output[0])
        claimed.update(index_of[id(n)] for n in absorbed)
    for dql in nodes:
        if dql.op_type != "DynamicQuantizeLinear":
            continue
        for out in dql.output:
            if out in imp.onnx_outputs:
                raise UnsupportedError(f"{imp.source}: graph output {out!r} is an output of DynamicQuantizeLinear node "
                                       f"{label(dql)!r}; bitsmith imports DynamicQuantizeLinear only in the pattern "
                                       f"{_INTEGER_PATTERN.format(op='ConvInteger/MatMulInteger')}")
            for reader in imp.onnx_consumers.get(out, []):
                matched = (index_of[id(reader)] in claimed
                           or (reader.op_type in ("ConvInteger", "MatMulInteger") and reader.output[0] in imp.integer_ops
                               and out != dql.output[1])
                           or (reader.op_type == "DequantizeLinear" and list(reader.input[:3]) == list(dql.output)))
                if not matched:
                    raise UnsupportedError(
                        f"{imp.source}: node {label(reader)!r} ({reader.op_type}) reads {out!r}, an output of "
                        f"DynamicQuantizeLinear node {label(dql)!r}; bitsmith imports DynamicQuantizeLinear only in the "
                        f"pattern {_INTEGER_PATTERN.format(op='ConvInteger/MatMulInteger')}")
    imp.absorbed = claimed
