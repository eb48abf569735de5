"""Where quantizers sit, and which of them must agree (tied quantizers).

Weights: the constant weight operand of Conv, ConvTranspose and MatMul, quantized per output
channel (or in blocks along the reduction axis).

Activations: the integer region grows backwards from the inputs of Conv / ConvTranspose / MatMul:
- scale-preserving ops (MaxPool, Reshape, Transpose, Squeeze, Unsqueeze, Slice, Concat, Split,
  nearest Resize, DepthToSpace) whose output is quantized get their input quantized too, *tied* to
  the output: integer code in, same integer code out;
- integer-arithmetic ops (Add of two activations, AveragePool, GlobalAveragePool) whose output is
  quantized get their inputs quantized with their own scales (rescaled in the integer domain);
- anything else (a Conv/MatMul output with its bias and activation, LayerNorm, Softmax, ...) is a
  border: the value is quantized where it is produced (fused requantize, or a float op's output).
Tied groups are the connected components of the tie relation (networkx), so two quantizers that
must agree are found from the graph alone, and `check_ties` proves they do.

Integer activation formats widen the region (`integer=True`; Calibrate records it in
graph.metadata["activation_region"] = "integer"), so that the integer lowering (passes/lower_integer.py)
leaves no float island between the input quantizer and the outputs:
- Mul of two activations propagates like Add (QMul);
- a Softmax over the logits of a weighted op is quantized, its output with the fixed scale 1/256 (see
  Calibrate), its input with its own (QSoftmax);
- a unary elementwise subgraph (`lookup_region`: elementwise nodes whose only non-constant input is one
  activation x, e.g. PRelu, HardSigmoid, HardSwish spelled Add/Clip/Mul/Div, GELU spelled with Erf) whose
  output is quantized gets x quantized too: it becomes a lookup table over x's codes (`_widens` names
  the exceptions: a weighted op's fused Relu / Clip, per-channel rescalings and shifts);
- a graph output computed by such a subgraph with a transcendental op (`float_table_region`, e.g. a
  detector's final Sigmoid) gets the subgraph's input quantized; the output stays float, read from a
  table of float32 values.
- a weighted op's chain takes a following Mul / Div by a positive scalar constant too (attention's
  1 / sqrt(d) after Q K^T): its requantization multiplier absorbs the factor (`weighted_chain(scale=True)`);
- attention's Softmax over masked scores, Softmax(Add(scores, Where(keep, 0, -big))) (`softmax_mask`),
  is quantized with the scores as its input: QSoftmax takes `keep` as a mask, so the -big term is never
  quantized;
- the data input of every LayerNormalization is quantized (QLayerNorm), and so is the output of one that
  is a graph output. These, Softmax outputs that are graph outputs, and the Add chains that compute them
  (a transformer's residual stream) are *wide* (`wide_points`), and so are the inputs of the per-tensor
  tables and Softmaxes that compute wide values: Calibrate gives them WIDE_FORMAT (int16) unless a
  reader needs 8-bit codes (a weighted op, a per-channel table, QMul, a pool), because a per-tensor
  8-bit residual stream loses its small channels to the outlier ones, and an 8-bit input would be the
  bottleneck of a 16-bit table (magika's GELUs before its LayerNorms) or probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from ..errors import IRError
from ..ir import Graph, Node

WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul")
SCALE_PRESERVING = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Concat", "Split",
                    "DepthToSpace", "Resize", "GlobalMaxPool", "ReduceMax")
INTEGER_ARITHMETIC = ("Add", "AveragePool", "GlobalAveragePool")
# ops computing each output element from the same element of their (broadcast) inputs
ELEMENTWISE = ("Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Erf", "Floor", "Ceil",
               "Round", "Sin", "Cos", "Softplus", "Clip", "LeakyRelu", "Elu", "HardSigmoid", "HardSwish", "Gelu",
               "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu")
CLAMPS = ("Relu", "Clip")
# elementwise ops that float32 implementations do not all compute alike (not correctly rounded)
TRANSCENDENTAL = ("Sigmoid", "Tanh", "Exp", "Log", "Erf", "Sin", "Cos", "Softplus", "Elu", "Gelu", "Pow")


@dataclass(frozen=True)
class WeightPoint:
    """A weight constant and the axes that matter for quantizing it."""

    name: str
    node: str
    channel_axis: int   # one scale per output channel along this axis
    reduce_axis: int    # blocks of block formats run along this (input-channel / K) axis


def weight_points(graph: Graph) -> dict[str, WeightPoint]:
    points: dict[str, WeightPoint] = {}
    for node in graph.nodes:
        point = _weight_point(graph, node)
        if point is not None and point.name not in points:
            points[point.name] = point
    return points


def _weight_point(graph: Graph, node: Node) -> WeightPoint | None:
    if node.op not in WEIGHTED_OPS or len(node.inputs) < 2:
        return None
    name = node.inputs[1]
    array = graph.constants.get(name)
    if array is None or array.dtype.kind != "f":
        return None
    if node.op == "Conv":
        return WeightPoint(name, node.name, 0, 1)
    if node.op == "ConvTranspose":
        return WeightPoint(name, node.name, 1, 0)
    if array.ndim < 2:
        return None
    return WeightPoint(name, node.name, array.ndim - 1, array.ndim - 2)


def _is_activation(graph: Graph, name: str) -> bool:
    return bool(name) and name not in graph.constants and graph.values[name].dtype.startswith("float")


def _is_tying(node: Node) -> bool:
    if node.op == "Resize":
        return node.attrs.get("mode") == "nearest"
    return node.op in SCALE_PRESERVING


def _propagates(graph: Graph, node: Node, integer: bool = False) -> bool:
    """Integer-arithmetic ops propagate quantization to their inputs; Add (and in the integer region Mul)
    only between two activations."""
    if node.op == "Add" or (integer and node.op == "Mul"):
        return len(node.inputs) == 2 and all(_is_activation(graph, i) for i in node.inputs)
    return node.op in INTEGER_ARITHMETIC


def is_integer_region(graph: Graph) -> bool:
    """True when the graph's activation quantizers were placed for the integer lowering (widened region)."""
    return graph.metadata.get("activation_region") == "integer"


