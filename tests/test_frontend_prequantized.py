"""Pre-quantized ONNX models (QDQ, QOperator, dynamic) import into bitsmith's annotated IR.

The models come from ONNX Runtime's own quantization tool (quantize_static / quantize_dynamic) on
real zoo models, and the imported graphs run on bitsmith's fake-quant Simulator against ONNX Runtime
running the quantized model with graph optimizations off.

Tolerances, and why:
- *teacher forced* (the real check of the quantized semantics): the ORT model is cut at every
  integer activation (the output of each QuantizeLinear, QLinearConv, QGemm, QLinearAdd, ...), the
  simulator's codes are fed into the cuts, and ORT recomputes each segment. Its codes must equal the
  simulator's except where the simulator's unquantized value lies within 1e-5 * max |tensor| of a
  rounding midpoint, there by one step, and such flips must be rare (<= 1e-4 of the codes). QDQ:
  ORT's float kernels differ from torch's by float rounding, then QuantizeLinear rounds exactly like
  formats.quantize. QOperator: ORT's QLinearConv / QGemm accumulate exactly in int32 and requantize
  with float32 multiplier x_scale * w_scale / y_scale, while the simulator sums float products and
  divides by y_scale: the same real number up to float rounding (a few ulp), so again codes can only
  differ at midpoints. Measured over 5 images: flipped fraction <= 7.9e-6 (mtcnn_onet, one code) and
  <= 2.0e-6 (MobileNetV2), QDQ and QOperator alike; worst midpoint distance 1.5e-7.
- *free running* (the model as deployed): mtcnn_onet agrees bit for bit (QDQ and QOperator; the test
  allows 1e-5 of the output's max |value|). Through MobileNetV2's 50 quantized layers one midpoint
  flip early on changes the next layer's inputs by a whole step and grows: measured up to 2.4% of the
  logits' range; the test bounds it by 5% and requires the same predicted class.
- dynamic quantization: DynamicQuantizeLinear's scale, zero point and codes are reproduced bit for
  bit (checked against ORT on edge cases); ConvInteger / MatMulInteger accumulate exactly in int32
  and scale once, the simulator sums float products: outputs agree to 1e-5 relative (measured 2e-7).
- onnx.quantize's old pattern (ddddocr) rounds its int32 bias with Floor(b / (x_scale * w_scale)) at
  run time; the IR keeps the float bias, so a layer differs by at most one accumulator step
  x_scale * w_scale per channel (measured 1.0006 steps, 1.5e-5 relative, on its first layer).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

from bitsmith import serialize, zoo
from bitsmith.backends.onnx_qdq import export_onnx
from bitsmith.errors import IRError, UnsupportedError
from bitsmith.formats import dequantize, dynamic_spec, fake_quant, fake_quant_torch, quantize
from bitsmith.frontends.onnx import import_onnx
from bitsmith.ir import Graph, QuantSpec
from bitsmith.quantize import quantize as bitsmith_quantize
from bitsmith.recipes import QuantRecipe, preset
from bitsmith.simulate import Simulator

from quant_probe import simulate_with_raw

ort.set_default_logger_severity(3)  # ORT warns about every unused initializer of the quantized models
TIE_TOL = 1e-5
FLIP_RATE = 1e-4
FLOAT_TOL = 1e-5
RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def ort_run(m: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


class _Reader(CalibrationDataReader):
    def __init__(self, feeds):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def ort_static(name: str, fmt: QuantFormat, path) -> onnx.ModelProto:
    """ONNX Runtime's static quantization of a zoo model: uint8 activations, per-channel int8 weights.

    Weights take 7 bits (reduce_range): without AVX-512 VNNI, ORT's uint8 x int8 kernels (QLinearConv,
    QGemm) sum pairs of products in saturating int16 (pmaddubsw), so full-range int8 weights make ORT's
    codes wrong by several steps on AVX2 hosts (measured: 4 steps on mtcnn_onet's conv4); with 7-bit
    weights no pair can saturate and ORT is exact on every x86 host."""
    quantize_static(str(zoo.onnx_path(name)), str(path), _Reader(zoo.inputs(name, 2, 1, split="calib")),
                    quant_format=fmt, per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return onnx.load(str(path))


def integer_activations(m: onnx.ModelProto, graph: Graph) -> dict[str, str]:
    """Every integer activation of an ONNX model (the output of QuantizeLinear or a QLinear op) -> the
    IR value standing for it: the DequantizeLinear output when that is an IR value (a graph output, or
    any value of a model bitsmith exported), the codes' own name (QLinear outputs, copies), or the
    quantized float value itself. Graph inputs are left out (their quantization opens the first segment)."""
    dq_of = {n.input[0]: n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    found = {}
    for node in m.graph.node:
        if node.op_type not in ("QuantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd",
                                "QLinearGlobalAveragePool", "QLinearSoftmax"):
            continue
        codes = node.output[0]
        candidates = [dq_of.get(codes), codes] + ([node.input[0]] if node.op_type == "QuantizeLinear" else [])
        ir = next(c for c in candidates if c in graph.values and graph.values[c].quant is not None)
        if ir not in graph.inputs:
            found[codes] = ir
    return found


def teacher_forced(graph: Graph, m: onnx.ModelProto, feeds: dict) -> dict:
    """Cut `m` at its integer activations, feed the simulator's codes, and check ORT's codes against
    them (see the module docstring). Returns the flip fraction and the worst midpoint distance."""
    values, raw = simulate_with_raw(graph, feeds, [o for n in graph.nodes for o in n.outputs if graph.values[o].quant is not None])
    cuts = integer_activations(m, graph)
    assert cuts
    cut = onnx.ModelProto()
    cut.CopyFrom(m)
    for node in cut.graph.node:
        if node.output[0] in cuts:
            name = node.output[0]
            node.output[0] = f"{name}|ort"
            elem = helper.np_dtype_to_tensor_dtype(quantize(np.zeros(1, np.float32), graph.values[cuts[name]].quant).dtype)
            cut.graph.output.append(helper.make_tensor_value_info(node.output[0], elem, None))
            cut.graph.input.append(helper.make_tensor_value_info(name, elem, list(graph.values[cuts[name]].shape)))
    del cut.graph.value_info[:]
    codes = {name: quantize(values[ir], graph.values[ir].quant) for name, ir in cuts.items()}
    got = ort_run(cut, {**feeds, **codes})
    flips, total, worst = 0, 0, 0.0
    for name, ir in cuts.items():
        spec = graph.values[ir].quant
        ours, theirs = codes[name], got[f"{name}|ort"]
        assert theirs.dtype == ours.dtype
        total += ours.size
        differ = ours != theirs
        if not differ.any():
            continue
        flips += int(differ.sum())
        assert np.abs(ours[differ].astype(np.int32) - theirs[differ]).max() == 1, f"{name}: codes differ by > 1 step"
        a, b = dequantize(ours, spec)[differ], dequantize(theirs, spec)[differ]
        before = raw[ir].astype(np.float64)
        tie = float((np.abs(before[differ] - (a.astype(np.float64) + b) / 2) / np.abs(before).max()).max())
        assert tie <= TIE_TOL, f"{name}: ORT's code differs from the simulator's away from a rounding midpoint"
        worst = max(worst, tie)
    assert flips <= FLIP_RATE * total, f"{flips} of {total} codes flipped"
    return {"flips": flips / total, "tie": worst, "cuts": len(cuts)}


def check_annotations(graph: Graph) -> None:
    """Weights of Conv/MatMul are annotated constants on their grid; activations carry uint8 specs."""
    for node in graph.nodes:
        if node.op in ("Conv", "MatMul"):
            weight = graph.values[node.inputs[1]]
            assert node.inputs[1] in graph.constants and weight.quant is not None, node.name
            assert weight.quant.format == "int8" and weight.quant.granularity == "channel"
            assert weight.quant.axis == (0 if node.op == "Conv" else 1)  # output channels (Gemm's transB folded)
            assert graph.values[node.inputs[0]].quant.format == "uint8"
    for name, array in graph.constants.items():
        spec = graph.values[name].quant
        if spec is not None:
            assert np.array_equal(fake_quant(array, spec), array), name


# ---------------------------------------------------------------------------------------------
# (1) QDQ and (2) QOperator models from onnxruntime.quantization.quantize_static
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ort_models(tmp_path_factory) -> dict[str, onnx.ModelProto]:
    root = tmp_path_factory.mktemp("ort_quantized")
    return {"mtcnn_onet/qdq": ort_static("mtcnn_onet", QuantFormat.QDQ, root / "onet_qdq.onnx"),
            "mtcnn_onet/qop": ort_static("mtcnn_onet", QuantFormat.QOperator, root / "onet_qop.onnx"),
            "mobilenet_v2/qdq": ort_static("mobilenet_v2", QuantFormat.QDQ, root / "mbv2_qdq.onnx"),
            "mobilenet_v2/qop": ort_static("mobilenet_v2", QuantFormat.QOperator, root / "mbv2_qop.onnx")}


@pytest.mark.parametrize("key", ["mtcnn_onet/qdq", "mtcnn_onet/qop", "mobilenet_v2/qdq", "mobilenet_v2/qop"])
def test_ort_quantized_zoo_model_matches_ort(ort_models, key):
    name, fmt = key.split("/")
    m = ort_models[key]
    ops = {n.op_type for n in m.graph.node}
    assert ({"QuantizeLinear", "DequantizeLinear"} <= ops) if fmt == "qdq" else ({"QLinearConv", "QGemm"} <= ops)
    if key == "mobilenet_v2/qop":  # ORT's integer Add and pooling, and a Flatten that moves uint8 codes
        assert {"QLinearAdd", "QLinearGlobalAveragePool", "Flatten"} <= ops
    graph = import_onnx(m, zoo.input_shapes(name, 1))
    check_annotations(graph)
    counts = graph.op_counts()
    assert counts["Conv"] == {"mtcnn_onet": 4, "mobilenet_v2": 52}[name]
    assert counts["MatMul"] == {"mtcnn_onet": 4, "mobilenet_v2": 1}[name]
    for feeds in zoo.inputs(name, 2 if name == "mtcnn_onet" else 1, 1):
        teacher_forced(graph, m, feeds)
        ours, theirs = Simulator(graph).run(feeds), ort_run(m, feeds)
        for out in graph.outputs:
            if name == "mtcnn_onet":
                assert rel(ours[out], theirs[out]) <= FLOAT_TOL, out
            else:
                spread = theirs[out].max() - theirs[out].min()
                assert np.abs(ours[out] - theirs[out]).max() <= 0.05 * spread
                assert np.array_equal(ours[out].argmax(-1), theirs[out].argmax(-1))


def test_qoperator_ops_read_scales_and_biases(ort_models):
    """QLinearConv / QGemm become Conv / MatMul + Add with dequantized int32 biases; QLinearSoftmax a
    Softmax whose output keeps the model's output quantizer."""
    graph = import_onnx(ort_models["mtcnn_onet/qop"], zoo.input_shapes("mtcnn_onet", 1))
    assert graph.op_counts() == {"Add": 4, "Conv": 4, "MatMul": 4, "MaxPool": 3, "PRelu": 5, "Reshape": 1,
                                 "Softmax": 1, "Transpose": 1}
    assert graph.values["prob"].quant is not None and graph.values["prob"].quant.format == "uint8"
    conv = next(n for n in graph.nodes if n.op == "Conv")
    inits = {t.name: numpy_helper.to_array(t) for t in ort_models["mtcnn_onet/qop"].graph.initializer}
    scale = inits["input_scale"] * inits["conv1.weight_scale"]
    assert np.array_equal(graph.constants[conv.inputs[2]], inits["conv1.bias_quantized"].astype(np.float32) * scale)


def test_reexported_qdq_graph_still_matches(ort_models):
    """Round trip: the imported QDQ graph, exported again by bitsmith's QDQ backend, agrees with the
    simulator (teacher forced) and with ORT on the original model."""
    m = ort_models["mtcnn_onet/qdq"]
    graph = import_onnx(m, zoo.input_shapes("mtcnn_onet", 1))
    again = export_onnx(graph)
    for feeds in zoo.inputs("mtcnn_onet", 2, 1):
        teacher_forced(graph, again, feeds)
        reexported, original = ort_run(again, feeds), ort_run(m, feeds)
        for out in graph.outputs:
            assert rel(reexported[out], original[out]) <= FLOAT_TOL
    reimported = import_onnx(again)
    assert sorted((v.quant.format, v.quant.granularity) for v in reimported.values.values() if v.quant) == \
        sorted((v.quant.format, v.quant.granularity) for v in graph.values.values() if v.quant)


def test_qoperator_matmul_model_matches_ort(tmp_path):
    """QLinearMatMul (per-column int8 weight scales), QLinearAdd of two quantized tensors and of a
    quantized constant, a Flatten moving codes; int8 activations this time."""
    onnx.save(_float_conv_matmul(), str(tmp_path / "float.onnx"))
    calibration = [{"x": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qop.onnx"), _Reader(calibration),
                    quant_format=QuantFormat.QOperator, per_channel=True, activation_type=QuantType.QInt8)
    m = onnx.load(str(tmp_path / "qop.onnx"))
    assert {"QLinearMatMul", "QLinearAdd", "Flatten"} <= {n.op_type for n in m.graph.node}
    graph = import_onnx(m)
    assert graph.op_counts() == {"Add": 2, "Conv": 2, "MatMul": 1, "Reshape": 1}
    matmul = next(n for n in graph.nodes if n.op == "MatMul")
    spec = graph.values[matmul.inputs[1]].quant
    assert (spec.format, spec.granularity, spec.axis) == ("int8", "channel", 1)
    assert all(graph.values[n.outputs[0]].quant.format == "int8" for n in graph.nodes)
    for _ in range(4):
        feeds = {"x": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)}
        teacher_forced(graph, m, feeds)
        ours, theirs = Simulator(graph).run(feeds), ort_run(m, feeds)
        for out in graph.outputs:
            assert rel(ours[out], theirs[out]) <= FLOAT_TOL, out


def test_serialized_import_keeps_its_specs(ort_models):
    graph = import_onnx(ort_models["mtcnn_onet/qop"], zoo.input_shapes("mtcnn_onet", 1))
    back = serialize.loads(*serialize.dumps(graph))
    assert all(back.values[n].quant.same_as(v.quant) for n, v in graph.values.items() if v.quant is not None)


# ---------------------------------------------------------------------------------------------
# QDQ in every format bitsmith's exporter writes: export -> import gives back the same specs
# ---------------------------------------------------------------------------------------------
def _small_cnn() -> tuple[onnx.ModelProto, dict]:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "p"], ["s"]),
             helper.make_node("Flatten", ["s"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
             (("w1", RNG.normal(size=(8, 3, 3, 3))), ("b1", RNG.normal(size=8)), ("w2", RNG.normal(size=(8, 8, 3, 3)) * .2),
              ("w3", RNG.normal(size=(5, 128))), ("b3", RNG.normal(size=5)))]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return m, {"x": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("recipe", [
    preset("w8a8"), preset("fp8_e4m3"),
    QuantRecipe("w4_block", weights="int4", weight_granularity="block", weight_block_size=4, activations=None),
    QuantRecipe("w8a16", activations="int16", activation_symmetric=True),
    QuantRecipe("uint4_weights", weights="uint4", weight_clipping="max", activations=None),
], ids=lambda r: r.name)
def test_bitsmith_qdq_export_imports_back_exactly(recipe):
    m, feeds = _small_cnn()
    qgraph = bitsmith_quantize(import_onnx(m), recipe, [feeds])
    exported = export_onnx(qgraph)
    graph = import_onnx(exported)
    specs = {n: v.quant for n, v in qgraph.values.items() if v.quant is not None}
    back = {n: v.quant for n, v in graph.values.items() if v.quant is not None}
    assert len(back) == len(specs)
    for name, spec in specs.items():  # weights keep their names; activations are the float values before QDQ
        other = back.get(name) or back[f"{name}_float"]
        # (the importer infers `symmetric` from the zero point, which cannot tell an asymmetric range
        # centred on the midpoint from a symmetric one)
        assert other.same_as(dataclasses.replace(spec, symmetric=other.symmetric)), name
    for name in qgraph.constants:
        if qgraph.values[name].quant is not None:
            assert np.array_equal(graph.constants[name], fake_quant(qgraph.constants[name], specs[name]))
    ours, theirs = Simulator(graph).run(feeds)["y"], Simulator(qgraph).run(feeds)["y"]
    assert np.array_equal(ours, theirs)
    assert rel(ort_run(exported, feeds)["y"], ours) <= FLOAT_TOL


# ---------------------------------------------------------------------------------------------
# (3) dynamic quantization: DynamicQuantizeLinear -> ConvInteger / MatMulInteger -> Cast -> Mul
# ---------------------------------------------------------------------------------------------
def test_dynamic_quantize_linear_is_reproduced_bit_for_bit():
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])
    outs = [helper.make_tensor_value_info(n, t, None) for n, t in
            (("q", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8), ("y", TensorProto.FLOAT))]
    m = helper.make_model(helper.make_graph([node, dq], "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                                            outs), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    dynamic = QuantSpec("uint8", 8, dynamic=True)
    tensors = [np.zeros(7), np.full(5, 2.5), np.full(5, -2.5), RNG.uniform(.1, 3, 99), -RNG.uniform(.1, 3, 99),
               RNG.normal(size=(3, 40)) * 1e-30, RNG.normal(size=60) * 1e20, np.arange(-255, 1) / 7.0]
    tensors += [RNG.normal(size=64) * RNG.uniform(.01, 100) + RNG.normal() for _ in range(50)]
    for x in tensors:
        x = np.asarray(x, np.float32)
        q, s, z, y = ort_run(m, {"x": x}).values()
        spec = dynamic_spec(x)
        assert spec.scale == s and spec.zero_point == z
        assert np.array_equal(quantize(x, dynamic), q) and np.array_equal(fake_quant(x, dynamic), y)
        assert np.array_equal(fake_quant_torch(torch.from_numpy(x), dynamic).numpy(), y)


def _float_conv_matmul() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2]),
             helper.make_node("Flatten", ["c2"], ["f"]),
             helper.make_node("Add", ["f", "f"], ["twice"]),  # f is also read unquantized: the MatMul reads a copy
             helper.make_node("MatMul", ["f", "w3"], ["m"]),
             helper.make_node("Add", ["m", "b3"], ["y"])]
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
             (("w1", RNG.normal(size=(8, 3, 3, 3)) * .3), ("b1", RNG.normal(size=8)), ("w2", RNG.normal(size=(4, 8, 3, 3)) * .2),
              ("w3", RNG.normal(size=(36, 5)) * .2), ("b3", RNG.normal(size=5)))]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "twice")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_quantized_model_matches_ort(tmp_path, per_channel):
    onnx.save(_float_conv_matmul(), str(tmp_path / "float.onnx"))
    # 7-bit weights: ORT's ConvInteger / MatMulInteger saturate int16 pairs on hosts without VNNI (see ort_static)
    quantize_dynamic(str(tmp_path / "float.onnx"), str(tmp_path / "dyn.onnx"), per_channel=per_channel,
                     reduce_range=True, weight_type=QuantType.QInt8)
    m = onnx.load(str(tmp_path / "dyn.onnx"))
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= {n.op_type for n in m.graph.node}
    graph = import_onnx(m)
    assert graph.op_counts() == {"Add": 3, "Conv": 2, "MatMul": 1, "Relu": 1, "Reshape": 2}
    for node in graph.nodes:
        if node.op in ("Conv", "MatMul"):
            spec = graph.values[node.inputs[0]].quant
            assert spec.dynamic and spec.format == "uint8" and spec.granularity == "tensor"
            weight = graph.values[node.inputs[1]].quant
            assert weight.format == "int8" and not weight.dynamic
    assert graph.values["f"].quant is None  # read unquantized by the Add: the MatMul reads a quantized copy
    again = export_onnx(graph)  # dynamic specs export as DynamicQuantizeLinear -> DequantizeLinear
    assert sum(n.op_type == "DynamicQuantizeLinear" for n in again.graph.node) == 3
    assert import_onnx(again).op_counts() == graph.op_counts()
    for _ in range(4):
        feeds = {"x": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)}
        ours = Simulator(graph).run(feeds)
        for model in (m, again):
            theirs = ort_run(model, feeds)
            for out in graph.outputs:
                assert rel(ours[out], theirs[out]) <= FLOAT_TOL, out


