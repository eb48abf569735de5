"""Small ONNX models, one per op and attribute combination that is easy to get wrong.

Each case is (name, model, feeds). Shared by the frontend tests (IR interpreter vs ONNX Runtime)
and the backend tests (TVM vs ONNX Runtime).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bitsmith.measure import rel_err  # noqa: F401  (re-exported for the tests)

RNG = np.random.default_rng(0)
F32 = TensorProto.FLOAT


def model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "case", inputs, outputs, list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def tensor_input(name, shape, elem=F32):
    return helper.make_tensor_value_info(name, elem, shape)


def out(name="y", elem=F32):
    return helper.make_tensor_value_info(name, elem, None)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def single(op, x_shape, attrs=None, consts=(), opset=17, extra_inputs=(), elem=F32, feed=None):
    """A one-node model: input x (+ named constants) -> op -> y."""
    names = ["x"] + [name for name, _ in consts] + list(extra_inputs)
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    m = model([node], [tensor_input("x", x_shape, elem)], [out()], [init(n, a) for n, a in consts], opset)
    return m, {"x": randn(*x_shape) if feed is None else feed}


def cases():
    c = {}
    c["conv_asym_pads_group"] = single("Conv", [1, 4, 9, 7], {"pads": [1, 0, 2, 1], "strides": [2, 1], "group": 2},
                                       [("w", randn(6, 2, 3, 3)), ("b", randn(6))])
    c["conv_same_upper_strided"] = single("Conv", [1, 3, 10, 10], {"auto_pad": "SAME_UPPER", "strides": [3, 3]},
                                          [("w", randn(4, 3, 3, 3))])
    c["conv1d"] = single("Conv", [2, 3, 20], {"pads": [2, 2], "strides": [3]}, [("w", randn(5, 3, 5))])
    c["depthwise_conv"] = single("Conv", [1, 8, 12, 12], {"pads": [1, 1, 1, 1], "group": 8},
                                 [("w", randn(8, 1, 3, 3)), ("b", randn(8))])
    c["conv_transpose_pads_outpad"] = single("ConvTranspose", [1, 4, 5, 5],
                                             {"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 1]},
                                             [("w", randn(4, 3, 3, 3)), ("b", randn(3))])
    c["maxpool_ceil"] = single("MaxPool", [1, 2, 11, 11], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1})
    c["maxpool_asym_pads"] = single("MaxPool", [1, 2, 8, 8], {"kernel_shape": [2, 2], "strides": [2, 2],
                                                              "pads": [0, 0, 1, 1]})
    c["avgpool_include_pad"] = single("AveragePool", [1, 2, 8, 8], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                                    "count_include_pad": 1})
    c["avgpool_exclude_pad"] = single("AveragePool", [1, 2, 8, 8], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
    c["global_avg_pool"] = single("GlobalAveragePool", [2, 3, 5, 7])
    c["global_max_pool_1d"] = single("GlobalMaxPool", [2, 3, 9])
    c["gemm_transb_alpha_beta"] = _gemm()
    c["matmul_batched"] = single("MatMul", [2, 3, 4, 5], consts=[("w", randn(5, 6))])
    c["softmax_opset11_axis1"] = single("Softmax", [2, 3, 4], {"axis": 1}, opset=11)
    c["softmax_opset13_axis1"] = single("Softmax", [2, 3, 4], {"axis": 1}, opset=13)
    c["layer_norm"] = single("LayerNormalization", [2, 5, 8], {"epsilon": 1e-3},
                             [("s", randn(8)), ("bias", randn(8))])
    c["batch_norm"] = single("BatchNormalization", [2, 3, 4, 4], {"epsilon": 1e-3},
                             [("s", randn(3)), ("bb", randn(3)), ("m", randn(3)), ("v", np.abs(randn(3)) + 0.5)])
    c["clip_min_only_opset13"] = single("Clip", [3, 4], consts=[("lo", np.array(-0.2, np.float32))], opset=13)
    c["hard_sigmoid"] = single("HardSigmoid", [3, 4], {"alpha": 0.1666667, "beta": 0.5})
    c["hard_swish"] = single("HardSwish", [3, 4], opset=14)
    c["prelu"] = single("PRelu", [1, 3, 4, 4], consts=[("slope", np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1))])
    c["leaky_relu"] = single("LeakyRelu", [3, 4], {"alpha": 0.3})
    c["erf_gelu_parts"] = single("Erf", [3, 4])
    c["resize_nearest_asymmetric_floor"] = single(
        "Resize", [1, 2, 3, 4], {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
        [("roi", np.zeros(0, np.float32)), ("scales", np.array([1, 1, 2, 3], np.float32))])
    c["resize_linear_half_pixel_sizes"] = single(
        "Resize", [1, 2, 5, 4], {"mode": "linear"},
        [("roi", np.zeros(0, np.float32)), ("scales", np.zeros(0, np.float32)), ("sizes", np.array([1, 2, 8, 9], np.int64))])
    c["resize_linear_align_corners"] = single(
        "Resize", [1, 1, 4, 4], {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
        [("roi", np.zeros(0, np.float32)), ("scales", np.array([1, 1, 2, 2], np.float32))])
    c["resize_nearest_half_pixel_downscale"] = single(
        "Resize", [1, 1, 9, 9], {"mode": "nearest"},
        [("roi", np.zeros(0, np.float32)), ("scales", np.array([1, 1, 0.5, 0.5], np.float32))])
    c["reshape_zero_and_minus_one"] = single("Reshape", [2, 3, 4], consts=[("shape", np.array([0, -1], np.int64))])
    c["flatten_axis2"] = single("Flatten", [2, 3, 4, 5], {"axis": 2})
    c["transpose"] = single("Transpose", [2, 3, 4], {"perm": [2, 0, 1]})
    c["slice_negative_step"] = single("Slice", [6, 5], consts=[("st", np.array([-1, 4], np.int64)),
                                                              ("en", np.array([-100, 0], np.int64)),
                                                              ("ax", np.array([0, 1], np.int64)),
                                                              ("sp", np.array([-2, -1], np.int64))])
    c["slice_clamped_end"] = single("Slice", [6, 5], consts=[("st", np.array([1], np.int64)),
                                                            ("en", np.array([1000], np.int64)),
                                                            ("ax", np.array([1], np.int64))])
    c["split_opset13"] = _split()
    c["squeeze_no_axes"] = single("Squeeze", [1, 3, 1, 4], opset=11)
    c["unsqueeze_negative_axes"] = single("Unsqueeze", [3, 4], consts=[("axes", np.array([-1, 0], np.int64))])
    c["expand_bidirectional"] = single("Expand", [3, 1], consts=[("shape", np.array([2, 1, 4], np.int64))])
    c["gather_negative_indices"] = single("Gather", [5, 4], {"axis": 0}, [("idx", np.array([[0, -1], [2, 3]], np.int64))])
    c["pad_reflect"] = single("Pad", [1, 2, 4, 4], {"mode": "reflect"}, [("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))])
    c["pad_constant_value"] = single("Pad", [2, 3], consts=[("pads", np.array([1, 0, 0, 2], np.int64)),
                                                           ("v", np.array(1.5, np.float32))])
    c["reduce_mean_axes_input_opset18"] = single("ReduceMean", [2, 3, 4], {"keepdims": 0},
                                                 [("axes", np.array([-1, 1], np.int64))], opset=18)
    c["reduce_sum_opset13"] = single("ReduceSum", [2, 3, 4], consts=[("axes", np.array([1], np.int64))], opset=13)
    c["reduce_max_attr_axes"] = single("ReduceMax", [2, 3, 4], {"axes": [0, 2]}, opset=13)
    c["depth_to_space_crd"] = single("DepthToSpace", [1, 8, 2, 3], {"blocksize": 2, "mode": "CRD"})
    c["tile"] = single("Tile", [2, 3], consts=[("rep", np.array([2, 3], np.int64))])
    c["where_equal_cast"] = _where_equal_cast()
    c["shape_arithmetic_reshape"] = _shape_arithmetic()
    return c


def _gemm():
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0, transB=1)
    m = model([node], [tensor_input("x", [3, 4])], [out()], [init("w", randn(5, 4)), init("c", randn(5))])
    return m, {"x": randn(3, 4)}


def _split():
    node = helper.make_node("Split", ["x", "s"], ["a", "b", "c"], axis=1)
    m = model([node], [tensor_input("x", [2, 7])], [out("a"), out("b"), out("c")], [init("s", np.array([2, 4, 1], np.int64))])
    return m, {"x": randn(2, 7)}


def _where_equal_cast():
    nodes = [helper.make_node("Equal", ["m", "zero"], ["eq"]),
             helper.make_node("Cast", ["m"], ["mf"], to=F32),
             helper.make_node("Where", ["eq", "x", "mf"], ["y"])]
    m = model(nodes, [tensor_input("x", [2, 5]), tensor_input("m", [2, 5], TensorProto.INT64)], [out()],
              [init("zero", np.array(0, np.int64))])
    return m, {"x": randn(2, 5), "m": RNG.integers(0, 3, (2, 5)).astype(np.int64)}


def _shape_arithmetic():
    """The Shape -> Gather -> Unsqueeze -> Concat -> Reshape chain exporters emit: folded at import."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    m = model(nodes, [tensor_input("x", [3, 4, 5])], [out()],
              [init("i0", np.array(0, np.int64)), init("ax0", np.array([0], np.int64)), init("minus1", np.array([-1], np.int64))])
    return m, {"x": randn(3, 4, 5)}


def ort_run(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def CASES_CONV_TRANSPOSE_BN():
    """Grouped ConvTranspose followed by BatchNorm (the BN folds into the transposed weights)."""
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], strides=[2, 2], group=2),
             helper.make_node("BatchNormalization", ["t", "s", "bb", "m", "v"], ["y"], epsilon=1e-3)]
    inits = [init("w", randn(4, 3, 3, 3)), init("s", randn(6)), init("bb", randn(6)), init("m", randn(6)),
             init("v", np.abs(randn(6)) + 0.5)]
    return model(nodes, [tensor_input("x", [1, 4, 5, 5])], [out()], inits), {"x": randn(1, 4, 5, 5)}
