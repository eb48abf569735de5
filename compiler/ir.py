"""bitsmith's typed graph IR: Graph, Node, Value and the QuantSpec annotation.

The IR is deliberately small. A `Graph` holds named `Value`s (static shape + dtype, optionally a
`QuantSpec`), named constant tensors (numpy arrays), and `Node`s in topological order. Op names and
semantics follow ONNX, but every attribute is explicit and normalized by the frontend (defaults
filled in, auto_pad resolved to pads, shape operands of Reshape/Slice/Resize turned into attributes),
so passes and backends never re-derive ONNX's defaults. `ops.py` lists the ops and their attributes.

`verify()` checks the invariants every pass must keep; `dump()` prints the graph as readable text;
`serialize.py` writes it as JSON plus a safetensors file and reads it back exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .errors import IRError

# Element types an IR value may carry (numpy names). Sub-byte and float8 formats are not dtypes of
# values: they are QuantSpec formats, stored packed in uint8 / int8 containers.
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")

QUANT_FORMATS = (
    "int8", "uint8", "int7", "int4", "uint4", "int16",
    "fp8_e4m3", "fp8_e5m2", "fp4_e2m1",
    "mxfp8", "mxfp4", "nvfp4",
)
GRANULARITIES = ("tensor", "channel", "block")


@dataclass
class QuantSpec:
    """How a value is quantized: real = (q - zero_point) * scale, per tensor, channel or block.

    `scale` and `zero_point` are arrays broadcastable along `axis` (one entry per channel, or per
    block for block formats); `scale_format` says how the scale itself is stored (fp32, the E8M0
    power-of-two scales of the OCP MX formats, or the E4M3 scales of NVFP4, which also carry a
    `tensor_scale`).

    `dynamic=True` (uint8 per tensor only) is ONNX DynamicQuantizeLinear: scale and zero point are
    computed from each tensor at run time (range widened to include 0, scale = range / 255, zero
    point = round_half_even(-min / scale)); `scale` and `zero_point` are then unused placeholders.
    """

    format: str
    bits: int
    granularity: str = "tensor"
    axis: int | None = None
    block_size: int | None = None
    scale: np.ndarray = field(default_factory=lambda: np.ones((), np.float32))
    zero_point: np.ndarray = field(default_factory=lambda: np.zeros((), np.int32))
    scale_format: str = "fp32"
    tensor_scale: float | None = None
    symmetric: bool = True
    dynamic: bool = False

    def __post_init__(self) -> None:
        if self.format not in QUANT_FORMATS:
            raise IRError(f"QuantSpec: unknown format {self.format!r}; known: {', '.join(QUANT_FORMATS)}")
        if self.granularity not in GRANULARITIES:
            raise IRError(f"QuantSpec: unknown granularity {self.granularity!r}")
        if self.granularity != "tensor" and self.axis is None:
            raise IRError(f"QuantSpec: granularity {self.granularity!r} needs an axis")
        if self.granularity == "block" and not self.block_size:
            raise IRError("QuantSpec: block granularity needs a block_size")
        if self.dynamic and (self.format != "uint8" or self.granularity != "tensor"):
            raise IRError(f"QuantSpec: dynamic quantization is uint8 per tensor (ONNX DynamicQuantizeLinear), "
                          f"not {self.format}/{self.granularity}")
        self.scale = np.asarray(self.scale, np.float32)
        self.zero_point = np.asarray(self.zero_point, np.int32)

    def same_as(self, other: "QuantSpec") -> bool:
        """True when both specs quantize identically (used to check tied quantizers)."""
        plain = ("format", "bits", "granularity", "axis", "block_size", "scale_format", "tensor_scale", "symmetric",
                 "dynamic")
        return (all(getattr(self, k) == getattr(other, k) for k in plain)
                and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))


@dataclass
class Value:
    """A named tensor flowing through the graph; shapes are always static."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: QuantSpec | None = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(d) for d in self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def type_str(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass
