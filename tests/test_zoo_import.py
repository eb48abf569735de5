"""Every dev zoo model imports, and the IR's reference interpreter matches ONNX Runtime on real inputs."""

import pytest

from bitsmith import zoo
from bitsmith.errors import UnsupportedError
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import run_graph
from bitsmith.ir import verify
from bitsmith.measure import max_rel_err, ort_run, ort_session
from bitsmith.ops import OPS


@pytest.mark.parametrize("name", zoo.ZOO_MODELS)
def test_interpreter_matches_onnxruntime_on_real_inputs(name):
    graph = import_onnx(zoo.onnx_path(name), zoo.input_shapes(name))
    verify(graph, OPS)
    assert not {"Shape", "Constant", "Identity", "Gemm", "Flatten"} & set(graph.op_counts())
    session = ort_session(zoo.onnx_path(name))
    for feeds in zoo.inputs(name, 3):
        assert max_rel_err(run_graph(graph, feeds), ort_run(session, feeds)) < 1e-4


def test_silero_vad_control_flow_is_refused_with_one_clear_error():
    with pytest.raises(UnsupportedError) as err:
        import_onnx(zoo.onnx_path("silero_vad"), zoo.input_shapes("silero_vad"))
    message = str(err.value)
    assert "silero_vad.onnx" in message
    assert "If (control flow) (opset 16): nodes 'If_0'" in message
    assert err.value.exit_code == 4


def test_prequantized_ddddocr_lists_every_unsupported_op():
    # ConvInteger, DynamicQuantizeLinear and MatMulInteger import (tests/test_frontend_prequantized.py);
    # the quantized LSTM does not
    with pytest.raises(UnsupportedError) as err:
        import_onnx(zoo.onnx_path("ddddocr_common_old"), zoo.input_shapes("ddddocr_common_old"))
    assert "DynamicQuantizeLSTM (domain 'com.microsoft'): nodes 'LSTM_202_quant'" in str(err.value)
    for op in ("ConvInteger", "DynamicQuantizeLinear", "MatMulInteger"):
        assert op not in str(err.value)
