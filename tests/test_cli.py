"""The `bitsmith` command line, run as a user runs it: exit codes, messages on stderr, files written."""

import json
import re
import subprocess
import sys

import pytest

from bitsmith import zoo


def bitsmith_cli(*args, check_code=None):
    proc = subprocess.run([sys.executable, "-m", "bitsmith.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    if check_code is not None:
        assert proc.returncode == check_code, proc.stderr
    return proc


def test_compile_then_inspect_the_artifact(tmp_path):
    out = tmp_path / "rnet"
    proc = bitsmith_cli("compile", zoo.onnx_path("mtcnn_rnet"), "--target", "host", "--input-shape", "input=2x3x24x24",
                        "-o", out, "--quiet", check_code=0)
    assert proc.stdout == ""  # --quiet
    info = json.loads(bitsmith_cli("inspect", out, "--json", check_code=0).stdout)
    assert info["kind"] == "artifact" and info["hashes"] == "verified"
    assert info["inputs"] == [{"name": "input", "shape": [2, 3, 24, 24], "dtype": "float32"}]
    assert info["ops"]["Conv"] == 3


def test_inspect_model_reports_ops_parameters_and_shapes():
    proc = bitsmith_cli("inspect", zoo.onnx_path("mobilenet_v2"), "--input-shape", "input=1x3x224x224", check_code=0)
    assert "input input: float32[1, 3, 224, 224]" in proc.stdout
    params = int(re.search(r"parameters: ([\d,]+)", proc.stdout).group(1).replace(",", ""))
    assert 3.4e6 < params < 3.6e6  # MobileNetV2's 3.5M (BatchNorm folded into Conv by the exporter)
    assert "Conv x52" in proc.stdout


def test_unsupported_model_exits_4_naming_the_op(tmp_path):
    proc = bitsmith_cli("compile", zoo.onnx_path("silero_vad"), "-o", tmp_path / "x", check_code=4)
    assert "If (control flow)" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_dynamic_input_without_shape_exits_2_and_says_how_to_fix(tmp_path):
    proc = bitsmith_cli("compile", zoo.onnx_path("ppocr_cls"), "-o", tmp_path / "x", check_code=2)
    assert "--input-shape x=" in proc.stderr


def test_unknown_target_exits_2(tmp_path):
    proc = bitsmith_cli("compile", zoo.onnx_path("mtcnn_rnet"), "--target", "nope", "-o", tmp_path / "x", check_code=2)
    assert "unknown target 'nope'" in proc.stderr


def test_corrupt_model_exits_3(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(zoo.onnx_path("mtcnn_rnet").read_bytes()[:1000])
    proc = bitsmith_cli("compile", bad, "-o", tmp_path / "x", check_code=3)
    assert "bad.onnx" in proc.stderr


def test_malformed_shape_hint_exits_2(tmp_path):
    proc = bitsmith_cli("compile", zoo.onnx_path("mtcnn_rnet"), "--input-shape", "input:1,3", "-o", tmp_path / "x",
                        check_code=2)
    assert "NAME=1x3x224x224" in proc.stderr


@pytest.mark.parametrize("flag", [[], ["--json"]])
def test_targets_lists_the_host_target(flag):
    proc = bitsmith_cli("targets", *flag, check_code=0)
    assert "x86-avx2" in proc.stdout
