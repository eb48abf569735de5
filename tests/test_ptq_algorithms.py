"""The PTQ algorithms (SmoothQuant, GPTQ, AWQ, FP format search) on real models and real data: each
keeps what it must keep and measurably improves the fidelity it targets.

Fidelity of MiniLM: the mean cosine between the FP32 and the quantized model's sentence embeddings
(last_hidden_state mean-pooled over the attention mask) on eval sentences. Layer errors: the mean
squared error of a layer's output against its float output, on eval inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from bitsmith import zoo
from bitsmith.errors import UsageError
from bitsmith.formats import choose_spec, fake_quant
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import run_graph, run_node
from bitsmith.ir import Graph, Node
from bitsmith.measure import max_rel_err
from bitsmith.passes.awq import AWQ
from bitsmith.passes.calibrate import masked_rows
from bitsmith.passes.channel_shift import ChannelShift
from bitsmith.passes.depthwise_equalization import MAX_GAIN, DepthwiseEqualization, depthwise_pairs
from bitsmith.passes.fold_batchnorm import FoldBatchNorm
from bitsmith.passes.fp_search import RATIOS, candidate_formats, search_weight_spec
from bitsmith.passes.gptq import gptq_weight, layer_hessians
from bitsmith.passes.linear_layers import LinearLayer, float_inputs, linear_layers, sampled_rows
from bitsmith.passes.quantize_weights import QuantizeWeights
from bitsmith.passes.smoothquant import SmoothQuant
from bitsmith.quantize import ALGORITHMS, quantize
from bitsmith.recipes import QuantRecipe
from bitsmith.simulate import Simulator

SEQ_LEN = 64
INT4_WEIGHTS = QuantRecipe("w4_rtn", weights="int4", activations=None, weight_clipping="max")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine's cores are shared: torch's thread hand-offs cost more than they bring here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Model:
    graph: Graph
    calibration: list[dict[str, np.ndarray]]
    evaluation: list[dict[str, np.ndarray]]
    reference: list[np.ndarray]  # float outputs on the eval feeds


@pytest.fixture(scope="module")
def minilm() -> Model:
    graph = import_onnx(zoo.onnx_path("minilm_l6"), zoo.input_shapes("minilm_l6", 8, seq_len=SEQ_LEN))
    calibration = zoo.inputs("minilm_l6", 2, batch=8, split="calib", seq_len=SEQ_LEN)
    evaluation = zoo.inputs("minilm_l6", 2, batch=8, split="eval", seq_len=SEQ_LEN)
    reference = [run_graph(graph, feed)["last_hidden_state"] for feed in evaluation]
    return Model(graph, calibration, evaluation, reference)


@pytest.fixture(scope="module")
def mobilenet() -> Model:
    graph = FoldBatchNorm()(import_onnx(zoo.onnx_path("mobilenet_v2"), zoo.input_shapes("mobilenet_v2", 2)))
    calibration = zoo.inputs("mobilenet_v2", 2, batch=2, split="calib")
    evaluation = zoo.inputs("mobilenet_v2", 1, batch=2, split="eval")
    return Model(graph, calibration, evaluation, [])


def embedding_cosine(model: Model, quantized: Graph) -> float:
    simulator = Simulator(quantized)
    cosines = []
    for feed, reference in zip(model.evaluation, model.reference):
        mask = feed["attention_mask"][..., None].astype(np.float64)
        expected = (reference * mask).sum(1) / mask.sum(1)
        actual = (simulator.run(feed)["last_hidden_state"] * mask).sum(1) / mask.sum(1)
        cosines.append((expected * actual).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(actual, axis=1))
    return float(np.concatenate(cosines).mean())


@pytest.fixture(scope="module")
def int4_rtn_cosine(minilm) -> float:
    return embedding_cosine(minilm, quantize(minilm.graph, INT4_WEIGHTS, minilm.calibration))


def layer_named(graph: Graph, suffix: str) -> LinearLayer:
    return next(layer for layer in linear_layers(graph) if layer.node.name.endswith(suffix))


def layer_output_error(model: Model, layer: LinearLayer, weight: np.ndarray) -> float:
    """Mean squared error of the layer's output (bias-free) with `weight` vs its float weight, on eval inputs."""
    float_weight = torch.from_numpy(np.array(model.graph.constants[layer.weight]))
    errors = []
    for values in float_inputs(model.graph, model.evaluation, [layer.input]):
        x = values[layer.input]
        expected = run_node(layer.node, [x, float_weight])[0]
        errors.append(float(((run_node(layer.node, [x, torch.from_numpy(weight)])[0] - expected) ** 2).mean()))
    return float(np.mean(errors))


