"""The FP32 x86 backend: every op emitted to Relax, built, exported, loaded and run, against the reference.

Each per-op case is a one-node IR graph; its output types come from the reference interpreter and its
result is compared with `bitsmith.interpreter.run_graph`. A small CNN-like graph checks the whole road
(emit -> build -> export -> TVMRunner) and the parameter calling convention. The shared ONNX case
table and the zoo models go ONNX -> IR -> TVM and are compared with ONNX Runtime (the three larger
zoo models are marked slow).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import tvm

from bitsmith import zoo
from bitsmith.backends import x86
from bitsmith.backends.relax_emit import EMITTERS, emit_relax
from bitsmith.backends.runner import TVMRunner
from bitsmith.errors import DataError, UnsupportedError
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import TORCH_DTYPES, run_graph, run_node
from bitsmith.ir import Graph, Node, verify
from bitsmith.measure import max_rel_err, ort_run, ort_session, rel_err
from bitsmith.ops import OPS

from onnx_cases import cases as onnx_cases
from onnx_cases import ort_run as ort_run_model

RNG = np.random.default_rng(0)


def rand(*shape: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return RNG.uniform(low, high, shape).astype(np.float32)


def one_node_graph(op: str, inputs: dict[str, np.ndarray], attrs: dict, constants: dict[str, np.ndarray] | None = None,
                   order: list[str] | None = None, outputs: int = 1) -> Graph:
    """A graph with one `op` node; `inputs` are graph inputs, `constants` constant operands.

    `order` lists the node's operands ("" for an omitted one); by default inputs then constants.
    """
    constants = constants or {}
    graph = Graph(name=f"one_{op.lower()}")
    for name, array in inputs.items():
        graph.add_value(name, array.shape, array.dtype.name)
        graph.inputs.append(name)
    for name, array in constants.items():
        graph.add_constant(name, array)
    operands = order if order is not None else [*inputs, *constants]
    names = [f"y{i}" for i in range(outputs)]
    node = Node(op, f"{op.lower()}_0", operands, names, attrs)
    every = {**inputs, **constants}
    results = run_node(node, [torch.from_numpy(np.array(every[n])) if n else None for n in operands])
    for name, result in zip(names, results):
        graph.add_value(name, tuple(result.shape), str(result.dtype).replace("torch.", ""))
    graph.nodes.append(node)
    graph.outputs = names
    verify(graph, OPS)
    return graph


def compile_and_load(graph: Graph, tmp_path) -> tuple[TVMRunner, list[np.ndarray]]:
    emitted = emit_relax(graph)
    library = x86.export(x86.build(emitted, "host"), tmp_path / f"{graph.name}.so")
    return TVMRunner(str(library)), emitted.param_arrays(graph)


def assert_matches_reference(graph: Graph, feeds: dict[str, np.ndarray], tmp_path, rtol: float = 1e-5) -> None:
    runner, params = compile_and_load(graph, tmp_path)
    ours = runner.run([feeds[name] for name in graph.inputs], params)
    reference = run_graph(graph, feeds)
    for name, got in zip(graph.outputs, ours):
        expected = reference[name]
        assert got.shape == expected.shape and got.dtype == expected.dtype, name
        if expected.dtype.kind in "biu" or expected.size == 0:
            np.testing.assert_array_equal(got, expected)
        else:
            scale = max(float(np.abs(expected).max()), 1e-6)
            assert float(np.abs(got - expected).max()) / scale <= rtol, f"{name}: relative error too large"


def check_op(tmp_path, op: str, inputs: dict[str, np.ndarray], attrs: dict | None = None,
             constants: dict[str, np.ndarray] | None = None, order: list[str] | None = None,
             outputs: int = 1, rtol: float = 1e-5) -> None:
    graph = one_node_graph(op, inputs, attrs or {}, constants, order, outputs)
    assert_matches_reference(graph, inputs, tmp_path, rtol)


# ---------------------------------------------------------------------------------------------
# Elementwise
# ---------------------------------------------------------------------------------------------
BINARY = ["Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]


@pytest.mark.parametrize("op", BINARY)
def test_binary_broadcasting(tmp_path, op):
    check_op(tmp_path, op, {"a": rand(2, 3, 4), "b": rand(3, 1)})


def test_pow_with_positive_base(tmp_path):
    check_op(tmp_path, "Pow", {"a": rand(2, 5, low=0.1, high=2.0)}, constants={"b": np.array(3.0, np.float32)})


def test_variadic_max(tmp_path):
    check_op(tmp_path, "Max", {"a": rand(4, 5), "b": rand(5), "c": rand(4, 1)})


def test_integer_division_truncates(tmp_path):
    a = np.array([7, -7, 7, -7, 6, -6], np.int64)
    b = np.array([2, 2, -2, -2, 3, 3], np.int64)
    check_op(tmp_path, "Div", {"a": a, "b": b})


def test_where_and_logic(tmp_path):
    check_op(tmp_path, "Where", {"c": rand(3, 4) > 0, "x": rand(3, 4), "y": rand(4)})
    check_op(tmp_path, "And", {"a": rand(6) > 0, "b": rand(6) > 0})
    check_op(tmp_path, "Or", {"a": rand(6) > 0, "b": rand(6) > 0})
    check_op(tmp_path, "Not", {"a": rand(6) > 0})


UNARY = ["Relu", "Sigmoid", "Tanh", "Exp", "Neg", "Abs", "Erf", "Floor", "Ceil", "Sin", "Cos", "Softplus",
         "HardSwish"]


@pytest.mark.parametrize("op", UNARY)
def test_unary(tmp_path, op):
    check_op(tmp_path, op, {"x": rand(2, 3, 5, low=-4.0, high=4.0)})


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_unary_positive_domain(tmp_path, op):
    check_op(tmp_path, op, {"x": rand(2, 7, low=0.1, high=4.0)})


def test_round_half_to_even(tmp_path):
    check_op(tmp_path, "Round", {"x": np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6], np.float32)})


@pytest.mark.parametrize("attrs", [{"min": 0.0, "max": 6.0}, {"min": -math.inf, "max": 0.5},
                                   {"min": -0.25, "max": math.inf}])
def test_clip(tmp_path, attrs):
    check_op(tmp_path, "Clip", {"x": rand(3, 8, low=-8, high=8)}, attrs)


@pytest.mark.parametrize("op,attrs", [("LeakyRelu", {"alpha": 0.1}), ("Elu", {"alpha": 0.7}),
                                      ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}),
                                      ("Gelu", {"approximate": "none"}), ("Gelu", {"approximate": "tanh"})])
def test_parametric_activation(tmp_path, op, attrs):
    check_op(tmp_path, op, {"x": rand(2, 4, 6, low=-4, high=4)}, attrs)


def test_prelu_per_channel(tmp_path):
    check_op(tmp_path, "PRelu", {"x": rand(1, 20, 3, 3)}, constants={"slope": rand(20, 1, 1, low=0, high=0.5)})


@pytest.mark.parametrize("source,to", [("float32", "int32"), ("float32", "int64"), ("int64", "float32"),
                                       ("float32", "bool"), ("bool", "float32")])
def test_cast(tmp_path, source, to):
    x = rand(3, 5, low=-4, high=4)
    x = (x > 0) if source == "bool" else x.astype(source)
    check_op(tmp_path, "Cast", {"x": x}, {"to": to})


# ---------------------------------------------------------------------------------------------
# Linear algebra and convolution
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a_shape,b_shape", [((7, 20), (20, 5)), ((2, 3, 7, 20), (20, 9)), ((2, 7, 20), (2, 20, 6)),
                                             ((20,), (20, 3))])
def test_matmul(tmp_path, a_shape, b_shape):
    check_op(tmp_path, "MatMul", {"a": rand(*a_shape)}, constants={"b": rand(*b_shape)})


def test_matmul_of_two_inputs(tmp_path):
    check_op(tmp_path, "MatMul", {"a": rand(2, 4, 8, 16), "b": rand(2, 4, 16, 8)})


def conv_attrs(rank: int, strides=None, pads=None, dilations=None, group: int = 1) -> dict:
    return {"strides": strides or [1] * rank, "pads": pads or [0] * (2 * rank),
            "dilations": dilations or [1] * rank, "group": group}


CONV_CASES = [
    # (x shape, w shape, attrs, bias)
    ((1, 3, 12, 12), (8, 3, 3, 3), conv_attrs(2, pads=[1, 1, 1, 1]), True),
    ((2, 4, 11, 9), (6, 4, 3, 2), conv_attrs(2, strides=[2, 1], pads=[0, 1, 1, 0]), False),
    ((1, 8, 10, 10), (8, 1, 3, 3), conv_attrs(2, pads=[1, 1, 1, 1], group=8), True),        # depthwise
    ((1, 8, 9, 9), (12, 2, 3, 3), conv_attrs(2, strides=[2, 2], pads=[1, 1, 1, 1], group=4), True),
    ((1, 4, 12, 12), (5, 4, 3, 3), conv_attrs(2, dilations=[2, 2], pads=[2, 2, 2, 2]), True),
    ((1, 16, 7, 7), (24, 16, 1, 1), conv_attrs(2), True),                                    # pointwise
    ((2, 5, 20), (7, 5, 3), conv_attrs(1, pads=[1, 1]), True),                               # 1-D
    ((1, 6, 17), (6, 1, 5), conv_attrs(1, strides=[2], pads=[2, 1], group=6), False),         # 1-D depthwise
]


@pytest.mark.parametrize("x_shape,w_shape,attrs,bias", CONV_CASES)
def test_conv(tmp_path, x_shape, w_shape, attrs, bias):
    constants = {"w": rand(*w_shape)}
    if bias:
        constants["bias"] = rand(w_shape[0])
    check_op(tmp_path, "Conv", {"x": rand(*x_shape)}, attrs, constants)


CONV_TRANSPOSE_CASES = [
    ((1, 4, 5, 5), (4, 6, 3, 3), dict(conv_attrs(2, strides=[2, 2], pads=[1, 1, 1, 1]), output_padding=[1, 1])),
    ((1, 4, 6, 6), (4, 2, 2, 2), dict(conv_attrs(2, strides=[2, 2], group=2), output_padding=[0, 0])),
    ((2, 3, 8), (3, 5, 4), dict(conv_attrs(1, strides=[2], pads=[1, 1]), output_padding=[0])),
    ((1, 3, 5, 6), (3, 4, 4, 4), dict(conv_attrs(2, strides=[2, 2], pads=[1, 1, 1, 1]), output_padding=[0, 0])),
    ((1, 3, 5, 6), (3, 2, 5, 3), dict(conv_attrs(2, strides=[3, 2], pads=[0, 2, 1, 0]), output_padding=[2, 1])),
    ((1, 6, 4, 4), (6, 1, 3, 3), dict(conv_attrs(2, strides=[2, 2], pads=[1, 1, 1, 1], group=6), output_padding=[1, 1])),
    ((1, 2, 4, 4), (2, 3, 3, 3), dict(conv_attrs(2, strides=[2, 2], dilations=[2, 2]), output_padding=[0, 0])),
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", CONV_TRANSPOSE_CASES)
def test_conv_transpose(tmp_path, x_shape, w_shape, attrs):
    check_op(tmp_path, "ConvTranspose", {"x": rand(*x_shape)}, attrs,
             {"w": rand(*w_shape), "bias": rand(w_shape[1] * attrs["group"])})


# ---------------------------------------------------------------------------------------------
# Normalization and reductions
# ---------------------------------------------------------------------------------------------
def test_batch_norm(tmp_path):
    c = 20
    constants = {"scale": rand(c), "bias": rand(c), "mean": rand(c), "var": rand(c, low=0.5, high=2.0)}
    check_op(tmp_path, "BatchNormalization", {"x": rand(2, c, 4, 4)}, {"epsilon": 1e-5}, constants)


def test_layer_norm_with_offset_mean(tmp_path):
    x = rand(2, 6, 32) + 50.0  # a large mean: a one-pass variance would lose precision here
    check_op(tmp_path, "LayerNormalization", {"x": x}, {"axis": 2, "epsilon": 1e-12},
             {"scale": rand(32), "bias": rand(32)})


def test_layer_norm_without_bias(tmp_path):
    check_op(tmp_path, "LayerNormalization", {"x": rand(3, 4, 5)}, {"axis": 1, "epsilon": 1e-5},
             {"scale": rand(4, 5)})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [1, 2])
def test_softmax(tmp_path, op, axis):
    check_op(tmp_path, op, {"x": rand(2, 5, 7, low=-5, high=5)}, {"axis": axis})


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([0, 2], 0)])
def test_reductions(tmp_path, op, axes, keepdims):
    check_op(tmp_path, op, {"x": rand(3, 4, 5)}, {"axes": axes, "keepdims": keepdims})


def test_argmax(tmp_path):
    check_op(tmp_path, "ArgMax", {"x": rand(3, 7)}, {"axis": 1, "keepdims": 0})


# ---------------------------------------------------------------------------------------------
# Pooling and resizing
# ---------------------------------------------------------------------------------------------
def pool_attrs(kernel, strides, pads, ceil_mode=0, **extra) -> dict:
    return {"kernel_shape": kernel, "strides": strides, "pads": pads, "ceil_mode": ceil_mode, **extra}


MAX_POOL_CASES = [
    ((1, 3, 10, 10), pool_attrs([3, 3], [2, 2], [1, 1, 1, 1], dilations=[1, 1])),
    ((1, 3, 11, 9), pool_attrs([3, 3], [2, 2], [0, 0, 0, 0], ceil_mode=1, dilations=[1, 1])),   # MTCNN-style
    ((1, 2, 12, 12), pool_attrs([2, 2], [2, 2], [0, 0, 0, 0], ceil_mode=1, dilations=[1, 1])),
    ((1, 2, 13, 13), pool_attrs([2, 3], [2, 2], [0, 1, 1, 0], dilations=[1, 1])),
    ((2, 3, 15), pool_attrs([3], [2], [1, 1], ceil_mode=1, dilations=[1])),
]


@pytest.mark.parametrize("shape,attrs", MAX_POOL_CASES)
def test_max_pool(tmp_path, shape, attrs):
    check_op(tmp_path, "MaxPool", {"x": rand(*shape)}, attrs)


AVERAGE_POOL_CASES = [
    ((1, 3, 10, 10), pool_attrs([3, 3], [2, 2], [1, 1, 1, 1], count_include_pad=0)),
    ((1, 3, 10, 10), pool_attrs([3, 3], [2, 2], [1, 1, 1, 1], count_include_pad=1)),
    ((1, 3, 11, 11), pool_attrs([3, 3], [2, 2], [1, 1, 1, 1], ceil_mode=1, count_include_pad=1)),
    ((1, 3, 11, 11), pool_attrs([3, 3], [2, 2], [0, 0, 0, 0], ceil_mode=1, count_include_pad=0)),
    ((1, 2, 9, 9), pool_attrs([2, 2], [2, 2], [0, 0, 1, 1], count_include_pad=1)),
    ((2, 3, 12), pool_attrs([4], [4], [0, 0], count_include_pad=0)),
]


@pytest.mark.parametrize("shape,attrs", AVERAGE_POOL_CASES)
def test_average_pool(tmp_path, shape, attrs):
    check_op(tmp_path, "AveragePool", {"x": rand(*shape)}, attrs)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pools(tmp_path, op):
    check_op(tmp_path, op, {"x": rand(2, 5, 6, 7)})


def resize_attrs(in_shape, sizes, mode, coordinate_mode, nearest_mode="round_prefer_floor", scales=None) -> dict:
    return {"sizes": list(sizes), "scales": scales or [o / i for o, i in zip(sizes, in_shape)], "mode": mode,
            "coordinate_transformation_mode": coordinate_mode, "nearest_mode": nearest_mode}


RESIZE_CASES = [
    ((1, 2, 5, 6), (1, 2, 10, 12), "nearest", "asymmetric", "floor", None),
    ((1, 2, 5, 6), (1, 2, 9, 13), "nearest", "half_pixel", "round_prefer_floor", None),
    ((1, 2, 8, 8), (1, 2, 5, 3), "nearest", "align_corners", "round_prefer_ceil", None),
    ((1, 2, 5, 6), (1, 2, 10, 12), "linear", "half_pixel", "", None),
    ((1, 2, 5, 6), (1, 2, 7, 11), "linear", "pytorch_half_pixel", "", None),
    ((1, 2, 5, 6), (1, 2, 10, 3), "linear", "align_corners", "", None),
    ((1, 2, 5, 6), (1, 2, 10, 12), "linear", "asymmetric", "", None),
    ((1, 2, 7, 7), (1, 2, 3, 3), "linear", "half_pixel", "", [1.0, 1.0, 0.5, 0.5]),  # given scales, not sizes/in
    ((2, 3, 9), (2, 3, 18), "linear", "half_pixel", "", None),                        # 1-D
]


@pytest.mark.parametrize("shape,sizes,mode,coordinate_mode,nearest_mode,scales", RESIZE_CASES)
def test_resize(tmp_path, shape, sizes, mode, coordinate_mode, nearest_mode, scales):
    attrs = resize_attrs(shape, sizes, mode, coordinate_mode, nearest_mode or "round_prefer_floor", scales)
    check_op(tmp_path, "Resize", {"x": rand(*shape)}, attrs)


# ---------------------------------------------------------------------------------------------
# Data movement
# ---------------------------------------------------------------------------------------------
def test_reshape_transpose_squeeze_unsqueeze(tmp_path):
    x = rand(2, 1, 3, 4)
    check_op(tmp_path, "Reshape", {"x": x}, {"shape": [6, 4]})
    check_op(tmp_path, "Transpose", {"x": x}, {"perm": [3, 0, 2, 1]})
    check_op(tmp_path, "Squeeze", {"x": x}, {"axes": [1]})
    check_op(tmp_path, "Unsqueeze", {"x": x}, {"axes": [0, 5]})


def test_concat_and_split(tmp_path):
    check_op(tmp_path, "Concat", {"a": rand(2, 3, 4), "b": rand(2, 5, 4)}, {"axis": 1})
    check_op(tmp_path, "Split", {"x": rand(2, 9, 4)}, {"axis": 1, "split": [2, 3, 4]}, outputs=3)


@pytest.mark.parametrize("starts,ends,axes,steps", [([1, 0], [3, 4], [0, 2], [1, 2]),
                                                    ([4], [-1], [1], [-1]),
                                                    ([5, 3], [1, 0], [1, 2], [-2, -1]),
                                                    ([0], [0], [2], [1])])
def test_slice(tmp_path, starts, ends, axes, steps):
    check_op(tmp_path, "Slice", {"x": rand(4, 6, 5)}, {"starts": starts, "ends": ends, "axes": axes, "steps": steps})


def test_expand_and_tile(tmp_path):
    check_op(tmp_path, "Expand", {"x": rand(3, 1)}, {"shape": [2, 3, 4]})
    check_op(tmp_path, "Tile", {"x": rand(2, 3)}, {"repeats": [2, 3]})


def test_gather_with_constant_negative_indices(tmp_path):
    check_op(tmp_path, "Gather", {"x": rand(5, 6)}, {"axis": 1}, {"i": np.array([[0, -1], [2, -6]], np.int64)})


def test_gather_with_runtime_indices(tmp_path):
    check_op(tmp_path, "Gather", {"x": rand(10, 4), "i": np.array([3, -2, 0, 9], np.int64)}, {"axis": 0})


@pytest.mark.parametrize("constant", [True, False])
def test_gather_scalar_index(tmp_path, constant):
    x, index = rand(2, 5, 3), np.array(-2, np.int64)
    if constant:
        check_op(tmp_path, "Gather", {"x": x}, {"axis": 1}, {"i": index})
    else:
        check_op(tmp_path, "Gather", {"x": x, "i": index}, {"axis": 1})


@pytest.mark.parametrize("mode,pads", [("constant", [0, 1, 2, 0, 2, 1]), ("constant", [0, -1, 1, 0, 1, -2])])
def test_constant_pad(tmp_path, mode, pads):
    check_op(tmp_path, "Pad", {"x": rand(2, 4, 5)}, {"pads": pads, "mode": mode, "value": 0.5})


@pytest.mark.parametrize("mode,pads", [("reflect", [0, 0, 2, 1, 0, 0, 1, 3]), ("edge", [0, 1, 1, 0, 0, 0, 2, 2])])
def test_border_pad(tmp_path, mode, pads):
    check_op(tmp_path, "Pad", {"x": rand(1, 2, 4, 5)}, {"pads": pads, "mode": mode, "value": 0.0})


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(tmp_path, mode):
    check_op(tmp_path, "DepthToSpace", {"x": rand(1, 8, 3, 4)}, {"blocksize": 2, "mode": mode})


# ---------------------------------------------------------------------------------------------
# Shapes that take the scheduler's other paths (parallel tiles, partial tiles, odd vector widths,
# vectorized row reductions, broadcast epilogues, inlined pads)
# ---------------------------------------------------------------------------------------------
def test_conv_with_partial_row_tiles_and_odd_channel_count(tmp_path):
    # 127 output columns (prime: the row tile does not divide it), 24 output channels (3 x 8 lanes)
    check_op(tmp_path, "Conv", {"x": rand(1, 16, 9, 127)}, conv_attrs(2, pads=[1, 1, 1, 1]),
             {"w": rand(24, 16, 3, 3), "bias": rand(24)})


def test_large_depthwise_conv_with_inlined_pad(tmp_path):
    check_op(tmp_path, "Conv", {"x": rand(1, 48, 30, 30)}, conv_attrs(2, strides=[2, 2], pads=[1, 1, 1, 1], group=48),
             {"w": rand(48, 1, 3, 3), "bias": rand(48)})


def test_large_matmul(tmp_path):
    check_op(tmp_path, "MatMul", {"a": rand(96, 200)}, constants={"b": rand(200, 72)})


@pytest.mark.parametrize("width", [512, 508, 30])  # 16 lanes, 4 lanes, not vectorized
@pytest.mark.parametrize("op", ["ReduceMax", "ReduceSum"])
def test_reduction_over_the_innermost_axis(tmp_path, width, op):
    check_op(tmp_path, op, {"x": rand(64, width, low=-3, high=3)}, {"axes": [1], "keepdims": 1})


def test_wide_softmax_and_layer_norm(tmp_path):
    check_op(tmp_path, "Softmax", {"x": rand(12, 128, 128, low=-8, high=8)}, {"axis": 2})
    check_op(tmp_path, "LayerNormalization", {"x": rand(128, 384)}, {"axis": 1, "epsilon": 1e-12},
             {"scale": rand(384), "bias": rand(384)})


def test_conv_feeding_a_broadcast_product(tmp_path):
    """Squeeze-excitation: a conv on a 1x1 map scales a large map (the epilogue is bigger than the conv)."""
    g = Graph(name="squeeze_excite")
    g.add_value("pooled", (1, 32, 1, 1), "float32")
    g.add_value("features", (1, 32, 40, 40), "float32")
    g.inputs = ["pooled", "features"]
    g.add_constant("w", rand(32, 32, 1, 1))
    g.add_value("gate", (1, 32, 1, 1), "float32")
    g.add_value("scaled", (1, 32, 40, 40), "float32")
    g.nodes = [Node("Conv", "conv", ["pooled", "w"], ["gate"], conv_attrs(2)),
               Node("Mul", "scale", ["features", "gate"], ["scaled"])]
    g.outputs = ["scaled"]
    verify(g, OPS)
    assert_matches_reference(g, {"pooled": rand(1, 32, 1, 1), "features": rand(1, 32, 40, 40)}, tmp_path)


@pytest.mark.parametrize("op,torch_fn", [("Exp", torch.exp), ("Erf", torch.erf), ("Tanh", torch.tanh),
                                         ("Sigmoid", torch.sigmoid)])
def test_fast_math_is_accurate_elementwise(tmp_path, op, torch_fn):
    """The vectorized exp / erf / tanh / sigmoid stay within 1e-6 of float64, element by element."""
    x = np.linspace(-30, 30, 4001, dtype=np.float32) if op != "Exp" else np.linspace(-80, 80, 4001, dtype=np.float32)
    graph = one_node_graph(op, {"x": x}, {})
    runner, params = compile_and_load(graph, tmp_path)
    got = runner.run([x], params)[0].astype(np.float64)
    exact = torch_fn(torch.from_numpy(x.astype(np.float64))).numpy()
    tiny = np.finfo(np.float32).tiny
    assert np.all(np.abs(got - exact) <= 1e-6 * np.abs(exact) + tiny)


def test_a_where_with_a_scalar_constant_branch_takes_an_immediate_and_stays_exact(tmp_path):
    """Softmax -> QuantizeLinear: the quantize's NaN guard (where(isnan, 0, x)) becomes one fused kernel
    with the 0 as an immediate (a 0-d buffer in a Select keeps TVM from vectorizing the loop), and the
    codes equal the reference's. Where's other forms (scalar first or second, broadcast) as well."""
    graph = Graph(name="softmax_quantize")
    graph.add_value("x", (2, 64, 48), "float32")
    graph.inputs.append("x")
    graph.add_constant("scale", np.array(1 / 256, np.float32))
    graph.add_constant("zero_point", np.array(0, np.int32))
    graph.add_value("p", (2, 64, 48), "float32")
    graph.add_value("q", (2, 64, 48), "uint8")
    graph.nodes = [Node("Softmax", "softmax", ["x"], ["p"], {"axis": -1}),
                   Node("QuantizeLinear", "quantize", ["p", "scale", "zero_point"], ["q"],
                        {"axis": 0, "dtype": "uint8", "qmin": 0, "qmax": 255})]
    graph.outputs = ["q"]
    verify(graph, OPS)
    target = x86.load("x86-avx2")
    with x86.tvm_target(target):
        mod = tvm.transform.Sequential(x86.scheduling_passes(x86.cpu_shape(target)))(emit_relax(graph).mod)
    kernels = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    (fused,) = [f for name, f in kernels.items() if "softmax" in name]
    assert "where" in next(n for n in kernels if "softmax" in n) and "T.Buffer(()" not in fused.script()
    x = rand(2, 64, 48, low=-6.0, high=6.0)
    runner, params = compile_and_load(graph, tmp_path)
    expected = run_graph(graph, {"x": x})["q"].astype(np.int32)
    assert np.abs(runner.run([x], params)[0].astype(np.int32) - expected).max() <= 1  # float softmax: a code at most
    for folder, inputs, constants, order in (
            ("first", {"c": rand(3, 4) > 0, "y": rand(4)}, {"x": np.array(2.5, np.float32)}, ["c", "x", "y"]),
            ("second", {"c": rand(3, 1) > 0, "x": rand(3, 4)}, {"y": np.array(-1.0, np.float32)}, None)):
        (tmp_path / folder).mkdir()  # a process loads a library path once
        check_op(tmp_path / folder, "Where", inputs, constants=constants, order=order)


# ---------------------------------------------------------------------------------------------
# Coverage, errors, and a whole small network
# ---------------------------------------------------------------------------------------------
def test_every_catalogue_op_has_an_emitter():
    assert set(OPS) - set(EMITTERS) == set()


def test_unknown_op_names_node_and_op():
    graph = Graph(name="bad")
    graph.add_value("x", (2,), "float32")
    graph.add_value("y", (2,), "float32")
    graph.inputs, graph.outputs = ["x"], ["y"]
    graph.nodes.append(Node("Frobnicate", "frob_7", ["x"], ["y"]))
    with pytest.raises(UnsupportedError, match="frob_7.*Frobnicate"):
        emit_relax(graph)


def test_outputs_may_be_inputs_or_constants(tmp_path):
    g = Graph(name="passthrough")
    g.add_value("x", (3,), "float32")
    g.add_value("y", (3,), "float32")
    g.add_constant("table", np.arange(20, dtype=np.float32))  # a parameter returned as is
    g.inputs, g.outputs = ["x"], ["y", "x", "table"]
    g.nodes.append(Node("Neg", "neg", ["x"], ["y"]))
    runner, params = compile_and_load(g, tmp_path)
    x = rand(3)
    y, same, table = runner.run([x], params)
    np.testing.assert_array_equal(y, -x)
    np.testing.assert_array_equal(same, x)
    np.testing.assert_array_equal(table, g.constants["table"])


def small_cnn() -> Graph:
    """conv-bn-relu -> depthwise conv -> hardswish -> maxpool(ceil) -> resize -> concat -> pool -> matmul."""
    g = Graph(name="small_cnn")
    g.add_value("image", (1, 3, 16, 16), "float32")
    g.inputs = ["image"]
    g.add_constant("w1", rand(16, 3, 3, 3))
    g.add_constant("b1", rand(16))
    for name in ("bn_scale", "bn_bias", "bn_mean"):
        g.add_constant(name, rand(16))
    g.add_constant("bn_var", rand(16, low=0.5, high=1.5))
    g.add_constant("w2", rand(16, 1, 3, 3))
    g.add_constant("fc", rand(32, 10))
    g.add_constant("fc_bias", rand(10))
    specs = [
        ("Conv", ["image", "w1", "b1"], ["c1"], conv_attrs(2, strides=[2, 2], pads=[1, 1, 1, 1])),
        ("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["n1"], {"epsilon": 1e-5}),
        ("Relu", ["n1"], ["r1"], {}),
        ("Conv", ["r1", "w2"], ["c2"], conv_attrs(2, pads=[1, 1, 1, 1], group=16)),
        ("HardSwish", ["c2"], ["h2"], {}),
        ("MaxPool", ["h2"], ["p2"], pool_attrs([3, 3], [2, 2], [0, 0, 0, 0], ceil_mode=1, dilations=[1, 1])),
        ("Resize", ["p2"], ["u2"], resize_attrs((1, 16, 4, 4), (1, 16, 8, 8), "nearest", "asymmetric", "floor")),
        ("Concat", ["r1", "u2"], ["cat"], {"axis": 1}),
        ("GlobalAveragePool", ["cat"], ["gap"], {}),
        ("Reshape", ["gap"], ["flat"], {"shape": [1, 32]}),
        ("MatMul", ["flat", "fc"], ["mm"], {}),
        ("Add", ["mm", "fc_bias"], ["logits"], {}),
        ("Softmax", ["logits"], ["probs"], {"axis": 1}),
    ]
    for index, (op, inputs, outputs, attrs) in enumerate(specs):
        node = Node(op, f"n{index}_{op.lower()}", inputs, outputs, attrs)
        g.nodes.append(node)
        shapes = _infer_shapes(g, node)
        for name, shape in zip(outputs, shapes):
            g.add_value(name, shape, "float32")
    g.outputs = ["probs", "r1"]
    verify(g, OPS)
    return g


def _infer_shapes(graph: Graph, node: Node) -> list[tuple[int, ...]]:
    """Output shapes of `node` by running its reference kernel on torch's meta device."""
    def meta(name: str) -> torch.Tensor:
        value = graph.values[name]
        return torch.empty(value.shape, dtype=TORCH_DTYPES[value.dtype], device="meta")
    return [tuple(t.shape) for t in run_node(node, [meta(n) for n in node.inputs])]


