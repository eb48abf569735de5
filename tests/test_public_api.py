"""The public Python API, used the way the package docstring shows it."""

import numpy as np

import bitsmith
from bitsmith import zoo
from bitsmith.measure import ort_run, ort_session


def test_quantize_simulate_and_export_qdq_for_onnxruntime(tmp_path):
    graph = bitsmith.load_model(zoo.onnx_path("mtcnn_rnet"), zoo.input_shapes("mtcnn_rnet", batch=8))
    calibration = zoo.inputs("mtcnn_rnet", 2, batch=8, split="calib")
    q = bitsmith.quantize(graph, bitsmith.preset("w8a8"), calibration)
    feeds = zoo.inputs("mtcnn_rnet", 1, batch=8)[0]
    simulated = bitsmith.Simulator(q).run(feeds)
    path = tmp_path / "rnet_qdq.onnx"
    bitsmith.export_onnx(q, path)
    assert bitsmith.ort_runnable(q) == (True, "")
    ort = ort_run(ort_session(path, optimize=False), feeds)
    np.testing.assert_allclose(ort["prob"], simulated["prob"], atol=1e-5)
    assert (simulated["prob"].argmax(-1) == bitsmith.Simulator(graph, quantized=False).run(feeds)["prob"].argmax(-1)).all()


def test_public_names_are_exported():
    for name in ("compile", "Artifact", "load_model", "quantize", "preset", "Simulator", "export_onnx", "BitsmithError"):
        assert hasattr(bitsmith, name), name