# -- registry ---------------------------------------------------------------------------------------
def test_algorithms_are_registered_at_their_stages():
    stages = {name: stage for name, (stage, _) in ALGORITHMS.items()}
    assert stages == {"bias_correction": "after_calibration", "smoothquant": "before_weights",
                      "awq": "before_weights", "gptq": "after_weights", "fp_search_weights": "after_weights",
                      "fp_search_activations": "after_calibration", "channel_shift": "before_weights",
                      "depthwise_equalization": "before_weights"}


def test_awq_without_weight_format_is_a_usage_error(minilm):
    with pytest.raises(UsageError, match="AWQ"):
        quantize(minilm.graph, QuantRecipe("bad", weights=None, activations=None, algorithms=("awq",)),
                 minilm.calibration)


# -- rescaling keeps the float model ---------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["smoothquant", "awq"])
def test_rescaling_keeps_minilm_float_outputs(minilm, algorithm):
    passes = {"smoothquant": lambda: SmoothQuant(minilm.calibration), "awq": lambda: AWQ(minilm.calibration, "int4")}
    rescaled = passes[algorithm]()(minilm.graph.copy())
    assert rescaled.op_counts()["Mul"] > minilm.graph.op_counts()["Mul"]  # post-LN BERT: LN outputs feed residuals
    for feed, reference in zip(minilm.evaluation, minilm.reference):
        assert max_rel_err(run_graph(rescaled, feed), {"last_hidden_state": reference}) < 1e-5


def test_smoothquant_folds_into_a_layernorm_read_only_by_matmuls(minilm):
    """MiniLM's first LayerNorm and its Q, K, V projections, as a graph of their own (real weights, real
    embeddings): 1/s goes into the LayerNorm's scale and bias, no Mul is added, outputs are kept."""
    source = minilm.graph
    layernorm = next(n for n in source.nodes if n.op == "LayerNormalization")
    projections = [n for n in source.nodes if n.op == "MatMul" and n.inputs[0] == layernorm.outputs[0]]
    graph = Graph("ln_qkv", inputs=[layernorm.inputs[0]], outputs=[n.outputs[0] for n in projections])
    for name in [layernorm.inputs[0], layernorm.outputs[0], *graph.outputs]:
        graph.add_value(name, source.values[name].shape, source.values[name].dtype)
    for name in layernorm.inputs[1:] + [n.inputs[1] for n in projections]:
        graph.add_constant(name, source.constants[name])
    graph.nodes = [Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs))
                   for n in [layernorm, *projections]]
    feeds = [{name: x.numpy() for name, x in values.items()}
             for values in float_inputs(source, minilm.calibration, [layernorm.inputs[0]])]
    smoothed = SmoothQuant(feeds)(graph.copy())
    assert smoothed.op_counts() == {"LayerNormalization": 1, "MatMul": 3}
    assert not np.allclose(smoothed.constants[layernorm.inputs[1]], graph.constants[layernorm.inputs[1]])
    assert max_rel_err(run_graph(smoothed, feeds[0]), run_graph(graph, feeds[0])) < 1e-5