def epilogue_bias(graph: Graph, weighted: Node, add: Node) -> np.ndarray | None:
    """The per-output-channel bias that `add` (Add of a constant to the weighted op's output) adds, as a
    1-D float32 array, or None when the constant does not broadcast along the output channels only."""
    if add.op != "Add" or len(add.inputs) != 2 or weighted.outputs[0] not in add.inputs:
        return None
    other = [i for i in add.inputs if i != weighted.outputs[0]]
    constant = graph.constants.get(other[0]) if other else None
    if constant is None or constant.dtype != np.float32:
        return None
    shape = graph.values[weighted.outputs[0]].shape
    if weighted.op == "MatMul":
        channel_axis = len(shape) - 1
    elif weighted.op in ("Conv", "ConvTranspose"):
        channel_axis = 1
    else:
        return None
    if constant.ndim > len(shape):
        return None
    aligned = (1,) * (len(shape) - constant.ndim) + constant.shape
    if any(d != 1 for axis, d in enumerate(aligned) if axis != channel_axis):
        return None
    if aligned[channel_axis] not in (1, shape[channel_axis]):
        return None
    return np.broadcast_to(constant.reshape(-1), (shape[channel_axis],)).astype(np.float32)


def weighted_chain(graph: Graph, node: Node, consumers: dict[str, list[Node]], scale: bool = False) -> list[Node]:
    """A weighted op and the bias Add that may follow it ([node] or [node, add]): the Add is part of the
    op when it is the op's only reader and adds a per-output-channel constant (`epilogue_bias`). With
    `scale` (integer region) a following Mul / Div by a positive scalar constant joins too
    (`epilogue_factor`): [node, add?, mul?]."""
    chain = [node]
    out = node.outputs[0]
    users = consumers.get(out, [])
    if _private(graph, out, users) and epilogue_bias(graph, node, users[0]) is not None:
        chain.append(users[0])
    out = chain[-1].outputs[0]
    users = consumers.get(out, [])
    if scale and _private(graph, out, users) and epilogue_factor(graph, users[0], out) is not None:
        chain.append(users[0])
    return chain