class Node:
    """One operation. `inputs` name values ("" marks an omitted optional input)."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """A model: inputs, outputs, nodes in topological order, value types and constant tensors."""

    name: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    values: dict[str, Value] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    # -- construction helpers -------------------------------------------------------------------
    def add_value(self, name: str, shape: Iterable[int], dtype: str) -> Value:
        value = Value(name, tuple(shape), dtype)
        self.values[name] = value
        return value

    def add_constant(self, name: str, array: np.ndarray) -> str:
        array = np.asarray(array)
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d arrays into 1-d)
            array = array.copy(order="C")
        self.constants[name] = array
        self.values[name] = Value(name, array.shape, array.dtype.name)
        return name

    def fresh_name(self, base: str) -> str:
        """A value or node name not used yet, derived from `base`."""
        taken = self.values.keys() | {n.name for n in self.nodes}
        if base not in taken:
            return base
        i = 1
        while f"{base}_{i}" in taken:
            i += 1
        return f"{base}_{i}"

    # -- queries --------------------------------------------------------------------------------
    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items()))

    def parameter_count(self) -> int:
        return int(sum(a.size for a in self.constants.values() if a.dtype.kind == "f"))

    def copy(self) -> "Graph":
        """A deep copy (constants are copied too, so passes may mutate freely)."""
        return Graph(
            name=self.name,
            inputs=list(self.inputs),
            outputs=list(self.outputs),
            nodes=[Node(n.op, n.name, list(n.inputs), list(n.outputs), _copy_attrs(n.attrs)) for n in self.nodes],
            values={k: dataclasses.replace(v) for k, v in self.values.items()},
            constants={k: v.copy() for k, v in self.constants.items()},
            metadata=dict(self.metadata),
        )

    def rename_value(self, old: str, new: str) -> None:
        """Rename a value everywhere (its type, constant, producer, consumers, graph I/O)."""
        if new in self.values:
            raise IRError(f"cannot rename {old!r} to {new!r}: the name is taken")
        value = self.values.pop(old)
        value.name = new
        self.values[new] = value
        if old in self.constants:
            self.constants[new] = self.constants.pop(old)
        for node in self.nodes:
            node.inputs = [new if i == old else i for i in node.inputs]
            node.outputs = [new if o == old else o for o in node.outputs]
        self.inputs = [new if i == old else i for i in self.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]

    def remove_unused(self) -> None:
        """Drop nodes whose outputs nobody reads, then constants and values nobody references."""
        live = set(self.outputs)
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(o in live for o in node.outputs):
                kept.append(node)
                live.update(i for i in node.inputs if i)
        self.nodes = list(reversed(kept))
        live.update(self.inputs)
        self.constants = {k: v for k, v in self.constants.items() if k in live}
        self.values = {k: v for k, v in self.values.items() if k in live}

    def dump(self) -> str:
        return dump(self)


def _copy_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in attrs.items()}


# ---------------------------------------------------------------------------------------------
# Verifier
# ---------------------------------------------------------------------------------------------
def verify(graph: Graph, known_ops: Iterable[str] | None = None) -> None:
    """Raise IRError on the first broken invariant.

    Checks: every value has a type with a known dtype; constants agree with their types; every
    value is assigned once (graph input, constant or one node output); nodes are in topological
    order (inputs defined before use); outputs are defined; node names are unique; ops are known.
    """
    ops = set(known_ops) if known_ops is not None else None
    defined: set[str] = set()
    for name in graph.inputs:
        _check_value(graph, name, "graph input")
        if name in graph.constants:
            raise IRError(f"graph input {name!r} is also a constant")
        defined.add(name)
    for name, array in graph.constants.items():
        value = _check_value(graph, name, "constant")
        if tuple(array.shape) != value.shape or array.dtype.name != value.dtype:
            raise IRError(f"constant {name!r} is {array.dtype.name}{list(array.shape)} but typed {value.type_str()}")
        defined.add(name)
    node_names: set[str] = set()
    for node in graph.nodes:
        where = f"node {node.name!r} ({node.op})"
        if node.name in node_names:
            raise IRError(f"{where}: duplicate node name")
        node_names.add(node.name)
        if ops is not None and node.op not in ops:
            raise IRError(f"{where}: unknown op")
        for name in node.inputs:
            if name and name not in defined:
                raise IRError(f"{where}: input {name!r} is not defined before use (not topological, or dangling)")
        for name in node.outputs:
            if name in defined:
                raise IRError(f"{where}: output {name!r} is assigned twice")
            _check_value(graph, name, where + " output")
            defined.add(name)
    for name in graph.outputs:
        if name not in defined:
            raise IRError(f"graph output {name!r} is never produced")


def _check_value(graph: Graph, name: str, role: str) -> Value:
    value = graph.values.get(name)
    if value is None:
        raise IRError(f"{role} {name!r} has no type in graph.values")
    if value.dtype not in DTYPES:
        raise IRError(f"{role} {name!r} has unknown dtype {value.dtype!r}")
    if any(d < 0 for d in value.shape):
        raise IRError(f"{role} {name!r} has a negative dimension {value.shape}")
    return value


# ---------------------------------------------------------------------------------------------
# Text dump
# ---------------------------------------------------------------------------------------------
def _fmt_attr(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ",".join(_fmt_attr(x) for x in v) + "]"
    return str(v)


def _fmt_quant(q: QuantSpec | None) -> str:
    if q is None:
        return ""
    gran = q.granularity if q.granularity == "tensor" else f"{q.granularity}(axis={q.axis}" + (
        f",block={q.block_size})" if q.block_size else ")")
    return f" @{q.format}/{gran}" + ("/dynamic" if q.dynamic else "")


def dump(graph: Graph) -> str:
    """Readable text, one line per node, like code:

        %y: float32[1,8,4,4] = Conv(%x, $w, $b) {group=1, pads=[1,1,1,1], ...}
    """
    def ref(name: str) -> str:
        if not name:
            return "_"
        return ("$" if name in graph.constants else "%") + name

    ins = ", ".join(f"%{n}: {graph.values[n].type_str()}{_fmt_quant(graph.values[n].quant)}" for n in graph.inputs)
    lines = [f"graph {graph.name}({ins}) {{"]
    for name, array in graph.constants.items():
        if array.size <= 8:
            lines.append(f"  ${name}: {graph.values[name].type_str()} = {array.reshape(-1).tolist()}")
    for node in graph.nodes:
        outs = ", ".join(f"%{o}: {graph.values[o].type_str()}{_fmt_quant(graph.values[o].quant)}" for o in node.outputs)
        attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in sorted(node.attrs.items()))
        args = ", ".join(ref(i) for i in node.inputs)
        lines.append(f"  {outs} = {node.op}({args})" + (f" {{{attrs}}}" if attrs else "") + f"  # {node.name}")
    lines.append("  return " + ", ".join(ref(o) for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