# -- channel shift and masked calibration ------------------------------------------------------------
def test_channel_shift_centers_minilm_layernorm_outputs_and_keeps_float_outputs(minilm):
    shifted = ChannelShift(minilm.calibration)(minilm.graph.copy())
    centered = [n.outputs[0] for n in shifted.nodes if n.op == "Add" and n.outputs[0].endswith("_centered")]
    assert len(centered) == 12  # the embeddings' and 11 encoder LayerNorms feed Q/K/V or the FFN
    rows = {name: [] for name in centered}
    for values in float_inputs(shifted, minilm.calibration, centered):
        for name, x in values.items():
            rows[name].append(x.reshape(-1, x.shape[-1]))
    for name in centered:  # every channel's calibration range is centered on 0
        x = torch.cat(rows[name])
        middle, half_range = (x.amax(0) + x.amin(0)) / 2, (x.amax(0) - x.amin(0)) / 2
        assert float((middle.abs() / half_range).max()) < 1e-4, name
    for feed, reference in zip(minilm.evaluation, minilm.reference):
        assert max_rel_err(run_graph(shifted, feed), {"last_hidden_state": reference}) < 1e-5


def test_masked_rows_keep_the_marked_positions_of_matching_activations():
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    tokens = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert masked_rows(tokens, mask).tolist() == [tokens[0, 0].tolist(), tokens[0, 1].tolist(), tokens[1, 0].tolist()]
    assert masked_rows(torch.from_numpy(tokens), mask).shape == (3, 4)
    heads = np.zeros((2, 12, 3, 3))
    assert masked_rows(heads, mask) is heads  # leading axes are not [batch, tokens]: observed whole


def test_an_unknown_calibration_mask_is_a_usage_error(minilm):
    recipe = QuantRecipe("masked", options={"calibration_mask": "token_mask"})
    with pytest.raises(UsageError, match="token_mask.*input_ids"):
        quantize(minilm.graph, recipe, minilm.calibration)


@pytest.mark.slow
def test_masked_calibration_and_channel_shift_improve_w8a8_minilm(minilm):
    """Padding is 83% of the zoo sentences' positions: observers that skip it, and centered LayerNorm
    channels, each raise the embedding cosine of W8A8 + SmoothQuant (alpha 0.7)."""
    smoothed = QuantRecipe("w8a8_sq", algorithms=("smoothquant",), options={"smoothquant_alpha": 0.7})
    masked = smoothed.with_(options={**smoothed.options, "calibration_mask": "attention_mask"})
    centered = masked.with_(algorithms=("channel_shift", "smoothquant"))
    plain, with_mask, with_shift = (embedding_cosine(minilm, quantize(minilm.graph, r, minilm.calibration))
                                    for r in (smoothed, masked, centered))
    assert with_mask > plain + 0.0005  # measured 0.9962 vs 0.9954
    assert with_shift > with_mask + 0.0001  # measured 0.9965


# -- SmoothQuant -------------------------------------------------------------------------------------
def test_smoothquant_improves_w8a8_minilm(minilm):
    w8a8 = QuantRecipe("w8a8_minmax", activation_observer="minmax", weight_clipping="max")
    plain = embedding_cosine(minilm, quantize(minilm.graph, w8a8, minilm.calibration))
    smoothed = embedding_cosine(minilm, quantize(minilm.graph, w8a8.with_(algorithms=("smoothquant",)),
                                                 minilm.calibration))
    stronger = embedding_cosine(minilm, quantize(minilm.graph, w8a8.with_(
        algorithms=("smoothquant",), options={"smoothquant_alpha": 0.7}), minilm.calibration))
    # measured on Zen 3 (AVX2) / Zen 4 (AVX-512): plain 0.988 / 0.9879, smoothed 0.991 / 0.9897, stronger
    # 0.998; the float sums differ between the two CPUs' kernels, and so do the calibrated ranges
    assert plain < 0.990
    assert smoothed > plain + 0.001
    assert stronger > plain + 0.007