def _ddddocr_prefix(last: str) -> onnx.ModelProto:
    """common_old.onnx up to the value `last` (its convolution stack lies before the LSTM)."""
    m = onnx.load(str(zoo.onnx_path("ddddocr_common_old")))
    nodes = []
    for node in m.graph.node:
        nodes.append(node)
        if last in node.output:
            break
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, "ddddocr_prefix", list(m.graph.input),
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)],
                              [t for t in m.graph.initializer if t.name in used])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7)


def test_ddddocr_integer_convolutions_with_floor_rounded_biases():
    """onnx.quantize's pattern: an int32 bias Floor(b / (x_scale * w_scale)) added before the Cast."""
    shapes = zoo.input_shapes("ddddocr_common_old")
    stack = import_onnx(_ddddocr_prefix("208"), shapes)  # all 21 ConvInteger layers
    assert stack.op_counts() == {"Add": 8, "Conv": 21, "Mul": 11, "Reshape": 8, "Sigmoid": 11}
    assert all(stack.values[n.inputs[0]].quant.dynamic for n in stack.nodes if n.op == "Conv")
    assert all(stack.values[n.inputs[1]].quant.format == "uint8" for n in stack.nodes if n.op == "Conv")
    first = _ddddocr_prefix("390")
    graph = import_onnx(first, shapes)
    assert graph.op_counts() == {"Conv": 1}
    x = RNG.uniform(0, 1, shapes["input1"]).astype(np.float32)
    ours, theirs = Simulator(graph).run({"input1": x})["390"], ort_run(first, {"input1": x})["390"]
    inits = {t.name: numpy_helper.to_array(t) for t in first.graph.initializer}
    step = dynamic_spec(x).scale * inits["391_scale"]  # one accumulator step
    assert np.abs(ours - theirs).max() <= 1.01 * step


