"""The quantization driver: where quantizers go, tied quantizers, calibration data checks, fidelity."""

import numpy as np
import pytest
from onnx import helper

from bitsmith import zoo
from bitsmith.errors import DataError, IRError, UsageError
from bitsmith.formats import fake_quant
from bitsmith.frontends.onnx import import_onnx
from bitsmith.passes.quant_points import activation_points, check_ties, tied_groups, weight_points
from bitsmith.quantize import quantize
from bitsmith.recipes import PRESETS, QuantRecipe
from bitsmith.simulate import Simulator

from onnx_cases import init, model, out, randn, tensor_input


def concat_pool_graph():
    """conv_a, conv_b -> Concat -> MaxPool -> Reshape -> MatMul: one tied group spans all of it."""
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["x", "wb"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["ra", "b"], ["c"], axis=1),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["p", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "wm"], ["y"])]
    inits = [init("wa", randn(4, 3, 3, 3)), init("wb", randn(2, 3, 3, 3)), init("shape", np.array([2, -1], np.int64)),
             init("wm", randn(6 * 4 * 4, 5))]
    return import_onnx(model(nodes, [tensor_input("x", [2, 3, 8, 8])], [out()], inits))


def test_quant_points_follow_the_integer_region():
    graph = concat_pool_graph()
    points, _ = activation_points(graph)
    assert points == {"x", "ra", "b", "c", "p", "flat"}  # not the Conv output 'a' (fused with its Relu)
    assert sorted(weight_points(graph)) == ["wa", "wb", "wm"]
    assert weight_points(graph)["wm"].channel_axis == 1 and weight_points(graph)["wa"].channel_axis == 0


def test_concat_maxpool_reshape_share_one_quantizer():
    graph = concat_pool_graph()
    assert ["b", "c", "flat", "p", "ra"] in tied_groups(graph)
    calib = [{"x": randn(2, 3, 8, 8)} for _ in range(3)]
    q = quantize(graph, PRESETS["w8a8"].with_(algorithms=()), calib)
    spec = q.values["c"].quant
    for name in ("ra", "b", "p", "flat"):
        assert q.values[name].quant.same_as(spec)
    q.values["p"].quant = q.values["x"].quant  # break a tie on purpose
    with pytest.raises(IRError, match="different QuantSpecs"):
        check_ties(q)


def test_weight_only_recipe_leaves_activations_float():
    q = quantize(concat_pool_graph(), PRESETS["w8_weight_only"], [{"x": randn(2, 3, 8, 8)}])
    quantized = {n for n, v in q.values.items() if v.quant is not None}
    assert quantized == {"wa", "wb", "wm"}



def test_float64_simulation_differs_from_float32_by_float_rounding_only():
    """Simulator(float64=True): float64 outputs, within float32 rounding of the float32 simulation when no
    rounding boundary lies between them (W8 weight-only: weights quantized, activations float)."""
    graph = concat_pool_graph()
    feeds = {"x": randn(2, 3, 8, 8)}
    q = quantize(graph, PRESETS["w8_weight_only"], [feeds])
    single, double = Simulator(q).run(feeds), Simulator(q, float64=True).run(feeds)
    for name in graph.outputs:
        assert double[name].dtype == np.float64
        assert np.abs(single[name] - double[name]).max() <= 1e-5 * np.abs(double[name]).max()
    with pytest.raises(UsageError, match="float64"):
        Simulator(quantize(graph, PRESETS["w8a8"], [feeds]), integer_exact=True, float64=True)

def test_simulated_weights_are_exactly_the_formats_fake_quant():
    q = quantize(concat_pool_graph(), QuantRecipe("w4", weights="int4", activations=None), [])
    sim = Simulator(q)
    for name in ("wa", "wb", "wm"):
        np.testing.assert_array_equal(sim.constants[name].numpy(), fake_quant(q.constants[name], q.values[name].quant))
        assert len(np.unique(sim.constants[name].numpy()[0])) <= 16


@pytest.mark.parametrize("bad, message", [
    ([], "calibration set is empty"),
    ([{"x": np.full((2, 3, 8, 8), np.nan, np.float32)}], "NaN or Inf"),
    ([{"x": np.zeros((1, 3, 8, 8), np.float32)}], r"must be float32\[2,3,8,8\]"),
    ([{"x": np.zeros((2, 3, 8, 8), np.float64)}], r"must be float32\[2,3,8,8\], got float64"),
    ([{"y": np.zeros((2, 3, 8, 8), np.float32)}], "missing"),
])
def test_bad_calibration_data_is_refused(bad, message):
    with pytest.raises(DataError, match=message):
        quantize(concat_pool_graph(), PRESETS["w8a8"], bad)


def test_w8a8_onet_keeps_face_accuracy_on_real_faces():
    graph = import_onnx(zoo.onnx_path("mtcnn_onet"), zoo.input_shapes("mtcnn_onet", batch=50))
    calib = zoo.inputs("mtcnn_onet", 2, batch=50, split="calib")
    feeds = zoo.inputs("mtcnn_onet", 4, batch=50, split="eval")
    labels = np.concatenate(zoo.labels("mtcnn_onet", 4, batch=50, split="eval"))
    q = Simulator(quantize(graph, PRESETS["w8a8"], calib))
    fp = Simulator(graph, quantized=False)
    fp_pred = np.concatenate([fp.run(f)["prob"].argmax(-1) for f in feeds])
    q_pred = np.concatenate([q.run(f)["prob"].argmax(-1) for f in feeds])
    assert (fp_pred == labels).mean() >= 0.97
    assert abs((q_pred == labels).mean() - (fp_pred == labels).mean()) <= 0.005