# -- depthwise equalization ----------------------------------------------------------------------------
def conv_relu_depthwise() -> tuple[Graph, list[dict[str, np.ndarray]]]:
    """x -> 1x1 Conv (4 channels, output ranges 8, 1, 0.1 and never positive) -> Relu -> depthwise 3x3."""
    graph = Graph(name="conv_relu_depthwise")
    graph.add_value("x", (2, 3, 6, 6), "float32")
    graph.inputs = ["x"]
    rng = np.random.default_rng(0)
    rows = np.abs(rng.standard_normal((4, 3, 1, 1))).astype(np.float32) * np.float32([8, 1, 0.1, -1]).reshape(4, 1, 1, 1)
    graph.add_constant("w", rows)
    graph.add_constant("wd", rng.standard_normal((4, 1, 3, 3)).astype(np.float32))
    graph.add_constant("bd", rng.standard_normal(4).astype(np.float32))
    graph.add_value("p", (2, 4, 6, 6), "float32")
    graph.add_value("a", (2, 4, 6, 6), "float32")
    graph.add_value("y", (2, 4, 6, 6), "float32")
    conv = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1}
    graph.nodes = [Node("Conv", "p", ["x", "w"], ["p"], conv), Node("Relu", "a", ["p"], ["a"], {}),
                   Node("Conv", "d", ["a", "wd", "bd"], ["y"], {**conv, "pads": [1, 1, 1, 1], "group": 4})]
    graph.outputs = ["y"]
    return graph, [{"x": np.abs(rng.standard_normal((2, 3, 6, 6))).astype(np.float32)} for _ in range(2)]


def test_depthwise_equalization_raises_narrow_channels_and_keeps_relu_outputs():
    graph, feeds = conv_relu_depthwise()
    equalized = DepthwiseEqualization(feeds)(graph.copy())
    gains = (equalized.constants["w"] / graph.constants["w"]).reshape(4, -1)[:, 0]
    assert gains[0] == 1.0 and gains[1] == pytest.approx(4.0, rel=0.3) and gains[2] == MAX_GAIN and gains[3] == 1.0
    for feed in feeds:
        assert max_rel_err(run_graph(equalized, feed), run_graph(graph, feed)) < 1e-6


def test_depthwise_equalization_gives_mobilenet_activations_more_codes(mobilenet):
    """Every MobileNetV2 block's Conv -> Clip(0, 6) -> depthwise chain (17) is equalized on 16 calibration
    crops; the float model moves only where a raised channel would pass its new clip, and per-tensor uint8
    codes of the activations (range: the calibration maximum) lose less on evaluation crops: squared error
    0.08x-0.83x of before (measured). With 4 calibration crops the 7x7 maps of the last blocks lose instead
    (3-22x): their channel maxima come from too few positions, and raised channels pass the range."""
    calibration = zoo.inputs("mobilenet_v2", 8, batch=2, split="calib")
    pairs = depthwise_pairs(mobilenet.graph)
    assert len(pairs) == 17
    equalized = DepthwiseEqualization(calibration)(mobilenet.graph.copy())
    for feed in mobilenet.evaluation:
        assert max_rel_err(run_graph(equalized, feed), run_graph(mobilenet.graph, feed)) < 1e-3
    names = [pair.activation.outputs[0] for pair in pairs]
    errors = []
    for graph in (mobilenet.graph, equalized):
        highs = {name: 0.0 for name in names}
        for values in float_inputs(graph, calibration, names):
            highs = {name: max(high, float(values[name].max())) for name, high in highs.items()}
        values = next(float_inputs(graph, mobilenet.evaluation, names))
        errors.append([])
        for pair, name in zip(pairs, names):
            weight = pair.producer.inputs[1]
            rows = graph.constants[weight] / mobilenet.graph.constants[weight]
            gains = rows.reshape(len(rows), -1)[:, 0].reshape(1, -1, 1, 1)  # 1 before equalization
            spec = choose_spec(None, "uint8", symmetric=False, amin=np.float32(0), amax=np.float32(highs[name]))
            x = values[name].numpy()
            errors[-1].append(float((((fake_quant(x, spec) - x) / gains) ** 2).mean()))
    ratios = np.array(errors[1]) / np.array(errors[0])
    assert np.median(ratios) < 0.75 and ratios.max() < 1.0, np.round(ratios, 2)  # measured 0.64, 0.83