def test_small_cnn_end_to_end(tmp_path):
    graph = small_cnn()
    emitted = emit_relax(graph)
    assert emitted.input_names == ["image"]
    assert emitted.param_names == ["w1", "w2", "fc"]  # > 16 elements; the 16-element vectors are embedded
    feeds = {"image": rand(1, 3, 16, 16)}
    assert_matches_reference(graph, feeds, tmp_path)
    runner, params = compile_and_load(graph, tmp_path)
    milliseconds = runner.time([feeds["image"]], params, repeat=3)
    assert len(milliseconds) == 3 and all(t > 0 for t in milliseconds)


# ---------------------------------------------------------------------------------------------
# ONNX models end to end, against ONNX Runtime
# ---------------------------------------------------------------------------------------------
ONNX_CASES = onnx_cases()


@pytest.mark.parametrize("name", sorted(ONNX_CASES))
def test_onnx_case_matches_onnxruntime(tmp_path, name):
    model, feeds = ONNX_CASES[name]
    graph = import_onnx(model)
    runner, params = compile_and_load(graph, tmp_path)
    ours = runner.run([feeds[n] for n in graph.inputs], params)
    for got, expected in zip(ours, ort_run_model(model, feeds)):
        assert got.shape == expected.shape
        assert rel_err(got, expected) < 1e-5