def _private(graph: Graph, name: str, users: list[Node]) -> bool:
    """`name` has one reader, is no graph output and carries no quantizer: the chain may fuse past it."""
    return len(users) == 1 and name not in graph.outputs and graph.values[name].quant is None


def epilogue_factor(graph: Graph, node: Node, name: str) -> float | None:
    """The factor by which `node` scales activation `name` when it is a Mul / Div of `name` by a positive
    scalar float constant (Div: `name` the dividend), else None."""
    if node.op not in ("Mul", "Div") or len(node.inputs) != 2 or name not in node.inputs:
        return None
    other = node.inputs[1] if node.inputs[0] == name else node.inputs[0]
    constant = graph.constants.get(other)
    if constant is None or constant.dtype != np.float32 or constant.size != 1 or (node.op == "Div" and other != node.inputs[1]):
        return None
    value = float(constant.reshape(-1)[0])
    if not (np.isfinite(value) and value > 0):
        return None
    return value if node.op == "Mul" else 1.0 / value


def _weighted_output(graph: Graph, name: str, producers: dict[str, Node], consumers: dict[str, list[Node]]) -> bool:
    """True for the output of a weighted op, or of the last node of its chain (`weighted_chain` with scale)."""
    node = producers.get(name)
    if node is None:
        return False
    if node.op in WEIGHTED_OPS:
        return True
    source = node
    for _ in range(2):  # back through the chain's bias Add and scalar Mul
        source = next((producers[i] for i in source.inputs if i in producers), None)  # type: ignore[assignment]
        if source is None:
            return False
        if source.op in WEIGHTED_OPS:
            return weighted_chain(graph, source, consumers, scale=True)[-1] is node
    return False


@dataclass(frozen=True)
class LookupRegion:
    """Elementwise nodes (graph order) computing `output` from the one activation `input` and constants;
    `axis` is the axis of `input` along which the constants vary (None: they are scalars)."""

    nodes: tuple[Node, ...]
    input: str
    output: str
    axis: int | None


def lookup_region(graph: Graph, name: str, producers: dict[str, Node] | None = None,
                  consumers: dict[str, list[Node]] | None = None, stop: set[str] | frozenset = frozenset()
                  ) -> LookupRegion | None:
    """The unary elementwise subgraph computing activation `name`, or None.

    Grows backwards from `name`'s producer through elementwise nodes, absorbing a value only when it
    is a float activation read by that node alone, not a graph output, not in `stop`, and not the output
    of a weighted op (or its bias Add). The region must have exactly one non-constant input x, keep x's
    shape throughout, and its constants must vary along at most one axis of x (per-channel tables).
    """
    producers = graph.producers() if producers is None else producers
    consumers = graph.consumers() if consumers is None else consumers
    node = producers.get(name)
    if node is None or node.op not in ELEMENTWISE or len(node.outputs) != 1 or not _is_activation(graph, name):
        return None
    if _weighted_output(graph, name, producers, consumers):  # a bias Add belongs to its weighted op
        return None
    members: dict[str, Node] = {}
    external: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current.name in members:
            continue
        members[current.name] = current
        for value in current.inputs:
            if not value or value in graph.constants:
                continue
            producer = producers.get(value)
            absorbable = (producer is not None and producer.op in ELEMENTWISE and len(producer.outputs) == 1
                          and _is_activation(graph, value) and value not in graph.outputs and value not in stop
                          and len(consumers.get(value, [])) == 1
                          and not _weighted_output(graph, value, producers, consumers))
            if absorbable and producer is not None:
                stack.append(producer)
            else:
                external.add(value)
    if len(external) != 1:
        return None
    (source,) = external
    if not _is_activation(graph, source):
        return None
    shape = graph.values[source].shape
    axes: set[int] = set()
    for member in members.values():
        if any(graph.values[o].shape != shape for o in member.outputs):
            return None
        for value in member.inputs:
            if value in graph.constants:
                constant = graph.constants[value]
                if constant.ndim > len(shape) or constant.dtype.kind != "f":
                    return None
                aligned = (1,) * (len(shape) - constant.ndim) + constant.shape
                axes |= {axis for axis, d in enumerate(aligned) if d != 1}
    if len(axes) > 1:
        return None
    order = [n for n in graph.nodes if n.name in members]
    return LookupRegion(tuple(order), source, name, axes.pop() if axes else None)