# ---------------------------------------------------------------------------------------------
# (4) ddddocr: only the LSTM remains unsupported
# ---------------------------------------------------------------------------------------------
def test_ddddocr_lists_only_the_quantized_lstm():
    with pytest.raises(UnsupportedError) as err:
        import_onnx(zoo.onnx_path("ddddocr_common_old"), zoo.input_shapes("ddddocr_common_old"))
    listed = [line.strip() for line in str(err.value).splitlines() if line.startswith("  ")]
    assert listed == ["DynamicQuantizeLSTM (domain 'com.microsoft'): nodes 'LSTM_202_quant'"]


# ---------------------------------------------------------------------------------------------
# What is refused, naming the node
# ---------------------------------------------------------------------------------------------
def _model(nodes, inits, outputs=("y",), opset=17):
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


QPARAMS = [("s", np.float32(0.1)), ("z", np.uint8(128))]


def test_quantize_linear_output_read_otherwise_is_refused():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant_x"),
             helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT, name="cast_q")]
    with pytest.raises(UnsupportedError, match="'cast_q' \\(Cast\\) reads 'q', the integer output of node 'quant_x'"):
        import_onnx(_model(nodes, QPARAMS))
    graph = helper.make_graph(nodes[:1], "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("q", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in QPARAMS])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(UnsupportedError, match="graph output 'q' .* node 'quant_x'"):
        import_onnx(m)


def test_qdq_pair_on_a_value_read_elsewhere_quantizes_a_copy():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["xq"]),
             helper.make_node("Sub", ["x", "xq"], ["y"])]  # the quantization error
    m = _model(nodes, QPARAMS)
    graph = import_onnx(m)
    assert graph.values["x"].quant is None and graph.values["q"].quant.zero_point == 128
    feeds = {"x": RNG.normal(size=(2, 4)).astype(np.float32)}
    assert np.array_equal(Simulator(graph).run(feeds)["y"], ort_run(m, feeds)["y"])


