"""`bitsmith compile --recipe NAME --calibration FILE.npz`: a user's calibration samples from a file."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bitsmith import zoo
from bitsmith.errors import DataError
from bitsmith.feeds import feeds_from_samples, load_npz


def bitsmith_cli(*args):
    return subprocess.run([sys.executable, "-m", "bitsmith.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def rnet_calibration(tmp_path_factory):
    """32 real face / non-face crops from the zoo's calibration split, one sample per row."""
    path = tmp_path_factory.mktemp("data") / "calib.npz"
    np.savez(path, input=zoo.inputs("mtcnn_rnet", 1, batch=32, split="calib")[0]["input"])
    return path


def test_dynamic_batch_comes_from_the_data_without_a_shape_hint(tmp_path, rnet_calibration):
    out = tmp_path / "rnet"
    proc = bitsmith_cli("compile", zoo.onnx_path("mtcnn_rnet"), "--recipe", "w8a8",
                        "--calibration", rnet_calibration, "-o", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 3, 24, 24]  # the batch axis is dynamic: one sample per feed
    assert manifest["precision"] == "w8a8"
    assert "Conv" not in manifest["formats"]["ops"]  # lowered to integer convolutions


def test_calibration_file_missing_an_input_exits_5_naming_it(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((4, 3, 24, 24), np.float32))
    proc = bitsmith_cli("compile", zoo.onnx_path("mtcnn_rnet"), "--recipe", "w8a8", "--input-shape",
                        "input=1x3x24x24", "--calibration", bad, "-o", tmp_path / "x")
    assert proc.returncode == 5, proc.stderr
    assert "'input'" in proc.stderr and "pixels" in proc.stderr and not (tmp_path / "x").exists()


def test_pickled_object_arrays_are_refused(tmp_path):
    bad = tmp_path / "objects.npz"
    np.savez(bad, input=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickle"):
        load_npz(bad)


def test_rows_are_grouped_into_batches_of_the_compiled_shape():
    rows = {"input": np.arange(10 * 3, dtype=np.float32).reshape(10, 3)}
    feeds = feeds_from_samples(rows, {"input": (4, 3)}, {"input": "float32"}, "test")
    assert len(feeds) == 2 and feeds[1]["input"][0, 0] == 12  # the last 2 rows do not fill a batch


def test_whole_batches_per_sample_and_safe_casts():
    samples = {"ids": np.ones((3, 2, 8), np.int32)}
    feeds = feeds_from_samples(samples, {"ids": (2, 8)}, {"ids": "int64"}, "test")
    assert len(feeds) == 3 and feeds[0]["ids"].dtype == np.int64
    with pytest.raises(DataError, match="save it as int64"):
        feeds_from_samples({"ids": np.ones((3, 2, 8), np.float32)}, {"ids": (2, 8)}, {"ids": "int64"}, "test")
