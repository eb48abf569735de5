"""Integer-only lowering of a text detector's head (PP-OCRv4 det, docs/design/integer_lowering.md):
ConvTranspose on codes (QConvTranspose), nearest Resize / Concat on codes with QAdd between them, the
final Sigmoid as a table of float32 values, dead channels whose bias overflows the accumulator lowered
as the constants they are, and ppocr_det bit-exact end to end.

- QConvTranspose: one-node graphs on random codes (extreme codes included), TVM against the reference
  interpreter bit for bit, and the reference against float ConvTranspose on the dequantized operands;
- a small DB head (FPN Resize + Add + Concat, Conv-BN-Relu, two ConvTranspose-BN-Relu, Sigmoid) built in
  ONNX, quantized at W8A8, lowered with no float op left, TVM equal to the reference, close to FP32;
  the Sigmoid's logits quantized only where the Sigmoid varies;
- dead channels: a bias beyond the int32 accumulator lowered as the constant the channel is, or refused;
- ppocr_det: integer ops only, the text found on a real page; bitsmith.compile(recipe="w8a8") on real
  pages equals the integer reference bit for bit (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from bitsmith import zoo
from bitsmith.errors import UnsupportedError
from bitsmith.formats import dequantize
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import run_graph, run_node
from bitsmith.ir import Graph, Node, QuantSpec, verify
from bitsmith.ops import OPS, QUANTIZED_OPS
from bitsmith.passes.fold_batchnorm import FoldBatchNorm
from bitsmith.passes.lower_integer import constant_channels, dyadic, lower_integer, lower_integer_traced
from bitsmith.passes.quant_points import activation_points, float_table_region
from bitsmith.passes.table_ranges import active_range
from bitsmith.pipeline import compile_traced
from bitsmith.quantize import quantize
from bitsmith.recipes import preset
from bitsmith.simulate import Simulator
from onnx_cases import init, model, out, tensor_input
from test_integer_lowering import assert_bit_exact, codes, one_node, tvm_outputs
from test_x86_lookup_fusion import fused_kernel_names

RNG = np.random.default_rng(11)
CODE_OPS = {"Concat", "Resize"}


def text_mask_iou(a: np.ndarray, b: np.ndarray, threshold: float = 0.3) -> float:
    """IoU of the text masks (probability > threshold) of two probability maps, pooled over the batch."""
    mask_a, mask_b = a > threshold, b > threshold
    union = int((mask_a | mask_b).sum())
    return 1.0 if union == 0 else int((mask_a & mask_b).sum()) / union


# ---------------------------------------------------------------------------------------------
# QConvTranspose against the reference, and the reference against float
# ---------------------------------------------------------------------------------------------
TRANSPOSE_CASES = {  # x shape, w shape, attrs, x zero point, weight dtype, per-channel weight zero points
    "det_head_2x2_stride_2": ((1, 6, 5, 7), (6, 4, 2, 2), {"strides": [2, 2], "pads": [0, 0, 0, 0],
                                                           "output_padding": [0, 0], "group": 1}, 121, "int8", False),
    "grouped_3x3_stride_2_cropped": ((2, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 1],
                                                                  "output_padding": [1, 0], "group": 2}, 0, "int8", False),
    "output_padding_beyond_the_taps": ((1, 3, 4, 4), (3, 2, 2, 2), {"strides": [2, 2], "pads": [0, 0, 0, 0],
                                                                    "output_padding": [1, 1], "group": 1}, 200, "int8", False),
    "weight_zero_points_1d": ((1, 4, 9), (4, 6, 5), {"strides": [3], "pads": [2, 1], "output_padding": [0],
                                                     "group": 2}, 17, "uint8", True),
}


def transpose_graph(case: str, epilogue: str) -> tuple[Graph, np.ndarray]:
    x_shape, w_shape, attrs, x_zero_point, w_dtype, per_channel = TRANSPOSE_CASES[case]
    x = codes(*x_shape)
    x.reshape(-1)[:4] = [0, 255, 0, 255]  # extreme codes
    rank = len(x_shape) - 2
    c_out = w_shape[1] * attrs["group"]
    w = codes(*w_shape, dtype=w_dtype)
    w.reshape(-1)[:2] = [np.iinfo(w_dtype).min, np.iinfo(w_dtype).max]
    w_zero_point = RNG.integers(100, 156, c_out).astype(np.int32) if per_channel else np.array(0, np.int32)
    constants = {"w": w, "w_zero_point": w_zero_point, "bias": RNG.integers(-20000, 20000, c_out).astype(np.int32)}
    full = {**attrs, "dilations": [1] * rank, "x_zero_point": x_zero_point}
    if epilogue == "float":
        full.update(epilogue="float", out_zero_point=0, out_min=0, out_max=0, out_dtype="float32")
        constants["out_scale"] = RNG.uniform(1e-4, 1e-2, c_out).astype(np.float32)
    else:
        full.update(epilogue="requantize", out_zero_point=90, out_min=90, out_max=255, out_dtype="uint8")  # a Relu
        multiplier, shift = dyadic(RNG.uniform(1e-5, 1e-3, c_out))
        constants.update(multiplier=multiplier, shift=shift)
    return one_node("QConvTranspose", {"x": x}, full, constants), x


@pytest.mark.parametrize("case", list(TRANSPOSE_CASES))
@pytest.mark.parametrize("epilogue", ["requantize", "float"])
def test_qconv_transpose_tvm_equals_the_reference(tmp_path, case, epilogue):
    graph, x = transpose_graph(case, epilogue)
    assert_bit_exact(graph, {"x": x}, tmp_path)


@pytest.mark.parametrize("case", list(TRANSPOSE_CASES))
def test_qconv_transpose_reference_is_the_float_conv_transpose_of_its_codes(case):
    """float epilogue with out_scale s_x * s_w: the float ConvTranspose of the dequantized operands plus the
    bias, up to float32 rounding."""
    graph, x = transpose_graph(case, "float")
    node = graph.nodes[0]
    c = graph.constants
    s_x, s_w = np.float64(0.02), np.float64(0.003)
    c["out_scale"] = np.full(c["bias"].shape, s_x * s_w, np.float32)
    got = run_graph(graph, {"x": x})["y"]
    group, (c_in, per_group) = node.attrs["group"], c["w"].shape[:2]
    zero_points = np.broadcast_to(c["w_zero_point"].reshape(-1), (group * per_group,)).reshape(group, 1, per_group)
    centered_w = c["w"].astype(np.float64).reshape(group, c_in // group, per_group, -1) - zero_points[..., None]
    float_node = Node("ConvTranspose", "t", ["x", "w"], ["y"], {k: node.attrs[k] for k in OPS["ConvTranspose"]})
    (expected,) = run_node(float_node, [torch.from_numpy((x.astype(np.float64) - node.attrs["x_zero_point"]) * s_x),
                                        torch.from_numpy(centered_w.reshape(c["w"].shape) * s_w)])
    expected = expected.numpy() + (c["bias"] * s_x * s_w).reshape([1, -1] + [1] * (x.ndim - 2))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_qconv_transpose_with_dilation_is_refused_by_the_emitter(tmp_path):
    graph, x = transpose_graph("det_head_2x2_stride_2", "requantize")
    graph.nodes[0].attrs["dilations"] = [2, 2]
    with pytest.raises(UnsupportedError, match="dilation"):
        tvm_outputs(graph, [{"x": x}], tmp_path)


# ---------------------------------------------------------------------------------------------
# A small DB head, W8A8, integer from the input quantizer to the probability map
# ---------------------------------------------------------------------------------------------
def batch_norm(rng: np.random.Generator, name: str, x: str, y: str, channels: int) -> tuple[Node, list]:
    inits = [init(f"{name}_s", rng.uniform(0.5, 1.5, channels).astype(np.float32)),
             init(f"{name}_b", rng.normal(0, 1, channels).astype(np.float32)),
             init(f"{name}_m", rng.normal(0, 0.1, channels).astype(np.float32)),
             init(f"{name}_v", rng.uniform(0.5, 2, channels).astype(np.float32))]
    return helper.make_node("BatchNormalization", [x] + [i.name for i in inits], [y], epsilon=1e-5), inits


def normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return rng.normal(0, scale, shape).astype(np.float32)


def db_head(seed: int = 0, channels: int = 8, height: int = 6, width: int = 10):
    """PP-OCR det's head in small, random weights: an FPN (nearest Resize x2, Add, Concat), Conv -> BN -> Relu,
    ConvTranspose(2x2, stride 2) -> Add(bias) -> BN -> Relu, ConvTranspose -> Add(bias) -> Sigmoid."""
    rng = np.random.default_rng(seed)
    c = channels
    resize = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    bn1, bn1_inits = batch_norm(rng, "bn1", "h", "hb", c)
    bn2, bn2_inits = batch_norm(rng, "bn2", "tb", "tn", c)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["f0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["f0"], ["f"]),
        helper.make_node("Conv", ["f", "w1"], ["g"]),
        helper.make_node("Resize", ["f", "", "up_scales"], ["up"], **resize),
        helper.make_node("Resize", ["g", "", "up_scales"], ["up2"], **resize),
        helper.make_node("Add", ["up", "up2"], ["s"]),
        helper.make_node("Concat", ["up", "s"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["h"], pads=[1, 1, 1, 1]),
        bn1, helper.make_node("Relu", ["hb"], ["hr"]),
        helper.make_node("ConvTranspose", ["hr", "wt1"], ["t"], strides=[2, 2]),
        helper.make_node("Add", ["t", "bt1"], ["tb"]),
        bn2, helper.make_node("Relu", ["tn"], ["tr"]),
        helper.make_node("ConvTranspose", ["tr", "wt2"], ["u"], strides=[2, 2]),
        helper.make_node("Add", ["u", "bt2"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["y"]),
    ]
    inits = [init("w0", normal(rng, c, 3, 3, 3, scale=0.3)), init("b0", normal(rng, c, scale=0.1)),
             init("w1", normal(rng, c, c, 1, 1, scale=0.3)), init("up_scales", np.array([1, 1, 2, 2], np.float32)),
             init("w2", normal(rng, c, 2 * c, 3, 3, scale=0.1)), *bn1_inits,
             init("wt1", normal(rng, c, c, 2, 2, scale=0.3)), init("bt1", normal(rng, 1, c, 1, 1, scale=0.1)),
             *bn2_inits, init("wt2", normal(rng, c, 1, 2, 2, scale=0.5)),
             init("bt2", np.full((1, 1, 1, 1), -1.0, np.float32))]
    return model(nodes, [tensor_input("x", [1, 3, height, width])], [out()], inits)


def head_inputs(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": normal(rng, 1, 3, 6, 10)} for _ in range(count)]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    graph = import_onnx(db_head())
    quantized = quantize(graph, preset("w8a8"), head_inputs(1, 8))
    lowered = lower_integer(quantized)
    verify(lowered, OPS)
    feeds = head_inputs(2, 4)
    tvm = tvm_outputs(lowered, feeds, tmp_path_factory.mktemp("head"))
    return graph, quantized, lowered, feeds, tvm


def test_the_batchnorm_after_a_biased_conv_transpose_folds():
    graph = import_onnx(db_head())
    folded = FoldBatchNorm()(graph.copy())
    assert folded.op_counts() == {"Add": 2, "Concat": 1, "Conv": 3, "ConvTranspose": 2, "Relu": 3, "Resize": 2,
                                  "Sigmoid": 1}  # Adds: the FPN's and the last ConvTranspose's bias
    (feeds,) = head_inputs(3, 1)
    np.testing.assert_allclose(run_graph(folded, feeds)["y"], run_graph(graph, feeds)["y"], rtol=1e-5, atol=1e-6)


def test_the_integer_region_takes_the_sigmoid_logits_in():
    graph = FoldBatchNorm()(import_onnx(db_head()))
    plain, _ = activation_points(graph)
    widened, _ = activation_points(graph, integer=True)
    assert widened - plain == {"logits"} and "y" not in widened


def test_the_logits_quantizer_spans_only_where_the_sigmoid_varies():
    """The Sigmoid is within 1e-6 of 0 or 1 outside [-13.8, 13.8]: an observed range beyond it is narrowed
    (PP-OCRv4 det's logits: [-167, 106], a step of 1.07 -> 0.11), one inside it is kept."""
    graph = FoldBatchNorm()(import_onnx(db_head()))
    region = float_table_region(graph, "y", graph.producers(), graph.consumers())
    assert region is not None and region.input == "logits"
    low, high = active_range(graph, [region], -167.0, 106.0)
    assert -13.95 < low < -13.8 and 13.8 < high < 13.95
    assert active_range(graph, [region], -3.0, 2.0) == (-3.0, 2.0)


def test_the_head_lowers_to_integer_ops_only(head):
    graph, quantized, lowered, feeds, tvm = head
    counts = lowered.op_counts()
    assert counts == {"Concat": 1, "QAdd": 1, "QConv": 3, "QConvTranspose": 2, "QLookup": 1, "QuantizeLinear": 1,
                      "Resize": 2}
    assert set(counts) <= set(QUANTIZED_OPS) | CODE_OPS
    table = next(n for n in lowered.nodes if n.op == "QLookup")
    assert lowered.constants[table.inputs[1]].dtype == np.float32 and table.outputs == ["y"]
    for node in lowered.nodes:
        if node.op in CODE_OPS:
            assert all(lowered.values[v].dtype == "uint8" for v in node.inputs[:1] + node.outputs), node.name


def test_the_head_in_tvm_equals_the_integer_reference_bit_for_bit(head):
    graph, quantized, lowered, feeds, tvm = head
    for f, (got,) in zip(feeds, tvm):
        assert got.tobytes() == run_graph(lowered, f)["y"].tobytes()


def test_the_fpn_runs_in_the_convolutions_layout_without_transposes(head):
    """The nearest Resizes (gathers along H and W), the QAdd of two of them and the Concat run in NHWC like
    the convolutions around them (backends/transpose_sinking.py): the one transpose left is the input
    quantizer's, and the ConvTranspose's pixel shuffles (reshape + transpose) stay as they are."""
    lowered = head[2]
    names = fused_kernel_names(lowered)
    transposes = [n for n in names if "transpose" in n and "reshape" not in n]
    assert len(transposes) == 1 and transposes[0].startswith("fused_divide"), names
    assert any("concatenate" in n for n in names)


def test_the_sigmoid_table_holds_float32_sigmoids_of_the_logit_codes(head):
    graph, quantized, lowered, feeds, tvm = head
    table_node = next(n for n in lowered.nodes if n.op == "QLookup")
    table = lowered.constants[table_node.inputs[1]]
    logits = dequantize(np.arange(256, dtype=np.uint8), quantized.values["logits"].quant).astype(np.float64)
    np.testing.assert_allclose(table, 1 / (1 + np.exp(-logits)), rtol=2 ** -22, atol=2 ** -30)


def test_the_integer_head_is_the_fake_quant_head_and_close_to_fp32(head):
    """The integer probability map departs from the fake-quant Simulator's (same quantizers, float sums) by a
    logit step here and there (times the sigmoid's slope, at most 1/4), and from FP32 by its quantization."""
    graph, quantized, lowered, feeds, tvm = head
    step = float(quantized.values["logits"].quant.scale)
    simulator = Simulator(quantized)
    for f in feeds:
        ours, simulated, fp32 = run_graph(lowered, f)["y"], simulator.run(f)["y"], run_graph(graph, f)["y"]
        assert np.abs(ours - simulated).max() <= 2 * step / 4 and np.abs(ours - simulated).mean() < 1e-3
        assert np.abs(ours - fp32).max() < 0.1 and np.abs(ours - fp32).mean() < 0.01  # measured 0.04, 0.003


# ---------------------------------------------------------------------------------------------
# Dead channels: a bias of more accumulator steps than int32 holds
# ---------------------------------------------------------------------------------------------
def dead_channel_model(bias: float):
    """Conv (channel 1's weights ~1e-30: a degenerate weight scale, bias `bias`) -> Relu -> Conv."""
    rng = np.random.default_rng(5)
    w = normal(rng, 3, 4, 3, 3, scale=0.3)
    w[1] *= 1e-30
    b = np.array([0.1, bias, -0.2], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    inits = [init("w", w), init("b", b), init("w2", normal(rng, 2, 3, 1, 1))]
    return model(nodes, [tensor_input("x", [1, 4, 5, 5])], [out()], inits), rng


def test_a_dead_channel_whose_bias_overflows_the_accumulator_is_lowered_as_its_constant(tmp_path):
    onnx_model, rng = dead_channel_model(0.5)
    graph = import_onnx(onnx_model)
    feeds = [{"x": normal(rng, 1, 4, 5, 5)} for _ in range(3)]
    quantized = quantize(graph, preset("w8a8"), feeds)
    lowered, where = lower_integer_traced(quantized)
    first = next(layer for layer in lowered.metadata["integer_lowering"]["layers"] if layer["node"] == "Conv_0")
    assert first["constant_channels"] == [1]
    conv = next(n for n in lowered.nodes if n.name == "Conv_0")
    assert not lowered.constants[conv.inputs[1]][1].any()  # its weights at the zero point: the accumulator is 0
    relu_spec = quantized.values["r"].quant
    expected_code = int(np.round(0.5 / float(relu_spec.scale))) + int(relu_spec.zero_point)
    for f, (got,) in zip(feeds, tvm_outputs(lowered, feeds, tmp_path)):
        reference = run_graph(lowered, f, keep=[where.codes["r"]])
        assert got.tobytes() == reference["y"].tobytes()
        assert np.all(reference[where.codes["r"]][0, 1] == expected_code)  # quantize(relu(0.5))
        np.testing.assert_array_equal(Simulator(quantized).run(f, keep=["r"])["r"][0, 1],
                                      dequantize(reference[where.codes["r"]], relu_spec)[0, 1])


def test_a_bias_overflow_on_a_channel_that_depends_on_its_input_is_refused():
    """A channel whose output moves with its input cannot drop its accumulator: no silent clamp."""
    node = Node("Conv", "conv", ["x", "w"], ["y"], {"group": 1})
    w_codes = np.full((1, 2 ** 14), 127, np.int8)  # an accumulator of up to 5.3e8 steps
    x_spec = QuantSpec("uint8", 8, scale=np.asarray(0.01, np.float32), zero_point=np.asarray(0, np.int32))
    out_spec = QuantSpec("uint8", 8, scale=np.asarray(0.01, np.float32), zero_point=np.asarray(200, np.int32))
    attrs = {"epilogue": "requantize", "out_zero_point": 200, "out_min": 0, "out_max": 255}

    def lower(bias: float) -> np.ndarray:
        acc_scale = np.array([1e-9])  # s_x * s_w
        bias_codes = np.array([bias]) / acc_scale
        multiplier, shift = dyadic(acc_scale / 0.01)
        constant_channels(node, np.array([0]), w_codes, np.zeros(1, np.int32), x_spec, out_spec, acc_scale,
                          np.array([bias]), bias_codes, {"multiplier": multiplier, "shift": shift}, attrs)
        return bias_codes

    with pytest.raises(UnsupportedError, match="channel 0.*depends on the input"):
        lower(-1.9)  # the output spans -1.9 .. -1.37: codes 10 .. 63
    assert lower(-1000.0).tolist() == [-200.0]  # every input saturates at code 0

    float_attrs = {"epilogue": "float", "out_zero_point": 0, "out_min": 0, "out_max": 0}
    out_scale, bias_codes = np.array([1e-9], np.float32), np.array([3e9])
    zeros = np.zeros_like(w_codes)
    kept = constant_channels(node, np.array([0]), zeros, np.zeros(1, np.int32), x_spec, None, np.array([1e-9]),
                             np.array([3.0]), bias_codes, {"out_scale": out_scale}, float_attrs)
    assert not kept.any() and bias_codes.tolist() == [1.0] and out_scale.tolist() == [3.0]  # 1 * 3.0
    with pytest.raises(UnsupportedError, match="channel 0.*not all zero"):
        constant_channels(node, np.array([0]), w_codes, np.zeros(1, np.int32), x_spec, None, np.array([1e-9]),
                          np.array([3.0]), np.array([3e9]), {"out_scale": out_scale}, float_attrs)


# ---------------------------------------------------------------------------------------------
# PP-OCRv4 det on real pages
# ---------------------------------------------------------------------------------------------
DET_OPS = {"Concat": 1, "QAdd": 11, "QConv": 62, "QConvTranspose": 2, "QGlobalAveragePool": 10, "QLookup": 63,
           "QMul": 10, "QuantizeLinear": 1, "Resize": 6}
DET_OUTPUT = "sigmoid_0.tmp_0"


def check_det_lowering(lowered: Graph) -> None:
    """Integer from the input quantizer to the probability map: no float op, the FPN's Resizes and Concat on
    uint8 codes, the Sigmoid a float32 table, the dead channel of p2o.Conv.22 a constant."""
    assert lowered.op_counts() == DET_OPS
    for node in lowered.nodes:
        if node.op in CODE_OPS:
            assert all(lowered.values[v].dtype == "uint8" for v in [*node.inputs, *node.outputs]), node.name
    (table,) = [n for n in lowered.nodes if n.op == "QLookup" and n.outputs == [DET_OUTPUT]]
    assert lowered.constants[table.inputs[1]].dtype == np.float32
    layers = {layer["node"]: layer for layer in lowered.metadata["integer_lowering"]["layers"]}
    assert {layer["lowered"] for layer in layers.values()} == {"QConv", "QConvTranspose"}
    assert layers["p2o.Conv.22"]["constant_channels"] == [1]


def test_ppocr_det_w8a8_lowers_to_integer_ops_only_and_finds_the_text():
    """Min-max ranges on one page keep this fast (the MSE search takes a minute): the lowering does not
    care how the ranges were found. Measured text-mask IoU against FP32 on this page view: 0.91."""
    graph = import_onnx(zoo.onnx_path("ppocr_det"), zoo.input_shapes("ppocr_det", 1))
    recipe = preset("w8a8").with_(activation_observer="minmax")
    quantized = quantize(graph, recipe, zoo.inputs("ppocr_det", 1, 1, split="calib"))
    lowered = lower_integer(quantized)
    verify(lowered, OPS)
    check_det_lowering(lowered)
    logits = dequantize(np.array([0, 255], np.uint8), quantized.values["p2o.Add.281"].quant)
    assert -14.5 < logits[0] < -13 and 13 < logits[1] < 14.5  # where the Sigmoid varies
    (feeds,) = zoo.inputs("ppocr_det", 1, 1, split="eval")  # a view of page.png
    ours, fp32 = run_graph(lowered, feeds)[DET_OUTPUT], run_graph(graph, feeds)[DET_OUTPUT]
    assert (fp32 > 0.3).mean() > 0.05 and text_mask_iou(ours, fp32) >= 0.85


@pytest.mark.slow
def test_ppocr_det_w8a8_artifact_equals_the_integer_reference_on_real_pages(tmp_path):
    """bitsmith.compile(recipe="w8a8") on real calibration pages: the artifact's probability maps equal the
    integer reference's bit for bit; measured text-mask IoU against FP32 on these views: 0.94."""
    shapes = zoo.input_shapes("ppocr_det", 1)
    compiled = compile_traced(zoo.onnx_path("ppocr_det"), "host", input_shapes=shapes, recipe="w8a8",
                              calibration=zoo.inputs("ppocr_det", 2, 1, split="calib"), output_dir=tmp_path / "det",
                              quiet=True)
    check_det_lowering(compiled.lowered)
    assert compiled.artifact.manifest["formats"]["ops"] == DET_OPS
    ours, fp32 = [], []
    for feeds in zoo.inputs("ppocr_det", 2, 1, split="eval"):
        got = compiled.artifact.run(feeds)[DET_OUTPUT]
        expected = run_graph(compiled.lowered, feeds)[DET_OUTPUT]
        assert got.dtype == expected.dtype == np.float32 and got.tobytes() == expected.tobytes()
        ours.append(expected)
        fp32.append(run_graph(compiled.graph, feeds)[DET_OUTPUT])
    assert text_mask_iou(np.concatenate(ours), np.concatenate(fp32)) >= 0.9
