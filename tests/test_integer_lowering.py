"""Integer-only lowering (docs/design/integer_lowering.md): the TVM artifact equals the integer reference
bit for bit.

- every quantized op: a one-node graph on random codes, TVM against the reference interpreter, exactly;
- dyadic multipliers and the requantization rounding at their edges;
- the CNN zoo models at W8A8 (mobilenet_v2, mtcnn_rnet, mtcnn_onet): quantize -> lower_integer -> x86,
  outputs equal to `run_graph` on the lowered graph bit for bit on real inputs, no float op left between
  the input quantizer and the outputs, close to the fake-quant Simulator, and as accurate as FP32;
- the integer-exact Simulator equals the integer reference bit for bit on those models (outputs and every
  quantized activation), passes gradients straight through to inputs and weights, and refuses formats
  without integer kernels;
- bitsmith.compile(recipe="w8a8", calibration=...) writes that artifact, with its manifest entries.

Measured (eval split; int = lowered graph, sim = fake-quant Simulator, fp = FP32): max |int - sim| /
max |fp| is 0.4% (rnet prob), 3.6% (rnet box), 1.2% / 4.3% (onet prob / box), 3.2% (mobilenet logits,
2 images), i.e. a few output steps: the integer path rounds accumulators once (dyadic requantization)
where the simulator rounds float sums. Top-1 of int equals sim on every face (rnet, onet: 200 each);
ONet face accuracy is 100% for fp, sim and int on 200 real faces.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bitsmith
from bitsmith import zoo
from bitsmith.backends import x86
from bitsmith.backends.relax_emit import emit_relax
from bitsmith.backends.runner import TVMRunner
from bitsmith.errors import DataError, UnsupportedError
from bitsmith.formats import dequantize
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import requantize, run_graph, run_node
from bitsmith.ir import Graph, Node, verify
from bitsmith.ops import OPS, QUANTIZED_OPS
from bitsmith.passes.lower_integer import dyadic, lower_integer, shared_shift_dyadic
from bitsmith.passes.quant_points import activation_points
from bitsmith.quantize import quantize
from bitsmith.recipes import preset
from bitsmith.simulate import Simulator

RNG = np.random.default_rng(7)


def codes(*shape: int, dtype: str = "uint8") -> np.ndarray:
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


def one_node(op: str, inputs: dict[str, np.ndarray], attrs: dict, constants: dict[str, np.ndarray] | None = None
             ) -> Graph:
    """A graph of one `op` node reading `inputs` (graph inputs) then `constants`; output types from the reference."""
    constants = constants or {}
    graph = Graph(name=f"one_{op.lower()}")
    for name, array in inputs.items():
        graph.add_value(name, array.shape, array.dtype.name)
        graph.inputs.append(name)
    for name, array in constants.items():
        graph.add_constant(name, array)
    node = Node(op, op.lower(), [*inputs, *constants], ["y"], attrs)
    every = {**inputs, **constants}
    (result,) = run_node(node, [torch.from_numpy(np.array(every[n])) for n in node.inputs])
    graph.add_value("y", tuple(result.shape), str(result.dtype).replace("torch.", ""))
    graph.nodes.append(node)
    graph.outputs = ["y"]
    verify(graph, OPS)
    return graph


def tvm_outputs(graph: Graph, feeds_list: list[dict[str, np.ndarray]], tmp_path) -> list[list[np.ndarray]]:
    emitted = emit_relax(graph)
    library = x86.export(x86.build(emitted, "host"), tmp_path / f"{graph.name}.so")
    runner = TVMRunner(str(library))
    params = emitted.param_arrays(graph)
    return [runner.run([feeds[n] for n in graph.inputs], params) for feeds in feeds_list]


def assert_bit_exact(graph: Graph, inputs: dict[str, np.ndarray], tmp_path) -> None:
    (got,) = tvm_outputs(graph, [inputs], tmp_path)
    expected = run_graph(graph, inputs)["y"]
    assert got[0].dtype == expected.dtype and got[0].shape == expected.shape
    np.testing.assert_array_equal(got[0], expected)


def requant_constants(channels: int, low: float = 1e-4, high: float = 1e-2) -> dict[str, np.ndarray]:
    multiplier, shift = dyadic(RNG.uniform(low, high, channels))
    return {"multiplier": multiplier, "shift": shift}


def requant_attrs(dtype: str = "uint8", zero_point: int = 3, low: int | None = None, high: int | None = None) -> dict:
    info = np.iinfo(dtype)
    return {"epilogue": "requantize", "out_zero_point": zero_point, "out_min": info.min if low is None else low,
            "out_max": info.max if high is None else high, "out_dtype": dtype}


# ---------------------------------------------------------------------------------------------
# Every quantized op against the reference, bit for bit
# ---------------------------------------------------------------------------------------------
def test_every_quantized_op_is_in_the_catalogue_with_a_kernel_and_an_emitter():
    from bitsmith.backends.relax_emit import EMITTERS
    from bitsmith.interpreter import KERNELS

    assert set(QUANTIZED_OPS) <= set(OPS) & set(KERNELS) & set(EMITTERS)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quantize_and_dequantize_linear(tmp_path, dtype):
    scale = np.float32(0.037)
    x = RNG.normal(0, 4, (3, 41)).astype(np.float32)
    x[0, :8] = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1e9, -np.inf, np.nan], np.float32) * scale  # ties, saturation, NaN
    info = np.iinfo(dtype)
    attrs = {"axis": 0, "dtype": dtype, "qmin": int(info.min), "qmax": int(info.max)}
    constants = {"scale": np.array(scale), "zero_point": np.array(5 if dtype == "uint8" else -3, np.int32)}
    assert_bit_exact(one_node("QuantizeLinear", {"x": x}, attrs, constants), {"x": x}, tmp_path)
    q = codes(3, 41, dtype=dtype)
    assert_bit_exact(one_node("DequantizeLinear", {"q": q}, {"axis": 0}, constants), {"q": q}, tmp_path)


CONV_CASES = [  # x shape, w shape, strides, pads, group, clamp
    ((2, 5, 11, 9), (7, 5, 3, 3), [2, 1], [1, 0, 1, 2], 1, (10, 200)),
    ((1, 8, 10, 10), (8, 1, 3, 3), [1, 1], [1, 1, 1, 1], 8, None),  # depthwise
    ((1, 6, 17), (4, 3, 5), [2], [2, 1], 2, None),                   # 1-D, grouped
]


@pytest.mark.parametrize("x_shape,w_shape,strides,pads,group,clamp", CONV_CASES)
def test_qconv_requantize(tmp_path, x_shape, w_shape, strides, pads, group, clamp):
    x = codes(*x_shape)
    rank = len(x_shape) - 2
    attrs = {"strides": strides, "pads": pads, "dilations": [1] * rank, "group": group, "x_zero_point": 117,
             **requant_attrs(low=clamp and clamp[0], high=clamp and clamp[1])}
    constants = {"w": codes(*w_shape, dtype="int8"), "w_zero_point": np.array(0, np.int32),
                 "bias": RNG.integers(-5000, 5000, w_shape[0]).astype(np.int32), **requant_constants(w_shape[0])}
    assert_bit_exact(one_node("QConv", {"x": x}, attrs, constants), {"x": x}, tmp_path)


def test_qconv_float_epilogue_with_weight_zero_points(tmp_path):
    x = codes(1, 4, 6, 6, dtype="int8")
    attrs = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [2, 2], "group": 1, "x_zero_point": -9,
             "epilogue": "float", "out_zero_point": 0, "out_min": 0, "out_max": 0, "out_dtype": "float32"}
    constants = {"w": codes(3, 4, 2, 2), "w_zero_point": np.array([128, 120, 131], np.int32),
                 "bias": np.array([7, -7, 70000], np.int32), "out_scale": np.array([1e-3, 2e-4, 3.3e-5], np.float32)}
    assert_bit_exact(one_node("QConv", {"x": x}, attrs, constants), {"x": x}, tmp_path)


@pytest.mark.parametrize("a_shape,epilogue", [((5, 96), "requantize"), ((2, 3, 96), "float")])
def test_qmatmul_with_constant_weights(tmp_path, a_shape, epilogue):
    a = codes(*a_shape)
    n = 24
    constants = {"b": codes(96, n, dtype="int8"), "b_zero_point": np.array(0, np.int32),
                 "bias": RNG.integers(-900, 900, n).astype(np.int32)}
    if epilogue == "float":
        attrs = {"a_zero_point": 40, "epilogue": "float", "out_zero_point": 0, "out_min": 0, "out_max": 0,
                 "out_dtype": "float32"}
        constants["out_scale"] = RNG.uniform(1e-5, 1e-3, n).astype(np.float32)
    else:
        attrs = {"a_zero_point": 40, **requant_attrs("int8", zero_point=-7)}
        constants.update(requant_constants(n))
    assert_bit_exact(one_node("QMatMul", {"a": a}, attrs, constants), {"a": a}, tmp_path)


def test_qmatmul_of_two_activations(tmp_path):
    a, b = codes(2, 7, 16), codes(2, 16, 9)
    constants = {"b_zero_point": np.array(128, np.int32), "bias": np.zeros(9, np.int32), **requant_constants(1)}
    graph = one_node("QMatMul", {"a": a, "b": b}, {"a_zero_point": 128, **requant_attrs()}, constants)
    assert_bit_exact(graph, {"a": a, "b": b}, tmp_path)


@pytest.mark.parametrize("shift", [1, 31, 62])
def test_qadd_and_qmul_broadcasting_at_extreme_shifts(tmp_path, shift):
    a, b = codes(2, 6, 5, 5), codes(2, 6, 1, 1, dtype="int8")
    big = (1 << 31) - 1
    add = {"a_zero_point": 255, "b_zero_point": -128, "a_multiplier": big, "b_multiplier": 1 << 30, "shift": shift,
           **requant_attrs(zero_point=-100 if shift == 1 else 9)}
    del add["epilogue"]
    assert_bit_exact(one_node("QAdd", {"a": a, "b": b}, add), {"a": a, "b": b}, tmp_path)
    mul = {"a_zero_point": 0, "b_zero_point": 127, "multiplier": big, "shift": shift, **requant_attrs("int8", 0)}
    del mul["epilogue"]
    assert_bit_exact(one_node("QMul", {"a": a, "b": b}, mul), {"a": a, "b": b}, tmp_path)


@pytest.mark.parametrize("shift,a_multiplier,b_multiplier,in_int32", [
    (1, 1 << 22, (1 << 22) - 1, True), (21, 3_000_001, 4_194_303, True), (30, 4_194_303, 77, True),
    (33, (1 << 31) - 1, 1_234_567_891, False)])
def test_qadd_of_every_pair_of_8_bit_codes_equals_the_reference_in_int32_where_the_sums_fit(
        tmp_path, shift, a_multiplier, b_multiplier, in_int32):
    """QAdd of 8-bit codes runs in int32 where 255 x (Ma + Mb) fits it (relax_emit._qadd_in_int32: the
    rounding term added after the shift's first bits, so any shift), else in int64: bit for bit the
    reference on every (uint8, int8) code pair, the zero points at the extremes."""
    a = np.arange(256, dtype=np.uint8).reshape(1, 256, 1)
    b = np.arange(-128, 128, dtype=np.int8).reshape(1, 1, 256)
    attrs = {"a_zero_point": 255, "b_zero_point": 127, "a_multiplier": a_multiplier, "b_multiplier": b_multiplier,
             "shift": shift, **requant_attrs("int8", zero_point=-3)}
    del attrs["epilogue"]
    graph = one_node("QAdd", {"a": a, "b": b}, attrs)
    assert ("int64" not in emit_relax(graph).mod["main"].script()) == in_int32
    assert len(np.unique(run_graph(graph, {"a": a, "b": b})["y"])) >= (2 if shift in (1, 30) else 100)
    assert_bit_exact(graph, {"a": a, "b": b}, tmp_path)


@pytest.mark.parametrize("per_channel", [False, True])
def test_qlookup(tmp_path, per_channel):
    q = codes(2, 5, 4, 3, dtype="int8")
    table = codes(5, 256) if per_channel else codes(256)
    graph = one_node("QLookup", {"q": q}, {"qmin": -128, "axis": 1}, {"table": table})
    assert_bit_exact(graph, {"q": q}, tmp_path)


def test_qglobal_average_pool_and_qaverage_pool(tmp_path):
    x = codes(2, 9, 7, 7)
    attrs = {"x_zero_point": 100, "multiplier": 1 << 30, "shift": 36, **requant_attrs(zero_point=128)}
    del attrs["epilogue"]
    assert_bit_exact(one_node("QGlobalAveragePool", {"x": x}, attrs), {"x": x}, tmp_path)
    pool = {**attrs, "shift": 33, "kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 0}
    assert_bit_exact(one_node("QAveragePool", {"x": x}, pool), {"x": x}, tmp_path)


def test_qsoftmax(tmp_path):
    q = codes(6, 10)
    q[0] = 200  # a flat row
    q[1, 3] = 255  # one dominant entry
    table = np.rint(np.exp(-np.arange(256) * 0.08) * 2.0 ** 30).astype(np.int64)
    attrs = {"axis": 1, "out_zero_point": 0, "out_min": 0, "out_max": 255, "out_dtype": "uint8"}
    graph = one_node("QSoftmax", {"q": q}, attrs, {"table": table})
    assert_bit_exact(graph, {"q": q}, tmp_path)
    probs = run_graph(graph, {"q": q})["y"].astype(np.float64) / 256
    expected = torch.softmax(torch.from_numpy(q.astype(np.float64) * 0.08), dim=1).numpy()
    assert np.abs(probs - expected).max() <= 1 / 256


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_max_pool_on_codes_pads_with_the_lowest_code(tmp_path, dtype):
    x = codes(1, 3, 8, 7, dtype=dtype)
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 1], "dilations": [1, 1], "ceil_mode": 1}
    graph = one_node("MaxPool", {"x": x}, attrs)
    assert_bit_exact(graph, {"x": x}, tmp_path)
    float_pool = run_graph(one_node("MaxPool", {"x": x.astype(np.float32)}, attrs), {"x": x.astype(np.float32)})
    np.testing.assert_array_equal(run_graph(graph, {"x": x})["y"], float_pool["y"].astype(dtype))


# ---------------------------------------------------------------------------------------------
# Dyadic multipliers and requantization
# ---------------------------------------------------------------------------------------------
def test_dyadic_multipliers_at_their_edges():
    cases = {1.0: (1 << 30, 30), 0.5: (1 << 30, 31), 0.75: (3 << 29, 31), 2.0 ** -32: (1 << 30, 62),
             1 - 2.0 ** -40: (1 << 30, 30),  # rounds up to 2^31: carries into the exponent
             2.0 ** -40: (1 << 22, 62), 0.0: (0, 62), 2.0 ** 29: (1 << 30, 1)}
    for real, expected in cases.items():
        multiplier, shift = dyadic(real)
        assert (int(multiplier), int(shift)) == expected, real
    reals = np.exp(RNG.uniform(np.log(2.0 ** -31), np.log(2.0 ** 29), 2000))
    multiplier, shift = dyadic(reals)
    assert np.all((multiplier >= 1 << 30) & (multiplier < 1 << 31) & (shift >= 1) & (shift <= 62))
    assert np.all(np.abs(multiplier / 2.0 ** shift - reals) <= reals * 2.0 ** -30)
    for bad in (2.0 ** 30, -0.1, math.inf, math.nan):
        with pytest.raises(UnsupportedError):
            dyadic(bad)
    a, b, s = shared_shift_dyadic(0.3, 0.0007)
    assert s == int(dyadic(0.3)[1]) and a == int(dyadic(0.3)[0]) and abs(b / 2.0 ** s - 0.0007) <= 2.0 ** -s
    a, b, s = shared_shift_dyadic(0.0007, 0.3, multiplier_bits=22)  # 8-bit QAdd: sums fit int32
    assert s == int(dyadic(0.3)[1]) - 9 and 1 << 21 <= b <= 1 << 22 and abs(a / 2.0 ** s - 0.0007) <= 2.0 ** -s
    assert shared_shift_dyadic(2.0 ** 25, 1.0, multiplier_bits=22)[2] == 1  # the shift stays >= 1


def test_requantize_rounds_half_up_and_clamps():
    acc = torch.tensor([-3, -1, 1, 3, 5, 1 << 31, -(1 << 31)], dtype=torch.int64)
    half = requantize(acc, 1 << 30, 31, 0, -(1 << 40), 1 << 40)  # x 0.5: ties go toward +infinity
    assert half.tolist() == [-1, 0, 1, 2, 3, 1 << 30, -(1 << 30)]
    assert requantize(acc, 1 << 30, 31, 10, 0, 12).tolist() == [9, 10, 11, 12, 12, 12, 0]
    multiplier, shift = dyadic(np.array([0.1, 0.37]))
    values = torch.arange(-1000, 1000, dtype=torch.int64).reshape(-1, 1)
    got = requantize(values, torch.from_numpy(multiplier), torch.from_numpy(shift), 0, -(1 << 20), 1 << 20)
    exact = np.floor(values.numpy() * np.array([0.1, 0.37]) + 0.5)
    assert np.abs(got.numpy() - exact).max() <= 1


# ---------------------------------------------------------------------------------------------
# The CNN zoo models at W8A8
# ---------------------------------------------------------------------------------------------
CODE_OPS = {"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Concat", "Split", "Resize"}
# model -> (batch, calibration batches, eval batches); ppocr_cls (HardSwish / HardSigmoid tables, QMul of
# squeeze-excitation, QSoftmax) lowers and matches too, but takes ~100 s more: marked slow
MODELS = {"mtcnn_rnet": (50, 2, 4), "mtcnn_onet": (50, 2, 4), "mobilenet_v2": (2, 1, 1), "ppocr_cls": (8, 1, 1)}
SLOW_MODELS = ("ppocr_cls",)
CLASS_OUTPUT = {"mtcnn_rnet": "prob", "mtcnn_onet": "prob", "mobilenet_v2": "logits",
                "ppocr_cls": "save_infer_model/scale_0.tmp_1"}
# MobileNetV2 with the W8A8 recipe scripts/quant_accuracy.py chooses for it: weights rewritten by
# depthwise_equalization stay on the integer path like any others
EQUALIZED = ("mobilenet_v2",)


class Lowered:
    def __init__(self, name: str, tmp_path_factory) -> None:
        batch, calibration, evaluation = MODELS[name]
        self.name = name
        self.graph = import_onnx(zoo.onnx_path(name), zoo.input_shapes(name, batch=batch))
        recipe = preset("w8a8")
        if name in EQUALIZED:
            recipe = recipe.with_(algorithms=("depthwise_equalization", *recipe.algorithms))
        self.quantized = quantize(self.graph, recipe, zoo.inputs(name, calibration, batch, split="calib"))
        self.lowered = lower_integer(self.quantized)
        verify(self.lowered, OPS)
        self.feeds = zoo.inputs(name, evaluation, batch, split="eval")
        self.tvm = tvm_outputs(self.lowered, self.feeds, tmp_path_factory.mktemp(name))
        self.reference = [run_graph(self.lowered, f) for f in self.feeds]

    def concatenated(self, results: list[dict[str, np.ndarray]], output: str) -> np.ndarray:
        return np.concatenate([r[output] for r in results])


@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n
                                        for n in MODELS])
def lowered(request, tmp_path_factory) -> Lowered:
    return Lowered(request.param, tmp_path_factory)


def test_tvm_equals_the_integer_reference_bit_for_bit(lowered):
    for got, expected in zip(lowered.tvm, lowered.reference):
        for name, array in zip(lowered.lowered.outputs, got):
            assert array.dtype == expected[name].dtype == np.float32
            np.testing.assert_array_equal(array, expected[name], err_msg=f"{lowered.name}: {name}")


def test_the_integer_region_covers_the_whole_model(lowered):
    """Codes from the input quantizer to the outputs: no float op, one QuantizeLinear per input, and
    DequantizeLinear only where a quantized output leaves (the final MatMuls use the float epilogue)."""
    counts = lowered.lowered.op_counts()
    assert set(counts) <= set(QUANTIZED_OPS) | CODE_OPS, counts
    assert counts["QuantizeLinear"] == len(lowered.graph.inputs)
    assert counts.get("DequantizeLinear", 0) == sum(
        1 for o in lowered.graph.outputs if lowered.quantized.values[o].quant is not None)
    layers = lowered.lowered.metadata["integer_lowering"]["layers"]
    assert layers and all(layer["lowered"] in ("QConv", "QMatMul") for layer in layers)
    assert lowered.lowered.metadata["integer_lowering"]["emulated"] == []


def test_qadds_of_8_bit_codes_get_multipliers_whose_sums_fit_int32(lowered):
    """lower_integer gives an 8-bit QAdd 22-bit multipliers: 255 x (Ma + Mb) < 2^31 (emitted in int32)."""
    qadds = [node for node in lowered.lowered.nodes if node.op == "QAdd"]
    assert len(qadds) >= (10 if lowered.name == "mobilenet_v2" else 0)  # its residual connections
    for node in qadds:
        assert 255 * (node.attrs["a_multiplier"] + node.attrs["b_multiplier"]) < 1 << 31, node.name


def test_integer_outputs_stay_close_to_the_fake_quant_simulator(lowered):
    simulator, fp32 = Simulator(lowered.quantized), Simulator(lowered.graph, quantized=False)
    simulated = [simulator.run(f) for f in lowered.feeds]
    reference = [fp32.run(f) for f in lowered.feeds]
    for name in lowered.graph.outputs:
        ours = lowered.concatenated(lowered.reference, name)
        sim = lowered.concatenated(simulated, name)
        span = float(np.abs(lowered.concatenated(reference, name)).max())
        assert np.abs(ours - sim).max() <= 0.10 * span, name  # measured <= 4.3% (onet box)
        assert np.abs(ours - sim).mean() <= 0.02 * span, name  # measured <= 0.6%
        if name == CLASS_OUTPUT[lowered.name]:  # measured: 1.0 on the faces; 16 ImageNet-like photos: 0.81
            assert (ours.argmax(-1) == sim.argmax(-1)).mean() >= (0.5 if lowered.name == "mobilenet_v2" else 0.97)


def test_the_integer_exact_simulator_equals_the_integer_reference_bit_for_bit(lowered):
    """Simulator(integer_exact=True): every output, and every quantized activation dequantized, has the
    integer reference's bits (the default fake-quant Simulator departs by a code here and there, above)."""
    simulator = Simulator(lowered.quantized, integer_exact=True)
    where = simulator.integer.where
    activations = sorted(where.codes)
    for feeds, expected in zip(lowered.feeds, lowered.reference):
        reference = run_graph(lowered.lowered, feeds, keep=[where.codes[n] for n in activations])
        got = simulator.run(feeds, keep=activations)
        for name in lowered.graph.outputs:
            assert got[name].tobytes() == expected[name].tobytes(), f"{lowered.name}: {name}"
        for name in activations:
            spec = lowered.quantized.values[name].quant
            np.testing.assert_array_equal(got[name], dequantize(reference[where.codes[name]], spec), err_msg=name)


def test_w8a8_integer_onet_keeps_face_accuracy_on_real_faces(lowered):
    if lowered.name != "mtcnn_onet":
        pytest.skip("labelled faces: ONet")
    labels = np.concatenate(zoo.labels("mtcnn_onet", len(lowered.feeds), MODELS["mtcnn_onet"][0], split="eval"))
    fp32 = Simulator(lowered.graph, quantized=False)
    fp_accuracy = np.mean(np.concatenate([fp32.run(f)["prob"].argmax(-1) for f in lowered.feeds]) == labels)
    int_accuracy = np.mean(lowered.concatenated(lowered.reference, "prob").argmax(-1) == labels)
    assert fp_accuracy >= 0.97 and int_accuracy >= fp_accuracy - 0.005  # measured 1.0 and 1.0 on 200 faces


def test_the_widened_region_takes_prelu_and_softmax_in():
    """rnet: the Conv outputs before PRelu and the logits before Softmax are quantization points at W8A8
    (integer region), not in the default (float-op) region."""
    graph = import_onnx(zoo.onnx_path("mtcnn_rnet"), zoo.input_shapes("mtcnn_rnet", batch=1))
    plain, _ = activation_points(graph)
    widened, _ = activation_points(graph, integer=True)
    added = widened - plain
    assert "/conv1/Conv_output_0" in added and "/dense5_1/Gemm_output_0" in added and "prob" in added
    assert "/dense4/Gemm_output_0_mm" not in widened  # the bias Add belongs to its MatMul


@pytest.fixture(scope="module")
def rnet_w8a8():
    graph = import_onnx(zoo.onnx_path("mtcnn_rnet"), zoo.input_shapes("mtcnn_rnet", batch=8))
    quantized = quantize(graph, preset("w8a8"), zoo.inputs("mtcnn_rnet", 1, 8, split="calib"))
    return quantized, zoo.inputs("mtcnn_rnet", 1, 8, split="eval")[0]


def test_the_integer_exact_simulator_passes_gradients_straight_through(rnet_w8a8):
    """Gradients reach the inputs and the weights (the Hessian and GPTQ need them); overriding a weight
    gives the integer reference of the graph with that weight."""
    quantized, feeds = rnet_w8a8
    simulator = Simulator(quantized, integer_exact=True)
    weight = next(n for n in quantized.constants if quantized.values[n].quant is not None)
    doubled = torch.from_numpy(quantized.constants[weight] * 2).requires_grad_(True)
    x = torch.from_numpy(feeds["input"]).requires_grad_(True)
    env = simulator.forward({"input": x}, constants={weight: doubled})
    sum(env[o].sum() for o in quantized.outputs).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(doubled.grad).all() and doubled.grad.abs().sum() > 0
    changed = quantized.copy()
    changed.constants[weight] = quantized.constants[weight] * 2
    expected = run_graph(lower_integer(changed), feeds)
    for name in quantized.outputs:
        assert env[name].detach().numpy().tobytes() == expected[name].tobytes()


def test_the_integer_exact_simulator_refuses_formats_without_integer_kernels(rnet_w8a8):
    graph = import_onnx(zoo.onnx_path("mtcnn_rnet"), zoo.input_shapes("mtcnn_rnet", batch=8))
    fp8 = quantize(graph, preset("fp8_e4m3"), zoo.inputs("mtcnn_rnet", 1, 8, split="calib"))
    with pytest.raises(UnsupportedError, match="integer_exact=True.*fp8_e4m3.*integer_exact=False"):
        Simulator(fp8, integer_exact=True)
    with pytest.raises(bitsmith.UsageError, match="quantize_activations"):
        Simulator(rnet_w8a8[0], quantize_activations=False, integer_exact=True)


# ---------------------------------------------------------------------------------------------
# bitsmith.compile with a recipe
# ---------------------------------------------------------------------------------------------
def test_compile_with_a_recipe_writes_the_integer_artifact(tmp_path):
    name, batch = "mtcnn_rnet", 16
    calibration = zoo.inputs(name, 2, batch, split="calib")
    artifact = bitsmith.compile(zoo.onnx_path(name), "host", input_shapes=zoo.input_shapes(name, batch),
                                recipe="w8a8", calibration=calibration, output_dir=tmp_path / "rnet", quiet=True)
    manifest = artifact.manifest
    assert manifest["precision"] == "w8a8"
    formats = manifest["formats"]
    assert formats["weights"] == "int8" and formats["activations"] == "uint8" and formats["emulated"] == []
    assert [layer["lowered"] for layer in formats["layers"]] == ["QConv"] * 3 + ["QMatMul"] * 3
    graph = import_onnx(zoo.onnx_path(name), zoo.input_shapes(name, batch))
    lowered = lower_integer(quantize(graph, preset("w8a8"), calibration))
    assert formats["ops"] == lowered.op_counts()
    feeds = zoo.inputs(name, 1, batch, split="eval")[0]
    expected = run_graph(lowered, feeds)
    for output, array in artifact.run(feeds).items():
        np.testing.assert_array_equal(array, expected[output])


def test_compile_with_a_recipe_needs_calibration_data():
    with pytest.raises(DataError, match="calibration"):
        bitsmith.compile(zoo.onnx_path("mtcnn_rnet"), "host", input_shapes=zoo.input_shapes("mtcnn_rnet"),
                         recipe="w8a8", quiet=True)
    with pytest.raises(bitsmith.UsageError, match="unknown quantization recipe"):
        bitsmith.compile(zoo.onnx_path("mtcnn_rnet"), "host", recipe="w3a3", calibration=[], quiet=True)
