"""The IR: verifier invariants, text dump, and exact JSON + safetensors round trip."""

import numpy as np
import pytest

from bitsmith import serialize
from bitsmith.errors import IRError
from bitsmith.ir import Graph, Node, QuantSpec, verify
from bitsmith.ops import OPS


def small_graph() -> Graph:
    g = Graph("tiny")
    g.add_value("x", (1, 2, 4, 4), "float32")
    g.inputs.append("x")
    g.add_constant("w", np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3) / 10)
    g.add_constant("b", np.array([0.5, -0.25], np.float32))
    g.add_value("y", (1, 2, 4, 4), "float32")
    g.add_value("z", (1, 2, 4, 4), "float32")
    g.nodes.append(Node("Conv", "conv0", ["x", "w", "b"], ["y"],
                        {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1}))
    g.nodes.append(Node("Clip", "clip0", ["y"], ["z"], {"min": 0.0, "max": float("inf")}))
    g.outputs.append("z")
    return g


def test_verify_accepts_well_formed_graph():
    verify(small_graph(), OPS)


def test_verify_rejects_use_before_definition():
    g = small_graph()
    g.nodes.reverse()
    with pytest.raises(IRError, match="not defined before use"):
        verify(g, OPS)


def test_verify_rejects_double_assignment():
    g = small_graph()
    g.nodes[1].outputs = ["y"]
    with pytest.raises(IRError, match="assigned twice"):
        verify(g, OPS)


def test_verify_rejects_constant_type_mismatch():
    g = small_graph()
    g.values["b"].shape = (3,)
    with pytest.raises(IRError, match="constant 'b'"):
        verify(g, OPS)


def test_verify_rejects_unknown_op_and_dtype():
    g = small_graph()
    g.nodes[1].op = "Frobnicate"
    with pytest.raises(IRError, match="unknown op"):
        verify(g, OPS)
    g = small_graph()
    g.values["z"].dtype = "complex64"
    with pytest.raises(IRError, match="unknown dtype"):
        verify(g, OPS)


def test_verify_rejects_missing_output():
    g = small_graph()
    g.outputs = ["nowhere"]
    with pytest.raises(IRError, match="never produced"):
        verify(g, OPS)


def test_dump_reads_like_code():
    text = small_graph().dump()
    assert "graph tiny(%x: float32[1,2,4,4])" in text
    assert "%y: float32[1,2,4,4] = Conv(%x, $w, $b)" in text
    assert "max=inf" in text and "return %z" in text


def test_round_trip_is_exact_including_quant_specs():
    g = small_graph()
    g.values["y"].quant = QuantSpec("int8", 8, "channel", axis=1, scale=np.array([0.1, 0.2], np.float32),
                                    zero_point=np.array([0, 3], np.int32), symmetric=False)
    g.values["x"].quant = QuantSpec("mxfp4", 4, "block", axis=1, block_size=32, scale_format="e8m0")
    g.metadata["opset"] = 17
    g.add_constant("alpha", np.array(2.0, np.float32))  # 0-d arrays must stay 0-d
    text, blob = serialize.dumps(g)
    back = serialize.loads(text, blob)
    assert serialize.dumps(back) == (text, blob)
    assert back.dump() == g.dump()
    for name, array in g.constants.items():
        assert back.constants[name].dtype == array.dtype
        assert np.array_equal(back.constants[name], array)
    assert back.values["y"].quant.same_as(g.values["y"].quant)
    assert back.values["x"].quant.same_as(g.values["x"].quant)
    assert back.nodes[1].attrs["max"] == float("inf")
    assert back.constants["alpha"].shape == ()


def test_quant_spec_rejects_inconsistent_granularity():
    with pytest.raises(IRError, match="needs an axis"):
        QuantSpec("int8", 8, "channel")
    with pytest.raises(IRError, match="block_size"):
        QuantSpec("mxfp4", 4, "block", axis=0)
    with pytest.raises(IRError, match="unknown format"):
        QuantSpec("int3", 3)


def test_remove_unused_drops_dead_nodes_and_constants():
    g = small_graph()
    g.add_constant("dead_w", np.ones(3, np.float32))
    g.add_value("dead", (1, 2, 4, 4), "float32")
    g.nodes.append(Node("Relu", "dead_relu", ["y"], ["dead"]))
    g.remove_unused()
    assert [n.name for n in g.nodes] == ["conv0", "clip0"]
    assert "dead_w" not in g.constants and "dead" not in g.values
    verify(g, OPS)
