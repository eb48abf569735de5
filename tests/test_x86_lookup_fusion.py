"""Integer graphs with activation tables (QLookup) on x86: the lookups between convolutions cost no
layout transposes (backends/transpose_sinking.py), fuse into the producing convolution's kernel, and a
lookup of a lookup is one lookup in the composed table (relax_emit); all bit for bit the reference."""

from __future__ import annotations

import numpy as np
import tvm

from bitsmith.backends import x86
from bitsmith.backends.relax_emit import emit_relax
from bitsmith.ir import Graph, Node, verify
from bitsmith.ops import OPS
from bitsmith.targets import load
from test_integer_lowering import assert_bit_exact, codes, requant_attrs, requant_constants


def conv_lookup_lookup_conv() -> Graph:
    """x [1, 8, 10, 10] -> QConv 1x1 -> QLookup -> QLookup -> QConv 3x3 -> y, uint8 codes throughout."""
    graph = Graph(name="conv_lookups_conv")
    graph.add_value("x", (1, 8, 10, 10), "uint8")
    graph.inputs.append("x")
    for name, shape in (("c1", (1, 16, 10, 10)), ("l1", (1, 16, 10, 10)), ("l2", (1, 16, 10, 10)),
                        ("y", (1, 8, 10, 10))):
        graph.add_value(name, shape, "uint8")
    for index, (w, pads) in enumerate(((codes(16, 8, 1, 1, dtype="int8"), [0, 0, 0, 0]),
                                       (codes(8, 16, 3, 3, dtype="int8"), [1, 1, 1, 1]))):
        prefix = f"conv{index}_"
        constants = {"w": w, "w_zero_point": np.array(0, np.int32), "bias": codes(w.shape[0], dtype="int16")
                     .astype(np.int32), **requant_constants(w.shape[0])}
        for name, array in constants.items():
            graph.add_constant(prefix + name, array)
        source, out = ("x", "c1") if index == 0 else ("l2", "y")
        attrs = {"strides": [1, 1], "pads": pads, "dilations": [1, 1], "group": 1, "x_zero_point": 7 * index + 3,
                 **requant_attrs()}
        graph.nodes.append(Node("QConv", f"conv{index}", [source, *(prefix + n for n in constants)], [out], attrs))
    for index, (source, out) in enumerate((("c1", "l1"), ("l1", "l2"))):
        graph.add_constant(f"table{index}", codes(256))
        graph.nodes.insert(1 + index, Node("QLookup", f"lookup{index}", [source, f"table{index}"], [out],
                                           {"qmin": 0, "axis": 1}))
    graph.outputs = ["y"]
    verify(graph, OPS)
    return graph


def fused_kernel_names(graph: Graph) -> list[str]:
    target = load("x86-avx2")
    with x86.tvm_target(target):
        mod = tvm.transform.Sequential(x86.scheduling_passes(x86.cpu_shape(target)))(emit_relax(graph).mod)
    return [gv.name_hint for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and not gv.name_hint.endswith("_weight_prepack")]


def test_lookups_between_convolutions_fuse_without_transposes():
    names = fused_kernel_names(conv_lookup_lookup_conv())
    # the graph's NCHW input and output: the NHWC -> NCHW -> NHWC pair around the lookups cancelled
    assert len([n for n in names if "transpose" in n]) == 2, names
    lookups = [n for n in names if "take" in n]
    assert len(lookups) == 1 and "conv2d" in lookups[0], names  # one composed lookup, in the convolution's kernel
    assert lookups[0].count("take") == 1


def test_lookups_between_convolutions_equal_the_reference(tmp_path):
    x = codes(1, 8, 10, 10)
    assert_bit_exact(conv_lookup_lookup_conv(), {"x": x}, tmp_path)
