"""CI gates: `--fail-if` on `bitsmith compile` and `bitsmith bench` exit 10 (GateFailed, documented in
bitsmith.errors) with the reason on stderr when a measured quantity trips them, 0 when none does."""

import json
import subprocess
import sys

import numpy as np
import pytest

import bitsmith
from bitsmith import zoo
from bitsmith.errors import GateFailed, UsageError
from bitsmith.gates import check, evaluate, parse_gate

MODEL = "mtcnn_rnet"


def bitsmith_cli(*args):
    return subprocess.run([sys.executable, "-m", "bitsmith.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gates")
    np.savez(root / "calib.npz", input=zoo.inputs(MODEL, 1, batch=32, split="calib")[0]["input"])
    np.savez(root / "eval.npz", input=zoo.inputs(MODEL, 1, batch=32, split="eval")[0]["input"])
    artifact = bitsmith.compile(zoo.onnx_path(MODEL), "host", input_shapes=zoo.input_shapes(MODEL), recipe="w8a8",
                                calibration=zoo.inputs(MODEL, 8, split="calib"), output_dir=root / "rnet", quiet=True)
    return root, artifact


def test_bench_gate_that_must_fail_exits_10_with_the_reason(files, tmp_path):
    root, artifact = files
    proc = bitsmith_cli("bench", artifact.path, "--data", root / "eval.npz", "--model", zoo.onnx_path(MODEL),
                        "--no-baselines", "--no-memory", "--profile-runs", "0", "--repeat", "5", "-o", tmp_path,
                        "-q", "--fail-if", "p50_ms>0.000001", "--fail-if", "metric_drop>0.5")
    assert proc.returncode == GateFailed.exit_code == 10, proc.stderr
    assert "gate failed: p50_ms>1e-06" in proc.stderr and "metric_drop" not in proc.stderr
    report = json.loads((tmp_path / artifact.target / "report.json").read_text())  # written before failing
    assert [g["failed"] for g in report["gates"]] == [True, False]


def test_bench_a_model_for_two_targets_one_report_each(files, tmp_path):
    root, _ = files
    proc = bitsmith_cli("bench", zoo.onnx_path(MODEL), "--target", "x86-avx2,x86-avx512", "--data", root / "eval.npz",
                        "--latency", "predicted", "--no-baselines", "-o", tmp_path, "--fail-if", "size_mb>100")
    assert proc.returncode == 0, proc.stderr
    for target in ("x86-avx2", "x86-avx512"):
        report = json.loads((tmp_path / target / "report.json").read_text())
        assert report["target"]["name"] == target and report["latency"]["source"] == "predicted"
        assert report["artifact"]["precision"] == "fp32" and report["accuracy"]["value"] == 1.0
        assert (tmp_path / target / "report.html").is_file() and (tmp_path / target / "report.md").is_file()
        assert target in proc.stdout


def test_compile_gate_that_must_fail_exits_10(files, tmp_path):
    root, _ = files
    proc = bitsmith_cli("compile", zoo.onnx_path(MODEL), "--input-shape", "input=1x3x24x24", "-o", tmp_path / "a",
                        "-q", "--fail-if", "size_mb>0.01")
    assert proc.returncode == 10, proc.stderr
    assert "gate failed: size_mb>0.01 (measured 0." in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "a" / "manifest.json").is_file()  # the artifact stays for inspection


def test_compile_metric_gate_with_data_passes(files, tmp_path):
    root, _ = files
    proc = bitsmith_cli("compile", zoo.onnx_path(MODEL), "--input-shape", "input=1x3x24x24", "--data",
                        root / "eval.npz", "-o", tmp_path / "a", "-q", "--report", tmp_path / "report",
                        "--fail-if", "metric_drop>0.05")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # --quiet
    report = json.loads(next((tmp_path / "report").glob("*/report.json")).read_text())
    assert report["accuracy"]["metric"] == "top1_agreement" and report["accuracy"]["value"] == 1.0  # FP32
    assert report["gates"][0]["expression"] == "metric_drop>0.05" and report["gates"][0]["failed"] is False


def test_metric_gate_without_data_is_a_usage_error(tmp_path):
    proc = bitsmith_cli("compile", zoo.onnx_path(MODEL), "--input-shape", "input=1x3x24x24", "-o", tmp_path / "a",
                        "--fail-if", "metric_drop>0.01")
    assert proc.returncode == 2 and "--data" in proc.stderr
    assert not (tmp_path / "a").exists()  # refused before compiling


@pytest.mark.parametrize("text, message", [("latency>5", "unknown quantity 'latency'"),
                                           ("p50_ms=>5", "must look like NAME>NUMBER"),
                                           ("p50_ms>fast", "must look like NAME>NUMBER")])
def test_malformed_gates_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_gate(text)


def test_gate_operators():
    values = {"p50_ms": 5.0, "size_mb": 2.0}
    results = evaluate([parse_gate("p50_ms>=5"), parse_gate("size_mb<1"), parse_gate("size_mb != 2")], values, "t")
    assert [r["failed"] for r in results] == [True, False, False]
    with pytest.raises(GateFailed, match=r"p50_ms>=5 \(measured 5 on t\)"):
        check(results)
    with pytest.raises(UsageError, match="was not measured"):
        evaluate([parse_gate("metric_drop>0.1")], {"metric_drop": None}, "t")