LARGE_ZOO_MODELS = ("mobilenet_v2", "minilm_l6", "ppocr_det")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LARGE_ZOO_MODELS else n
                                  for n in zoo.ZOO_MODELS])
def test_zoo_model_matches_onnxruntime(tmp_path, name):
    graph = import_onnx(zoo.onnx_path(name), zoo.input_shapes(name))
    runner, params = compile_and_load(graph, tmp_path)
    session = ort_session(zoo.onnx_path(name))
    for feeds in zoo.inputs(name, 3):
        ours = dict(zip(graph.outputs, runner.run([feeds[n] for n in graph.inputs], params)))
        assert max_rel_err(ours, ort_run(session, feeds)) < 1e-4


def test_runner_rejects_inputs_of_the_wrong_shape_with_a_data_error(tmp_path):
    runner, params = compile_and_load(small_cnn(), tmp_path)
    with pytest.raises(DataError, match="main rejected"):
        runner.run([rand(1, 3, 8, 8)], params)
    assert runner.threads >= 1


def test_a_thread_count_asked_for_survives_loading_a_runner(tmp_path):
    """configure_threads(1) and then a TVMRunner without `threads` (as Artifact.load makes it) keeps one
    thread: benchmarks that give ONNX Runtime one thread must give bitsmith one too. In a fresh process,
    since TVM's pool is process-wide."""
    library = x86.export(x86.build(emit_relax(small_cnn()), "host"), tmp_path / "cnn.so")
    code = ("from bitsmith.backends.runner import TVMRunner, configure_threads\n"
            "import tvm\n"
            "configure_threads(1)\n"
            f"TVMRunner({str(library)!r})\n"
            "print(tvm.get_global_func('runtime.NumThreads')())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split()[-1] == "1"
