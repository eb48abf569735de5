"""The x86 kernels of quantized graphs: which schedule each gets, how it reads its operands, and that it
stays exact.

- a float MatMul whose output is quantized (a layer left in FP32 inside a W8A8 graph: its epilogue is a
  fused QuantizeLinear with a NaN guard) gets the tiled-reduction schedule, as in FP32 artifacts;
- QMatMul / QConv with constant int8 weights read the 8-bit codes and the int8 weights directly (no
  int32 copies), the weights packed into panels, and the input zero point folded into the bias;
- those kernels equal the integer reference bit for bit at the extremes of the codes (every x = 255 or 0,
  every w = -128 or 127), where the folded correction zx * sum(w) is largest;
- their innermost products are an exact dot-product instruction: vpmaddwd on AVX2, vpdpbusd on AVX-512
  VNNI (backends/x86_intrinsics.py), and on AVX2 vpmaddubsw where the weight codes are within +-64 (int7,
  int4), which only there cannot saturate.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tvm
from tvm import tirx

from bitsmith import zoo
from bitsmith.backends import x86
from bitsmith.backends.relax_emit import WEIGHT_CODE_BOUNDS_ATTR, emit_relax
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import run_graph
from bitsmith.passes.lower_integer import lower_integer
from bitsmith.quantize import quantize
from bitsmith.recipes import preset
from bitsmith.ir import Graph, Node, verify
from bitsmith.ops import OPS
from bitsmith.targets import load
from test_integer_lowering import assert_bit_exact, codes, one_node, requant_attrs, requant_constants, tvm_outputs

SCHEDULE_LOG = "bitsmith.backends.cpu_schedule"


def scheduled(graph: Graph, caplog) -> tuple[tvm.IRModule, dict[str, str]]:
    """The module after ScheduleCPU and {PrimFunc name: the rule that scheduled it}."""
    target = load("x86-avx2")
    caplog.set_level(logging.DEBUG, logger=SCHEDULE_LOG)
    with x86.tvm_target(target):
        mod = tvm.transform.Sequential(x86.scheduling_passes(x86.cpu_shape(target)))(emit_relax(graph).mod)
    rules = {}
    for record in caplog.records:
        if record.name == SCHEDULE_LOG and ": scheduled by " in record.getMessage():
            name, rule = record.getMessage().split(": scheduled by ")
            rules[name] = rule
    return mod, rules


def reduction_kernels(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    """{name as ScheduleCPU saw it (before weight packing renamed it "..._prepacked"): PrimFunc}."""
    return {gv.name_hint.removesuffix("_prepacked"): f for gv, f in mod.functions_items()
            if isinstance(f, tirx.PrimFunc) and ("matmul" in gv.name_hint or "conv" in gv.name_hint)
            and not gv.name_hint.endswith("_weight_prepack")}


def param_dtypes(func: tirx.PrimFunc) -> list[str]:
    return [str(p.dtype) for p in func.params]


def float_matmul_then_quantize() -> Graph:
    """x float [64, 96] -> MatMul(W [96, 48]) -> QuantizeLinear (uint8): a float layer of a W8A8 graph."""
    rng = np.random.default_rng(0)
    graph = Graph(name="float_matmul_quantized")
    graph.add_value("x", (64, 96), "float32")
    graph.inputs.append("x")
    graph.add_constant("w", rng.normal(0, 0.1, (96, 48)).astype(np.float32))
    graph.add_constant("scale", np.array(0.05, np.float32))
    graph.add_constant("zero_point", np.array(128, np.int32))
    graph.add_value("y_float", (64, 48), "float32")
    graph.add_value("y", (64, 48), "uint8")
    graph.nodes.append(Node("MatMul", "matmul", ["x", "w"], ["y_float"], {}))
    graph.nodes.append(Node("QuantizeLinear", "quantize", ["y_float", "scale", "zero_point"], ["y"],
                            {"axis": 0, "dtype": "uint8", "qmin": 0, "qmax": 255}))
    graph.outputs = ["y"]
    verify(graph, OPS)
    return graph


def qmatmul(a: np.ndarray, b: np.ndarray, a_zero_point: int) -> Graph:
    n = b.shape[1]
    constants = {"b": b, "b_zero_point": np.array(0, np.int32), "bias": np.arange(n, dtype=np.int32) * 37 - 500,
                 **requant_constants(n)}
    return one_node("QMatMul", {"a": a}, {"a_zero_point": a_zero_point, **requant_attrs()}, constants)


def qconv(x: np.ndarray, w: np.ndarray, x_zero_point: int, pads: list[int]) -> Graph:
    attrs = {"strides": [1, 1], "pads": pads, "dilations": [1, 1], "group": 1, "x_zero_point": x_zero_point,
             **requant_attrs()}
    constants = {"w": w, "w_zero_point": np.array(0, np.int32), "bias": np.zeros(w.shape[0], np.int32),
                 **requant_constants(w.shape[0])}
    return one_node("QConv", {"x": x}, attrs, constants)


def test_a_float_matmul_with_a_quantized_output_gets_the_tiled_schedule(caplog):
    mod, rules = scheduled(float_matmul_then_quantize(), caplog)
    (name,) = reduction_kernels(mod)
    assert rules[name] == "schedule_tiled_reduction"


def test_qmatmul_reads_codes_and_packed_int8_weights(caplog):
    mod, rules = scheduled(qmatmul(codes(32, 96), codes(96, 64, dtype="int8"), a_zero_point=128), caplog)
    kernels = reduction_kernels(mod)
    assert len(kernels) == 1
    name, func = next(iter(kernels.items()))
    assert rules[name] == "schedule_tiled_reduction"
    dtypes = param_dtypes(func)
    assert dtypes[:2] == ["uint8", "int8"]  # no int32 copy of either operand
    packed = [int(d) for d in func.params[1].shape]
    assert packed[-2:] == [8, 2]  # blocks of 8 columns x 2 reduction steps: one AVX2 vpmaddwd each


def test_qconv_reads_codes_and_int8_weights(caplog):
    graph = qconv(codes(1, 16, 10, 10), codes(32, 16, 3, 3, dtype="int8"), x_zero_point=117, pads=[1, 1, 1, 1])
    mod, rules = scheduled(graph, caplog)
    convs = {n: f for n, f in reduction_kernels(mod).items() if "conv" in n}
    assert len(convs) == 1
    name, func = next(iter(convs.items()))
    assert rules[name] == "schedule_tiled_reduction"
    assert {"uint8", "int8"} <= set(param_dtypes(func)) and "int32" not in param_dtypes(func)[:2]


@pytest.mark.parametrize("x_value,w_value,zero_point", [(255, -128, 0), (0, 127, 255), (255, 127, 128)])
def test_qmatmul_at_extreme_codes_equals_the_reference(tmp_path, x_value, w_value, zero_point):
    a = np.full((4, 384), x_value, np.uint8)
    b = np.full((384, 16), w_value, np.int8)
    b[::7] = -b[::7] - 1 if w_value < 0 else -b[::7]
    assert_bit_exact(qmatmul(a, b, zero_point), {"a": a}, tmp_path)


@pytest.mark.parametrize("zero_point,pads", [(0, [1, 1, 1, 1]), (255, [2, 0, 1, 3])])
def test_qconv_at_extreme_codes_equals_the_reference(tmp_path, zero_point, pads):
    x = np.full((1, 8, 6, 6), 255 - zero_point, np.uint8)
    x[0, :, ::2] = zero_point
    w = np.full((8, 8, 3, 3), -128, np.int8)
    w[:, :, 1] = 127
    assert_bit_exact(qconv(x, w, zero_point, pads), {"x": x}, tmp_path)


@pytest.mark.parametrize("x_value,w_value", [(-128, -128), (127, -128), (-128, 127)])
def test_qmatmul_with_int8_activations_at_extreme_codes_equals_the_reference(tmp_path, x_value, w_value):
    a = np.full((6, 256), x_value, np.int8)
    a[:, ::5] = 127 if x_value < 0 else -128
    b = np.full((256, 24), w_value, np.int8)
    b[::3] = 127 if w_value < 0 else -128
    assert_bit_exact(qmatmul(a, b, 0), {"a": a}, tmp_path)


def test_on_avx2_the_int8_reductions_use_vpmaddwd(caplog):
    """x86-avx2: 8 columns x 2 reduction steps innermost become one vpmaddwd on int16-widened codes, for
    uint8 and int8 activations (the extreme-code tests above run it on an AVX2 host)."""
    graphs = [qmatmul(codes(32, 96), codes(96, 64, dtype="int8"), a_zero_point=128),
              qmatmul(codes(32, 96, dtype="int8"), codes(96, 64, dtype="int8"), a_zero_point=0),
              qconv(codes(1, 16, 10, 10), codes(32, 16, 3, 3, dtype="int8"), x_zero_point=117, pads=[1, 1, 1, 1])]
    for graph in graphs:
        mod, _ = scheduled(graph, caplog)
        assert "llvm.x86.avx2.pmadd.wd" in mod.script()
        assert "llvm.x86.avx2.pmadd.ub.sw" not in mod.script()  # full-range weights: it could saturate


def narrow(*shape: int, largest: int = 64) -> np.ndarray:
    """int8 weight codes within [-largest, largest], both ends present."""
    w = np.clip(codes(*shape, dtype="int8"), -largest, largest).astype(np.int8)
    w.flat[0], w.flat[-1] = -largest, largest
    return w


def test_on_avx2_weights_within_7_bits_use_vpmaddubsw(caplog):
    """Weight codes within +-64 (the int7 format, int4): 8 columns x 4 reduction steps innermost become
    vpmaddubsw + vpmaddwd by ones, the weights packed in blocks of 8 x 4; one code of 65 keeps vpmaddwd."""
    for largest, packed_block, byte_dot in ((64, [8, 4], True), (65, [8, 2], False)):
        mod, _ = scheduled(qmatmul(codes(32, 96), narrow(96, 64, largest=largest), a_zero_point=128), caplog)
        (func,) = reduction_kernels(mod).values()
        assert [int(d) for d in func.params[1].shape][-2:] == packed_block
        assert ("llvm.x86.avx2.pmadd.ub.sw" in mod.script()) == byte_dot
    conv = qconv(codes(1, 16, 10, 10), narrow(32, 16, 3, 3), x_zero_point=117, pads=[1, 1, 1, 1])
    assert "llvm.x86.avx2.pmadd.ub.sw" in scheduled(conv, caplog)[0].script()


@pytest.mark.parametrize("x_value,w_value,zero_point", [(255, -64, 0), (255, 64, 3), (0, 64, 255)])
def test_narrow_weight_qmatmul_at_extreme_codes_equals_the_reference(tmp_path, x_value, w_value, zero_point):
    """vpmaddubsw's int16 pair sums at their extremes: 255 x 64 x 2 = 32640, one step below saturation."""
    a = np.full((4, 384), x_value, np.uint8)
    b = np.full((384, 16), w_value, np.int8)
    b[::9] = -w_value
    assert_bit_exact(qmatmul(a, b, zero_point), {"a": a}, tmp_path)