def _widens(graph: Graph, region: LookupRegion, producers: dict[str, Node], consumers: dict[str, list[Node]]) -> bool:
    """Whether a lookup region's input joins the integer region. Not for
    - a lone Relu / Clip reading a weighted op's output (or its bias Add's) and nothing else does: that is
      the weighted op's fused clamp;
    - a per-channel rescaling or shift (only Mul / Div / Add / Sub of constants varying along an axis, e.g.
      SmoothQuant's Mul(X, 1/s), channel_shift's Add(X, -c)): quantizing its input per tensor would undo
      what the rescaling is for."""
    if (len(region.nodes) == 1 and region.nodes[0].op in CLAMPS
            and len(consumers.get(region.input, [])) == 1 and region.input not in graph.outputs
            and _weighted_output(graph, region.input, producers, consumers)):
        return False
    return not (region.axis is not None and all(n.op in ("Mul", "Div", "Add", "Sub") for n in region.nodes))


MASK_FILL_LIMIT = -1e4  # an additive mask term at or below this makes exp underflow to 0 in float32


@dataclass(frozen=True)
class SoftmaxMask:
    """Attention's masked scores: Softmax(Add(scores, Where(condition, a, b))) with one of a, b zero and the
    other <= MASK_FILL_LIMIT. The positions that take part are `condition` (or its negation: `negate`)."""

    scores: str
    add: Node
    where: Node
    condition: str
    negate: bool


def softmax_mask(graph: Graph, node: Node, producers: dict[str, Node], consumers: dict[str, list[Node]]
                 ) -> SoftmaxMask | None:
    """The mask pattern of a Softmax node (`SoftmaxMask`), or None."""
    add = producers.get(node.inputs[0]) if node.op == "Softmax" else None
    if add is None or add.op != "Add" or len(add.inputs) != 2 or len(consumers.get(add.outputs[0], [])) != 1 \
            or add.outputs[0] in graph.outputs:
        return None
    for scores, term in (add.inputs, add.inputs[::-1]):
        where = producers.get(term)
        if where is None or where.op != "Where" or not _is_activation(graph, scores):
            continue
        condition, fills = where.inputs[0], [graph.constants.get(i) for i in where.inputs[1:]]
        if graph.values[condition].dtype != "bool" or any(f is None or f.size != 1 for f in fills):
            continue
        if tuple(np.broadcast_shapes(graph.values[condition].shape, graph.values[scores].shape)) \
                != graph.values[scores].shape:
            continue
        a, b = (float(f.reshape(-1)[0]) for f in fills)  # type: ignore[union-attr]
        if a == 0.0 and b <= MASK_FILL_LIMIT:
            return SoftmaxMask(scores, add, where, condition, negate=False)
        if b == 0.0 and a <= MASK_FILL_LIMIT:
            return SoftmaxMask(scores, add, where, condition, negate=True)
    return None


def _softmax_input(graph: Graph, node: Node, producers: dict[str, Node], consumers: dict[str, list[Node]]
                   ) -> str | None:
    """The value a Softmax the integer region takes in (QSoftmax) reads as codes: logits straight from a
    weighted op (and its bias, scale), or attention's scores under an additive mask (`softmax_mask`:
    quantizing the sum would lose the scores to the -big term). None for any other Softmax."""
    if node.op != "Softmax":
        return None
    mask = softmax_mask(graph, node, producers, consumers)
    logits = mask.scores if mask is not None else node.inputs[0]
    if _is_activation(graph, logits) and _weighted_output(graph, logits, producers, consumers):
        return logits
    return None


def _quantized_softmax(graph: Graph, node: Node, producers: dict[str, Node], consumers: dict[str, list[Node]]) -> bool:
    return _softmax_input(graph, node, producers, consumers) is not None


