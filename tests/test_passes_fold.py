"""BatchNorm folding keeps the model's outputs and leaves no BatchNormalization behind."""

import numpy as np
import pytest

from bitsmith import zoo
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import run_graph
from bitsmith.measure import max_rel_err
from bitsmith.passes.fold_batchnorm import FoldBatchNorm

from onnx_cases import CASES_CONV_TRANSPOSE_BN, cases


@pytest.mark.parametrize("name", ["ppocr_cls", "ppocr_det"])
def test_folding_real_models_keeps_outputs(name):
    graph = import_onnx(zoo.onnx_path(name), zoo.input_shapes(name))
    folded = FoldBatchNorm()(graph.copy())
    assert "BatchNormalization" not in folded.op_counts()
    assert folded.op_counts()["Conv"] == graph.op_counts()["Conv"]
    for feeds in zoo.inputs(name, 2):
        assert max_rel_err(run_graph(folded, feeds), run_graph(graph, feeds)) < 1e-4


def test_folding_into_grouped_conv_transpose():
    m, feeds = CASES_CONV_TRANSPOSE_BN()
    graph = import_onnx(m)
    folded = FoldBatchNorm()(graph.copy())
    assert folded.op_counts() == {"ConvTranspose": 1}
    assert max_rel_err(run_graph(folded, feeds), run_graph(graph, feeds)) < 1e-5


def test_batchnorm_after_a_non_conv_becomes_mul_add():
    m, feeds = cases()["batch_norm"]
    graph = import_onnx(m)
    folded = FoldBatchNorm()(graph.copy())
    assert folded.op_counts() == {"Add": 1, "Mul": 1}
    assert max_rel_err(run_graph(folded, feeds), run_graph(graph, feeds)) < 1e-6