# -- GPTQ ----------------------------------------------------------------------------------------------
def gptq_on_layer(model: Model, graph: Graph, layer: LinearLayer, act_order: bool = False) -> np.ndarray:
    hessian = layer_hessians(graph, model.calibration, [layer])[0]
    spec = graph.values[layer.weight].quant
    return gptq_weight(graph.constants[layer.weight], spec, layer, hessian, act_order=act_order)


def test_gptq_int4_cuts_minilm_ffn_output_error(minilm):
    graph = QuantizeWeights("int4")(minilm.graph.copy())
    layer = layer_named(graph, "layer.0/output/dense/MatMul")  # K = 1536: twelve lazy-update blocks
    spec = graph.values[layer.weight].quant
    rtn = layer_output_error(minilm, layer, fake_quant(graph.constants[layer.weight], spec))
    solved = gptq_on_layer(minilm, graph, layer)
    ordered = gptq_on_layer(minilm, graph, layer, act_order=True)
    assert np.array_equal(fake_quant(solved, spec), solved)  # on the spec's grid, spec unchanged
    assert layer_output_error(minilm, layer, solved) < 0.2 * rtn  # measured 0.12x
    assert layer_output_error(minilm, layer, ordered) < layer_output_error(minilm, layer, solved)


@pytest.mark.parametrize("fmt, granularity", [
    ("int8", "channel"), ("int4", "channel"), ("fp8_e4m3", "channel"), ("fp4_e2m1", "channel"), ("mxfp4", "block"),
])
def test_gptq_works_on_every_weight_grid(minilm, fmt, granularity):
    graph = QuantizeWeights(fmt, granularity, clipping="max")(minilm.graph.copy())
    layer = layer_named(graph, "layer.0/attention/self/query/MatMul")
    spec = graph.values[layer.weight].quant
    solved = gptq_on_layer(minilm, graph, layer)
    assert np.array_equal(fake_quant(solved, spec), solved)
    rtn = layer_output_error(minilm, layer, fake_quant(graph.constants[layer.weight], spec))
    assert layer_output_error(minilm, layer, solved) < 0.3 * rtn  # measured 0.18x - 0.20x for all five


@pytest.mark.parametrize("index, groups, at_most", [(0, 1, 0.25), (1, 32, 0.25), (2, 1, 0.45)])  # 0.15, 0.12, 0.32
def test_gptq_on_mobilenet_convolutions(mobilenet, index, groups, at_most):
    """The stem 3x3 conv, the first depthwise conv (one Hessian per channel) and a 1x1 projection."""
    graph = QuantizeWeights("int4")(mobilenet.graph.copy())
    layer = linear_layers(graph)[index]
    assert layer.groups == groups
    spec = graph.values[layer.weight].quant
    solved = gptq_on_layer(mobilenet, graph, layer)
    assert np.array_equal(fake_quant(solved, spec), solved)
    rtn = layer_output_error(mobilenet, layer, fake_quant(graph.constants[layer.weight], spec))
    assert layer_output_error(mobilenet, layer, solved) < at_most * rtn