def float_table_region(graph: Graph, name: str, producers: dict[str, Node], consumers: dict[str, list[Node]],
                       stop: set[str] | frozenset = frozenset()) -> LookupRegion | None:
    """The unary elementwise subgraph computing graph output `name` with a transcendental op (a detector's
    final Sigmoid), or None. In the integer region its input is quantized and the lowering reads the
    float output from a table of float32 values, one per input code: exact, where a float sigmoid
    differs between implementations."""
    if name not in graph.outputs:
        return None
    region = lookup_region(graph, name, producers, consumers, stop)
    if region is None or not any(n.op in TRANSCENDENTAL for n in region.nodes):
        return None
    return region


def activation_points(graph: Graph, integer: bool = False) -> tuple[set[str], list[tuple[str, str]]]:
    """(activations to quantize, tie edges between them); `integer` widens the region (module docstring)."""
    producers = graph.producers()
    consumers = graph.consumers() if integer else {}
    points: set[str] = set()
    ties: list[tuple[str, str]] = []
    work = [i for n in graph.nodes if n.op in WEIGHTED_OPS for i in n.inputs if _is_activation(graph, i)]
    if integer:
        work += [n.outputs[0] for n in graph.nodes if _quantized_softmax(graph, n, producers, consumers)]
        work += [region.input for name in graph.outputs
                 if (region := float_table_region(graph, name, producers, consumers)) is not None]
        work += _layer_norm_points(graph)
    while work:
        name = work.pop()
        if name in points:
            continue
        points.add(name)
        node = producers.get(name)
        if node is None:
            continue
        if _is_tying(node):
            data = [i for i in (node.inputs if node.op == "Concat" else node.inputs[:1]) if _is_activation(graph, i)]
            ties += [(name, i) for i in data]
            if node.op in ("Split", "Concat"):
                ties += [(name, o) for o in node.outputs if o != name and o in graph.values]
            work += data
        elif integer and (region := _table_region(graph, name, producers, consumers)) is not None:
            work.append(region.input)  # before QAdd / QMul: x * f(x) (GELU's tanh form) is one table
        elif _propagates(graph, node, integer):
            work += [i for i in node.inputs if _is_activation(graph, i)]
        elif integer and (logits := _softmax_input(graph, node, producers, consumers)) is not None:
            work.append(logits)
    return points, ties


def _table_region(graph: Graph, name: str, producers: dict[str, Node], consumers: dict[str, list[Node]]
                  ) -> LookupRegion | None:
    """The unary elementwise region computing `name` when its input joins the integer region (`_widens`)."""
    region = lookup_region(graph, name, producers, consumers)
    return region if region is not None and _widens(graph, region, producers, consumers) else None


def _layer_norm_points(graph: Graph) -> list[str]:
    """LayerNorm data inputs (QLayerNorm reads codes), and LayerNorm outputs that leave the graph."""
    points = [n.inputs[0] for n in graph.nodes if n.op == "LayerNormalization" and _is_activation(graph, n.inputs[0])]
    return points + [n.outputs[0] for n in graph.nodes if n.op == "LayerNormalization" and n.outputs[0] in graph.outputs]


WIDE_FORMAT = "int16"


def wide_points(graph: Graph, groups: list[list[str]] | None = None) -> set[str]:
    """The activations of an integer region that get WIDE_FORMAT (module docstring): LayerNorm inputs and
    outputs that are quantized only for QLayerNorm, Softmax outputs that leave the graph, the Adds computing
    them and their operands, through ties; then, to a fixpoint, the inputs of the per-tensor tables and
    Softmaxes that compute wide values (16-bit codes in, 16-bit codes out). A tied group is wide only when
    no member has a reader that needs 8-bit codes."""
    groups = tied_groups(graph, integer=True) if groups is None else groups
    group_of = {name: i for i, group in enumerate(groups) for name in group}
    producers, consumers = graph.producers(), graph.consumers()
    seeds = [v for v in _layer_norm_points(graph) + _softmax_outputs(graph, producers, consumers) if v in group_of]
    wide_readers: dict[str, set[str]] = {}  # value -> the table / Softmax nodes that read it as wide codes
    while True:
        wide: set[int] = set()
        work = list(seeds)
        while work:
            index = group_of[work.pop()]
            if index in wide:
                continue
            wide.add(index)
            for name in groups[index]:
                node = producers.get(name)
                if node is not None and node.op == "Add" and _propagates(graph, node, integer=True):
                    work += [i for i in node.inputs if i in group_of]
        wide -= {i for i in wide for name in groups[i] if any(
            _needs_narrow_codes(graph, name, user, producers, wide_readers) for user in consumers.get(name, []))}
        names = {name for i in wide for name in groups[i]}
        found = _wide_readers(graph, names, producers, consumers)
        fresh = {v: nodes for v, nodes in found.items() if v in group_of and v not in wide_readers}
        if not fresh:
            return names
        wide_readers.update(fresh)
        seeds += list(fresh)


