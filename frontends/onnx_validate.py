"""Structural checks of an ONNX model before the importer converts it.

The converters in onnx.py may assume what these checks establish, so a malformed file gets one
ModelError naming the tensor or node at fault instead of failing somewhere inside a converter:

- every initializer decodes to an array of its declared shape and element type (`tensor_array`);
- nodes come in topological order: each input is a graph input, an initializer or an output of an
  earlier node, and each value is assigned once;
- every node of the default domain matches its ONNX schema at the model's opset: input and output
  counts, required attributes, attribute types, no unknown attributes (`onnx.checker.check_node`);
- every graph output is produced.

Custom-domain nodes (com.microsoft QLinear ops and others) have no schema in onnx; their converters
check what they read. When a converter still fails on a node, `onnx_diagnosis` asks ONNX's strict
shape inference (with the static input shapes applied) what is wrong with the model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import checker, numpy_helper

from ..errors import ModelError

_FIX = "the file is malformed: re-export the model, and check it with onnx.checker.check_model"


def tensor_array(tensor: onnx.TensorProto, what: str, source: str) -> np.ndarray:
    """The array a TensorProto holds; ModelError when its data does not fit its shape and type."""
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as exc:  # onnx raises ValueError, KeyError, TypeError... on malformed tensors
        raise ModelError(f"{source}: {what} (dims {list(tensor.dims)}, element type {tensor.data_type}) cannot be "
                         f"decoded: {exc}; {_FIX}") from None
    if tuple(array.shape) != tuple(tensor.dims):
        raise ModelError(f"{source}: {what} holds {array.size} values, not the {list(tensor.dims)} it declares; {_FIX}")
    return array


def validate(proto: onnx.ModelProto, source: str) -> None:
    """Raise ModelError, naming the node or tensor, if `proto` breaks one of the rules above."""
    graph = proto.graph
    _check_text(proto, source)
    defined = {t.name for t in graph.initializer}
    defined |= {v.name for v in graph.input}
    context = _checker_context(proto)
    for index, node in enumerate(graph.node):
        where = f"{source}: node {node.name or '#' + str(index)!r} ({node.op_type})"
        for name in node.input:
            if name and name not in defined:
                raise ModelError(f"{where} reads {name!r}, which no graph input, initializer or earlier node "
                                 f"defines (the nodes are out of order, or a tensor is missing); {_FIX}")
        for name in node.output:
            if name and name in defined:
                raise ModelError(f"{where} assigns {name!r}, which is already defined; {_FIX}")
            defined.add(name)
        if (node.domain or "") in ("", "ai.onnx"):
            _check_schema(node, context, where)
    for output in graph.output:
        if output.name not in defined:
            raise ModelError(f"{source}: graph output {output.name!r} is produced by no node; {_FIX}")


def _check_text(proto: onnx.ModelProto, source: str) -> None:
    """Names must be text: protobuf hands back the bytes of a string field that is not UTF-8."""
    graph = proto.graph
    named = [("graph name", graph.name)]
    named += [(f"graph input {i}", v.name) for i, v in enumerate(graph.input)]
    named += [(f"graph output {i}", v.name) for i, v in enumerate(graph.output)]
    named += [(f"initializer {i}", t.name) for i, t in enumerate(graph.initializer)]
    named += [(f"opset import {i}", e.domain) for i, e in enumerate(proto.opset_import)]
    for i, node in enumerate(graph.node):
        named += [(f"node #{i}: {field}", text) for field, text in
                  (("name", node.name), ("op type", node.op_type), ("domain", node.domain))]
        named += [(f"node #{i}: an input name", text) for text in node.input]
        named += [(f"node #{i}: an output name", text) for text in node.output]
        named += [(f"node #{i}: an attribute name", a.name) for a in node.attribute]
    for what, text in named:
        if not isinstance(text, str):
            raise ModelError(f"{source}: {what} is not UTF-8 text ({bytes(text)[:40]!r}); {_FIX}")


def _checker_context(proto: onnx.ModelProto) -> checker.C.CheckerContext:
    context = checker.C.CheckerContext()
    context.ir_version = proto.ir_version
    context.opset_imports = {entry.domain: entry.version for entry in proto.opset_import}
    return context


def _check_schema(node: onnx.NodeProto, context: checker.C.CheckerContext, where: str) -> None:
    try:
        checker.check_node(node, context)
    except UnicodeDecodeError:  # ONNX's message quotes text that is not UTF-8 (a string attribute, say)
        raise ModelError(f"{where} does not match its ONNX schema, and holds text that is not UTF-8; {_FIX}") from None
    except checker.ValidationError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ModelError(f"{where} does not match its ONNX schema: {reason}; {_FIX}") from None


def onnx_diagnosis(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> str | None:
    """What ONNX's strict shape and type inference finds wrong with `proto` once the given static
    input shapes are applied; None when it finds nothing."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for value in model.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in input_shapes[value.name]:
                dims.add().dim_value = int(size)
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError, or ValidationError from the checks inference runs
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return " ".join(lines)[:600] or type(exc).__name__
    return None
