"""Integer graphs with activation tables (QLookup) on x86: the lookups between convolutions cost no
layout transposes (backends/transpose_sinking.py), fuse into the producing convolution's kernel, and a
lookup of a lookup is one lookup in the composed table (relax_emit); with AVX-512 VBMI a lookup in a
large tensor is a byte-permute kernel of its own (backends/x86_lookup.py); all bit for bit the reference."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from bitsmith.backends import x86
from bitsmith.backends.relax_emit import emit_relax
from bitsmith.ir import Graph, Node, verify
from bitsmith.ops import OPS
from bitsmith.targets import load
from test_integer_lowering import assert_bit_exact, codes, one_node, requant_attrs, requant_constants


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


def scheduled_module(graph: Graph, target_name: str) -> tvm.IRModule:
    target = load(target_name)
    with x86.tvm_target(target):
        return tvm.transform.Sequential(x86.scheduling_passes(x86.cpu_shape(target)))(emit_relax(graph).mod)


def fused_kernel_names(graph: Graph, target_name: str = "x86-avx2") -> list[str]:
    return [gv.name_hint for gv, f in scheduled_module(graph, target_name).functions_items()
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


@pytest.mark.parametrize("code_dtype,qmin,qmax", [("uint8", 0, 255), ("uint8", 7, 206), ("int8", -128, 127)])
def test_with_vbmi_a_large_lookup_is_a_byte_permute_kernel_equal_to_the_reference(tmp_path, code_dtype, qmin, qmax):
    """Every code of the range in a tensor of 12341 codes (64-code steps and a 53-code rest); the table
    indexed from qmin, signed codes included. x86-avx512-vbmi: one kernel of vpermi2b; x86-avx512
    (Cascade Lake, no VBMI): the lookup as before. Bit-exact on this host (its own target)."""
    q = np.resize(np.arange(qmin, qmax + 1), (1, 7, 41, 43)).astype(code_dtype)
    graph = one_node("QLookup", {"q": q}, {"qmin": qmin, "axis": 1}, {"table": codes(qmax - qmin + 1)})
    assert "llvm.x86.avx512.vpermi2var.qi.512" in scheduled_module(graph, "x86-avx512-vbmi").script()
    assert not any("byte_lookup" in name for name in fused_kernel_names(graph, "x86-avx512"))
    assert_bit_exact(graph, {"q": q}, tmp_path)
