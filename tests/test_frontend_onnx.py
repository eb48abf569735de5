"""ONNX import: op semantics against ONNX Runtime, constant folding, and the errors bad models get."""

import numpy as np
import onnx
import pytest
from onnx import helper

from bitsmith.errors import ModelError, UnsupportedError, UsageError
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import run_graph

from onnx_cases import cases, model, ort_run, out, rel_err, tensor_input

CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_onnxruntime(name):
    m, feeds = CASES[name]
    graph = import_onnx(m)
    ours = run_graph(graph, feeds)
    ref = ort_run(m, feeds)
    for out_name, expected in zip(graph.outputs, ref):
        assert ours[out_name].shape == expected.shape
        assert rel_err(ours[out_name], expected) < 1e-5, out_name


def test_shape_arithmetic_is_folded_away():
    m, _ = CASES["shape_arithmetic_reshape"]
    graph = import_onnx(m)
    assert [n.op for n in graph.nodes] == ["Reshape"]
    assert graph.nodes[0].attrs["shape"] == [3, 20]


def test_gemm_becomes_matmul_plus_add():
    m, _ = CASES["gemm_transb_alpha_beta"]
    assert import_onnx(m).op_counts() == {"Add": 1, "MatMul": 1}


def test_unsupported_ops_are_listed_in_one_error():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"], name="nz_node"),
             helper.make_node("Unique", ["x"], ["u"], name="unique_a"),
             helper.make_node("Unique", ["x"], ["u2"], name="unique_b"),
             helper.make_node("Relu", ["x"], ["y"])]
    m = model(nodes, [tensor_input("x", [4])], [out("y"), out("nz", onnx.TensorProto.INT64), out("u"), out("u2")])
    with pytest.raises(UnsupportedError) as err:
        import_onnx(m)
    text = str(err.value)
    assert "NonZero (opset 17): nodes 'nz_node'" in text
    assert "Unique (opset 17): nodes 'unique_a', 'unique_b'" in text
    assert err.value.exit_code == 4


def test_dynamic_input_without_hint_names_input_and_dims():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [tensor_input("x", ["batch", 3])], [out()])
    with pytest.raises(UsageError, match=r"input 'x' .* dynamic dimensions \[0\] \(batch\)"):
        import_onnx(m)
    graph = import_onnx(m, {"x": (5, 3)})
    assert graph.values["x"].shape == (5, 3)


def test_shape_hint_that_contradicts_the_model_is_refused():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [tensor_input("x", ["batch", 3])], [out()])
    with pytest.raises(UsageError, match="does not fit"):
        import_onnx(m, {"x": (5, 4)})


def test_truncated_file_is_a_model_error(tmp_path):
    m, _ = CASES["conv1d"]
    blob = m.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelError, match="cut.onnx"):
        import_onnx(path)


def test_wrong_file_type_is_a_model_error(tmp_path):
    path = tmp_path / "picture.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(ModelError, match="picture.onnx"):
        import_onnx(path)


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        import_onnx(tmp_path / "nope.onnx")


def test_opset_outside_range_is_unsupported():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [tensor_input("x", [2])], [out()], opset=9)
    with pytest.raises(UnsupportedError, match="opset 9 is outside"):
        import_onnx(m)


def test_graph_without_inputs_is_a_model_error():
    m = model([helper.make_node("Relu", ["c"], ["y"])], [], [out()], [onnx.numpy_helper.from_array(np.ones(2, np.float32), "c")])
    with pytest.raises(ModelError, match="no inputs"):
        import_onnx(m)