def test_integer_ops_outside_the_pattern_are_refused():
    w = [("w", np.ones((4, 3), np.int8))]
    unmatched = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
                 helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["acc"], name="mmi"),
                 helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT)]  # no Mul by the scales
    with pytest.raises(UnsupportedError, match="'mmi' \\(MatMulInteger\\): the Cast to float is not followed by a Mul"):
        import_onnx(_model(unmatched, w))
    scale_reused = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
                    helper.make_node("Mul", ["x", "xs"], ["y"], name="reuse")]
    with pytest.raises(UnsupportedError, match="'reuse' \\(Mul\\) reads 'xs', an output of DynamicQuantizeLinear node 'dql'"):
        import_onnx(_model(scale_reused, []))
    static_codes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                    helper.make_node("MatMulInteger", ["q", "w", "z"], ["y"], name="mmi")]
    with pytest.raises(UnsupportedError, match="'mmi' .* does not come from DynamicQuantizeLinear"):
        import_onnx(_model(static_codes, w + QPARAMS))


def test_dynamic_spec_in_the_ir():
    spec = QuantSpec("uint8", 8, dynamic=True)
    assert not spec.same_as(QuantSpec("uint8", 8)) and spec.same_as(QuantSpec("uint8", 8, dynamic=True))
    with pytest.raises(IRError, match="dynamic"):
        QuantSpec("int8", 8, dynamic=True)
    m = _float_conv_matmul()
    graph = import_onnx(m)
    graph.values["x"].quant = spec
    text, blob = serialize.dumps(graph)
    assert '"dynamic": true' in text and serialize.loads(text, blob).values["x"].quant.same_as(spec)
    graph.values["x"].quant = QuantSpec("uint8", 8)
    assert '"dynamic"' not in serialize.dumps(graph)[0]  # static specs serialize as before
    with pytest.raises(Exception, match="dynamic"):
        dequantize(np.zeros(3, np.uint8), spec)