def _softmax_outputs(graph: Graph, producers: dict[str, Node], consumers: dict[str, list[Node]]) -> list[str]:
    """Outputs of QSoftmaxes that leave the graph (a classifier's probabilities)."""
    return [n.outputs[0] for n in graph.nodes if n.outputs[0] in graph.outputs
            and _quantized_softmax(graph, n, producers, consumers)]


def _wide_readers(graph: Graph, names: set[str], producers: dict[str, Node], consumers: dict[str, list[Node]]
                  ) -> dict[str, set[str]]:
    """For the wide values `names`: the inputs of the per-tensor tables and the Softmaxes computing them,
    each with the nodes that read it."""
    readers: dict[str, set[str]] = {}
    for name in names:
        region = _table_region(graph, name, producers, consumers)
        node = producers.get(name)
        if region is not None and region.axis is None:
            readers.setdefault(region.input, set()).update(n.name for n in region.nodes)
        elif node is not None and (logits := _softmax_input(graph, node, producers, consumers)) is not None:
            readers.setdefault(logits, set()).add(node.name)
    return readers


def _needs_narrow_codes(graph: Graph, name: str, user: Node, producers: dict[str, Node],
                        wide_readers: dict[str, set[str]]) -> bool:
    """Whether `user` reads activation `name` in an integer op whose kernel takes 8-bit codes only."""
    if user.name in wide_readers.get(name, ()):
        return False  # a table or Softmax computing a wide value
    if user.op in WEIGHTED_OPS or user.op in ("Softmax", "AveragePool", "GlobalAveragePool"):
        return True
    if user.op == "Mul" and all(_is_activation(graph, i) for i in user.inputs):
        return True  # QMul
    if user.op not in ELEMENTWISE or _propagates(graph, user, integer=True):
        return False  # LayerNorm, QAdd, ops on codes, float ops (they read dequantized codes)
    source = producers.get(name)  # a per-channel rescaling of a LayerNorm output folds into a QLayerNorm
    affine = user.op in ("Mul", "Div", "Add", "Sub") and any(i in graph.constants for i in user.inputs)
    return not (affine and source is not None and source.op == "LayerNormalization")


def tied_groups(graph: Graph, integer: bool | None = None) -> list[list[str]]:
    """Groups of activation values that must share one quantizer (singletons included), sorted.
    `integer` (default: what graph.metadata records, `is_integer_region`) widens the region."""
    points, ties = activation_points(graph, is_integer_region(graph) if integer is None else integer)
    relation = nx.Graph()
    relation.add_nodes_from(points)
    relation.add_edges_from((a, b) for a, b in ties if a in points or b in points)
    groups = [sorted(component) for component in nx.connected_components(relation)]
    return sorted(groups)


def check_ties(graph: Graph) -> None:
    """Raise IRError when two values that must share a quantizer carry different QuantSpecs."""
    for group in tied_groups(graph):
        specs = [(name, graph.values[name].quant) for name in group if name in graph.values]
        quantized = [(n, q) for n, q in specs if q is not None]
        if not quantized:
            continue
        if len(quantized) != len(specs):
            missing = [n for n, q in specs if q is None]
            raise IRError(f"tied values {group} are partly quantized: {missing} have no QuantSpec")
        first_name, first = quantized[0]
        for name, spec in quantized[1:]:
            if not spec.same_as(first):
                raise IRError(f"tied values {first_name!r} and {name!r} carry different QuantSpecs")
