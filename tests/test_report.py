"""Per-target benchmark reports on a real model: MTCNN RNet (W8A8) on real faces and non-faces.

One bench run (compile + measure) serves the module; each test reads one property of its report.
"""

import json
import math

import numpy as np
import pytest

import bitsmith
from bitsmith import targets, zoo
from bitsmith.budget import check_constraints
from bitsmith.errors import BudgetError
from bitsmith.bench import BenchSettings, measure, scale_predictions, subject_from_artifact, subject_from_compile
from bitsmith.pipeline import compile_traced
from bitsmith.report import SCHEMA, SCHEMA_VERSION, Report

MODEL = "mtcnn_rnet"
SETTINGS = BenchSettings(repeat=20, warmup=3, profile_runs=2, sqnr_feeds=8, quiet=True)


@pytest.fixture(scope="module")
def data():
    calibration = zoo.inputs(MODEL, 16, batch=4, split="calib")
    evaluation = zoo.inputs(MODEL, 16, batch=4, split="eval")
    return calibration, evaluation


@pytest.fixture(scope="module")
def compiled(data, tmp_path_factory):
    calibration, _ = data
    return compile_traced(zoo.onnx_path(MODEL), "x86-avx2", calibration=calibration, recipe="w8a8",
                          input_shapes=zoo.input_shapes(MODEL, batch=4), output_dir=tmp_path_factory.mktemp("rnet"),
                          quiet=True)


@pytest.fixture(scope="module")
def report(data, compiled):
    calibration, evaluation = data
    subject = subject_from_compile(compiled, targets.load("x86-avx2"), zoo.onnx_path(MODEL))
    return measure(subject, evaluation, calibration, None, SETTINGS)


@pytest.fixture(scope="module")
def predicted(data, compiled):
    """The same artifact as if its target did not run here: latency from the roofline model, accuracy
    from the integer reference interpreter on the lowered graph."""
    _, evaluation = data
    subject = subject_from_compile(compiled, targets.load("x86-avx2"), zoo.onnx_path(MODEL))
    return measure(subject, evaluation, None, None, BenchSettings(latency="predicted", sqnr_feeds=0, quiet=True))