def test_im2col_view_reproduces_the_convolution(mobilenet):
    for layer in linear_layers(mobilenet.graph)[:3]:
        x = next(float_inputs(mobilenet.graph, mobilenet.evaluation, [layer.input]))[layer.input]
        weight = torch.from_numpy(np.array(mobilenet.graph.constants[layer.weight]))
        expected = run_node(layer.node, [x, weight])[0]
        product = layer.rows(x) @ layer.matrix(weight).transpose(1, 2)  # (groups, n * positions, outputs / group)
        n, channels = expected.shape[:2]
        actual = product.reshape(layer.groups, n, -1, channels // layer.groups).permute(1, 0, 3, 2)
        assert torch.allclose(actual.reshape(expected.shape), expected, atol=1e-4)


def test_gptq_improves_int4_weight_only_minilm(minilm, int4_rtn_cosine):
    solved = embedding_cosine(minilm, quantize(minilm.graph, INT4_WEIGHTS.with_(algorithms=("gptq",)),
                                               minilm.calibration))
    assert int4_rtn_cosine < 0.92  # measured 0.913
    assert solved > int4_rtn_cosine + 0.025  # measured 0.946


# -- AWQ -----------------------------------------------------------------------------------------------
def test_awq_improves_int4_weight_only_minilm(minilm, int4_rtn_cosine):
    scaled = embedding_cosine(minilm, quantize(minilm.graph, INT4_WEIGHTS.with_(algorithms=("awq",)),
                                               minilm.calibration))
    assert scaled > int4_rtn_cosine + 0.004  # measured 0.921


def test_awq_improves_int4_block_weights_minilm(minilm):
    blocks = INT4_WEIGHTS.with_(weight_granularity="block", weight_block_size=32)
    rtn = embedding_cosine(minilm, quantize(minilm.graph, blocks, minilm.calibration))
    scaled = embedding_cosine(minilm, quantize(minilm.graph, blocks.with_(algorithms=("awq",)), minilm.calibration))
    assert scaled > rtn + 0.006  # measured 0.959 -> 0.969


# -- FP format and clipping search --------------------------------------------------------------------
def test_fp_search_improves_fp4_weight_only_minilm(minilm):
    fp4 = QuantRecipe("fp4_weights", weights="fp4_e2m1", activations=None, weight_clipping="max")
    max_scaled = embedding_cosine(minilm, quantize(minilm.graph, fp4, minilm.calibration))
    searched = embedding_cosine(minilm, quantize(minilm.graph, fp4.with_(algorithms=("fp_search_weights",)),
                                                 minilm.calibration))
    assert searched > max_scaled + 0.008  # measured 0.953 -> 0.966


@pytest.mark.parametrize("fmt, chosen, at_most", [
    ("fp8_e4m3", "fp8_e4m3", 0.75),  # measured 0.60x
    ("fp8_e5m2", "fp8_e4m3", 0.3),  # the search switches the format: 0.15x
    ("fp4_e2m1", "fp4_e2m1", 0.7),  # 0.55x
])
def test_fp_search_cuts_fp_weight_output_error(minilm, fmt, chosen, at_most):
    graph = QuantizeWeights(fmt, clipping="max")(minilm.graph.copy())
    layer = layer_named(graph, "layer.0/output/dense/MatMul")
    weight, spec = graph.constants[layer.weight], graph.values[layer.weight].quant
    rows = sampled_rows(graph, minilm.calibration, [layer], max_rows=256)[0]
    searched = search_weight_spec(weight, spec, layer, rows, candidate_formats(fmt), RATIOS)
    assert searched.format == chosen
    before = layer_output_error(minilm, layer, fake_quant(weight, spec))
    assert layer_output_error(minilm, layer, fake_quant(weight, searched)) < at_most * before


def test_fp_search_improves_fp4_activations_minilm(minilm):
    fp4 = QuantRecipe("fp4", weights="fp4_e2m1", activations="fp4_e2m1", activation_symmetric=True,
                      activation_observer="minmax", weight_clipping="max")
    max_scaled = embedding_cosine(minilm, quantize(minilm.graph, fp4, minilm.calibration))
    searched = embedding_cosine(minilm, quantize(minilm.graph, fp4.with_(algorithms=("fp_search_activations",)),
                                                 minilm.calibration))
    assert searched > max_scaled + 0.15  # measured 0.19 -> 0.45