def test_narrow_weight_qconv_equals_the_reference(tmp_path):
    x = codes(1, 16, 9, 9)
    x[0, :, ::2] = 255
    assert_bit_exact(qconv(x, narrow(24, 16, 3, 3), 131, [1, 1, 1, 1]), {"x": x}, tmp_path)


def test_on_avx512_vnni_the_int8_reductions_use_vpdpbusd(caplog):
    """x86-avx512 (VNNI): the 16 columns x 4 reduction steps innermost become one vpdpbusd; the
    extreme-code tests above run it on the host when the host has VNNI (exact: no saturation)."""
    target = load("x86-avx512")
    graphs = [qmatmul(codes(32, 96), codes(96, 64, dtype="int8"), a_zero_point=128),
              qconv(codes(1, 16, 10, 10), codes(32, 16, 3, 3, dtype="int8"), x_zero_point=117, pads=[1, 1, 1, 1])]
    for graph in graphs:
        with x86.tvm_target(target):
            mod = tvm.transform.Sequential(x86.scheduling_passes(x86.cpu_shape(target)))(emit_relax(graph).mod)
        assert "llvm.x86.avx512.vpdpbusd.512" in mod.script()


@pytest.mark.parametrize("out_channels,kernel,form", [(24, 3, "vpdpbusd.256"), (4, 1, "vpdpbusd.128")])
def test_on_avx512_vnni_outputs_of_8k_or_4k_channels_use_its_ymm_or_xmm_form(tmp_path, out_channels, kernel, form):
    """24 output channels (PP-OCR's neck) are 3 ymm vpdpbusd, not AVX2's vpmaddwd; 4 (a transposed
    convolution's phases) one xmm vpdpbusd, not int32 multiplies. Exact at the extreme codes wherever
    the host has VNNI (the test then runs the kernel)."""
    target = load("x86-avx512")
    x = np.full((1, 24, 7, 9), 255, np.uint8)
    x[0, :, ::2] = 0
    w = np.full((out_channels, 24, kernel, kernel), -128, np.int8)
    w[::3] = 127
    graph = qconv(x, w, x_zero_point=0, pads=[kernel // 2] * 4)
    with x86.tvm_target(target):
        mod = tvm.transform.Sequential(x86.scheduling_passes(x86.cpu_shape(target)))(emit_relax(graph).mod)
    assert f"llvm.x86.avx512.{form}" in mod.script()
    assert "llvm.x86.avx2.pmadd.wd" not in mod.script()
    assert_bit_exact(graph, {"x": x}, tmp_path)


def depthwise_qconv(x: np.ndarray, w: np.ndarray, x_zero_point: int, stride: int) -> Graph:
    channels, _, kernel, _ = w.shape
    attrs = {"strides": [stride, stride], "pads": [kernel // 2] * 4, "dilations": [1, 1], "group": channels,
             "x_zero_point": x_zero_point, **requant_attrs()}
    constants = {"w": w, "w_zero_point": np.array(0, np.int32), "bias": np.arange(channels, dtype=np.int32) * 9 - 100,
                 **requant_constants(channels)}
    return one_node("QConv", {"x": x}, attrs, constants)


@pytest.mark.parametrize("kernel,stride,zero_point,uses_vnni", [(3, 1, 0, True), (3, 2, 131, True), (5, 1, 255, True),
                                                                (5, 2, 0, False)])
def test_on_avx512_vnni_depthwise_convolutions_dot_their_kernel_rows_with_vpdpbusd(tmp_path, kernel, stride, zero_point,
                                                                                  uses_vnni):
    """A depthwise QConv's channels are vpdpbusd's lanes and its kernel rows the bytes each lane sums (a 5 x 5
    kernel: 4 + 1 rows, two vpdpbusd), instead of int32 multiplies per tap; zero point 0 pads the input per
    tile. A 5 x 5 kernel at stride 2 keeps the multiplies (measured faster). Exact at the extreme codes
    wherever the host has VNNI (the test then runs the kernel)."""
    target = load("x86-avx512")
    x = np.full((1, 48, 13, 11), 255, np.uint8)
    x[0, :, ::2] = 0
    x[0, ::5, :, 1::3] = 0
    w = np.full((48, 1, kernel, kernel), -128, np.int8)
    w[::3, :, 1] = 127
    graph = depthwise_qconv(x, w, zero_point, stride)
    with x86.tvm_target(target):
        mod = tvm.transform.Sequential(x86.scheduling_passes(x86.cpu_shape(target)))(emit_relax(graph).mod)
    assert ("llvm.x86.avx512.vpdpbusd.512" in mod.script()) == uses_vnni
    assert_bit_exact(graph, {"x": x}, tmp_path)


@pytest.mark.parametrize("out_channels,padded", [(18, 24), (42, 48), (7, 8)])
def test_output_channels_are_padded_to_a_multiple_of_8_for_the_dot_product(tmp_path, caplog, out_channels, padded):
    """PP-OCRv4 det's 96 -> 18 and 192 -> 42 1 x 1 convolutions: zero filters pad the output channels to a
    multiple of 8, so the int8 dot products (8 lanes) cover them instead of int32 multiplies; the padding
    channels are sliced off before the epilogue. Still the reference's integers."""
    x = codes(1, 32, 6, 10)
    graph = qconv(x, codes(out_channels, 32, 1, 1, dtype="int8"), x_zero_point=121, pads=[0, 0, 0, 0])
    mod, rules = scheduled(graph, caplog)
    (name, func), = [(n, f) for n, f in reduction_kernels(mod).items() if "conv" in n]
    assert rules[name] == "schedule_tiled_reduction"
    assert "llvm.x86.avx2.pmadd.wd" in func.script()
    packed = [int(d) for d in func.params[1].shape]
    assert packed[-2] == 8 and int(np.prod(packed)) == padded * 32  # 8-lane panels of the padded filters
    assert_bit_exact(graph, {"x": x}, tmp_path)


def test_the_requantize_epilogue_of_qconv_and_qmatmul_runs_in_32_bit_lanes(caplog):
    """relax_emit's int64 requantize chain is the one backends/requantize.py rewrites (shifts >= 33 here),
    fused into the convolution / matmul kernel."""
    graphs = [qmatmul(codes(32, 96), codes(96, 64, dtype="int8"), a_zero_point=128),
              qconv(codes(1, 16, 10, 10), codes(32, 16, 3, 3, dtype="int8"), x_zero_point=117, pads=[1, 1, 1, 1])]
    for graph in graphs:
        mod, _ = scheduled(graph, caplog)
        names = list(reduction_kernels(mod))
        assert len(names) == 1 and "requantize_int32" in names[0], names


def test_a_three_channel_qconv_is_padded_to_four_channels_for_the_dot_product(tmp_path, caplog):
    """An RGB image's first convolution: 3 input channels padded to 4 (zero weights), so its 3 x 3 x 4
    reduction runs on vpmaddubsw (int7 weights) like the others; still the reference's integers."""
    x = codes(1, 3, 12, 12)
    graph = qconv(x, narrow(16, 3, 3, 3), x_zero_point=114, pads=[1, 1, 1, 1])
    (func,) = [f for n, f in reduction_kernels(scheduled(graph, caplog)[0]).items() if "conv" in n]
    assert [int(d) for d in func.params[1].shape][-2:] == [8, 4]
    assert_bit_exact(graph, {"x": x}, tmp_path)


def test_w7a8_onet_weights_fit_7_bits_and_its_artifact_equals_the_reference(tmp_path):
    """The w7a8 preset (int7 weights) on MTCNN ONet: every QConv / QMatMul weight code within [-64, 63],
    the emitter bounds them so (the AVX2 byte dot product applies), and the artifact equals the integer
    reference bit for bit on real faces."""
    graph = import_onnx(zoo.onnx_path("mtcnn_onet"), zoo.input_shapes("mtcnn_onet", batch=8))
    lowered = lower_integer(quantize(graph, preset("w7a8"), zoo.inputs("mtcnn_onet", 2, 8, split="calib")))
    weights = [lowered.constants[n.inputs[1]] for n in lowered.nodes if n.op in ("QConv", "QMatMul")]
    assert weights and all(w.dtype == np.int8 and -64 <= w.min() and w.max() <= 63 for w in weights)
    bounds = emit_relax(lowered).mod["main"].attrs[WEIGHT_CODE_BOUNDS_ATTR]
    assert len(bounds) == len(weights) and max(int(b) for b in bounds.values()) <= 64
    feeds = zoo.inputs("mtcnn_onet", 1, 8, split="eval")
    (got,) = tvm_outputs(lowered, feeds, tmp_path)
    expected = run_graph(lowered, feeds[0])
    for name, array in zip(lowered.outputs, got):
        np.testing.assert_array_equal(array, expected[name], err_msg=name)