def test_report_is_versioned_json_that_round_trips(report, tmp_path):
    paths = report.save(tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert doc["schema"] == SCHEMA and doc["schema_version"] == SCHEMA_VERSION
    assert Report.load(paths["json"]).data["target"]["name"] == "x86-avx2"
    assert {"latency", "throughput", "artifact", "memory", "accuracy", "baselines", "layers", "host"} <= set(doc)


def test_latency_is_measured_with_ordered_percentiles(report):
    latency = report.data["latency"]
    assert latency["source"] == "measured" and latency["runs"] == SETTINGS.repeat
    assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
    assert latency["predicted_ms"] > 0
    assert report.data["throughput"]["samples_per_s"] == pytest.approx(4e3 / latency["mean_ms"])
    assert len(report.data["host"]["load_average"]) == 3


def test_accuracy_against_fp32_on_real_faces(report):
    accuracy = report.data["accuracy"]
    assert accuracy["metric"] == "top1_agreement" and accuracy["details"]["output"] == "prob"
    assert accuracy["samples"] == 64
    assert accuracy["value"] >= 0.95 and accuracy["drop"] == pytest.approx(1 - accuracy["value"])


def test_onnx_runtime_fp32_and_int8_side_by_side(report):
    baselines = report.data["baselines"]
    for name in ("onnxruntime_fp32", "onnxruntime_int8"):
        assert baselines[name]["status"] == "measured", baselines[name]
        assert baselines[name]["p50_ms"] > 0 and baselines[name]["bitsmith_speedup"] > 0
    assert baselines["onnxruntime_int8"]["accuracy"]["value"] >= 0.9


def test_size_and_peak_memory(report):
    artifact, memory = report.data["artifact"], report.data["memory"]
    assert artifact["precision"] == "w8a8"
    assert 0 < artifact["weights_bytes"] < artifact["size_bytes"]
    assert 0.09e6 < artifact["weights_bytes"] < 0.2e6  # RNet's 100k weights in int8 (+ scales, biases)
    assert memory["source"] == "measured" and memory["peak_mb"] > memory["weights_mb"]
    assert 0 < memory["predicted_peak_activation_mb"] < 1


def test_per_layer_table(report):
    layers = report.data["layers"]
    assert [r["op"] for r in layers] == ["Conv", "Conv", "Conv", "MatMul", "MatMul", "MatMul"]
    for row in layers:
        assert (row["weight_format"], row["weight_bits"], row["activation_bits"]) == ("int8", 8, 8)
        assert row["kernel"] in ("QConv", "QMatMul") and row["fallback"] is None and row["device"] == "cpu"
        assert row["sqnr_db"] > 10  # 8-bit quantization noise of one layer, on real faces
        assert row["predicted_ms"] > 0 and row["measured_ms"] > 0
        assert row["sensitivity"] is None  # no precision plan without constraints
    assert sum(r["params"] for r in layers) > 90_000


def test_markdown_says_what_was_not_computed(report):
    text = report.to_markdown()
    assert "| latency p50 / p95 / p99 |" in text and "onnxruntime_int8" in text
    assert "not computed" in text  # sensitivity column and Pareto front without a plan


def test_a_target_that_is_not_run_is_labelled_predicted(report, predicted):
    latency = predicted.data["latency"]
    assert latency["source"] == "predicted" and latency["runs"] == 0
    assert latency["p50_ms"] == pytest.approx(report.data["latency"]["predicted_ms"])
    assert all(b["status"].startswith("not run") for b in predicted.data["baselines"].values())
    assert predicted.data["memory"]["peak_mb"] is None
    assert "PREDICTED" in predicted.to_markdown() and "PREDICTED" in predicted.to_html()
    assert all(row["measured_ms"] is None for row in predicted.data["layers"])


def test_prediction_scaled_by_a_measured_target_of_the_same_family(report, predicted):
    scale_predictions([report, predicted])
    latency = predicted.data["latency"]
    ratio = report.data["latency"]["p50_ms"] / report.data["latency"]["predicted_ms"]
    assert latency["scaled_by"] == "x86-avx2"
    assert latency["predicted_scaled_ms"] == pytest.approx(latency["predicted_ms"] * ratio)


def test_accuracy_where_the_target_does_not_run_comes_from_the_integer_reference(report, predicted):
    accuracy = predicted.data["accuracy"]
    assert accuracy["source"].startswith("integer reference")
    # the artifact computes the integer reference's integers: the same agreement with FP32
    assert accuracy["value"] == report.data["accuracy"]["value"]


def test_a_prebuilt_artifact_without_its_fp32_model_has_no_accuracy(report):
    artifact = bitsmith.Artifact.load(report.data["artifact"]["path"])
    subject = subject_from_artifact(artifact, None)
    result = measure(subject, zoo.inputs(MODEL, 1, batch=4), None, None, BenchSettings(latency="predicted", quiet=True))
    assert result.data["accuracy"]["status"] == "not computed: needs the FP32 model"


def test_gate_values_read_the_report(report):
    values = report.gate_values()
    assert values["p50_ms"] == report.data["latency"]["p50_ms"]
    assert values["metric_drop"] == report.data["accuracy"]["drop"]
    assert values["size_mb"] == pytest.approx(report.data["artifact"]["size_bytes"] / 1e6)
    assert values["min_sqnr_db"] == min(r["sqnr_db"] for r in report.data["layers"])


def test_artifact_report_without_data_times_zeros_and_skips_accuracy(report):
    artifact = bitsmith.Artifact.load(report.data["artifact"]["path"])
    plain = artifact.report(repeat=5)
    assert plain.data["latency"]["inputs"] == "zeros" and plain.data["latency"]["source"] == "measured"
    assert plain.data["accuracy"]["status"].startswith("not computed")


def test_infinite_sqnr_is_written_as_a_string():
    body = {"x": math.inf, "rows": [{"sqnr_db": -math.inf}], "y": np.float64(1.5).item()}
    doc = Report.create({**body, "target": {"name": "t"}}).to_json()
    assert doc["x"] == "inf" and doc["rows"][0]["sqnr_db"] == "-inf" and json.dumps(doc)


def test_a_budget_the_search_cannot_meet_is_a_budget_error(data, tmp_path):
    calibration, _ = data
    with pytest.raises(BudgetError, match="latency_ms"):
        bitsmith.compile(zoo.onnx_path(MODEL), "x86-avx2", calibration=calibration, recipe="w8a8",
                         input_shapes=zoo.input_shapes(MODEL, batch=4), output_dir=tmp_path / "fast",
                         constraints=bitsmith.Constraints(latency_ms=1e-6), quiet=True)
    assert BudgetError.exit_code == 6


def test_the_built_artifact_is_measured_against_each_constraint(data, compiled):
    calibration, _ = data
    loose = bitsmith.Constraints(size_mb=1.0, latency_ms=1e4, bops_g=100.0, peak_activation_mb=10.0,
                                 max_metric_drop=0.05)
    measured = check_constraints(compiled, loose, calibration, None)
    assert 0.09 < measured["size_mb"] < 0.2 and 0 < measured["latency_ms"] < 1e4
    assert 0 < measured["bops_g"] < 100 and 0 < measured["peak_activation_mb"] < 1
    assert 0 <= measured["max_metric_drop"] < 0.05  # 1 - cosine with FP32 on the calibration faces
    with pytest.raises(BudgetError, match=r"size_mb = 0\.1\d* exceeds 0\.01; latency_ms = .* exceeds 1e-06"):
        check_constraints(compiled, bitsmith.Constraints(size_mb=0.01, latency_ms=1e-6), calibration, None)
