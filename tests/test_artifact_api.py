"""bitsmith.compile -> artifact on disk -> Artifact.load: manifest, hashes, refusal of bad artifacts."""

import hashlib
import json
import shutil

import numpy as np
import pytest

import bitsmith
from bitsmith import zoo
from bitsmith.errors import ArtifactError, DataError, OutputError, UsageError
from bitsmith.measure import max_rel_err, ort_run, ort_session

MODEL = "mtcnn_rnet"  # small and real: compiles in seconds


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / MODEL
    return bitsmith.compile(zoo.onnx_path(MODEL), "host", input_shapes=zoo.input_shapes(MODEL),
                            output_dir=out, quiet=True)


@pytest.fixture
def copy(compiled, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(compiled.path, dest)
    return dest


def test_manifest_lists_versions_target_io_and_every_file_hash(compiled):
    manifest = json.loads((compiled.path / "manifest.json").read_text())
    assert set(manifest["versions"]) >= {"bitsmith", "tvm", "tvm_ffi", "onnx"}
    assert manifest["target"]["name"] == bitsmith.targets.load("host").name
    assert [s["name"] for s in manifest["inputs"]] == ["input"]
    assert manifest["inputs"][0]["shape"] == [1, 3, 24, 24]
    files = sorted(p.name for p in compiled.path.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == files == ["graph.json", "model.so", "weights.safetensors"]
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((compiled.path / name).read_bytes()).hexdigest() == digest


def test_loaded_artifact_matches_onnxruntime_on_real_faces(compiled):
    artifact = bitsmith.Artifact.load(compiled.path)
    session = ort_session(zoo.onnx_path(MODEL))
    for feeds in zoo.inputs(MODEL, 4):
        assert max_rel_err(artifact.run(feeds), ort_run(session, feeds)) < 1e-4


def test_run_accepts_positional_and_single_array(compiled):
    x = zoo.inputs(MODEL, 1)[0]["input"]
    by_name = compiled.run({"input": x})
    for other in (compiled.run([x]), compiled.run(x)):
        for k in by_name:
            np.testing.assert_array_equal(other[k], by_name[k])


def test_wrong_input_shape_is_refused_with_the_expected_shape(compiled):
    with pytest.raises(DataError, match=r"input 'input' must be float32\[1, 3, 24, 24\], got float32\[1, 3, 48, 48\]"):
        compiled.run(np.zeros((1, 3, 48, 48), np.float32))


def test_modified_library_is_refused_before_loading(copy):
    lib = copy / "model.so"
    lib.write_bytes(b"not a library" + lib.read_bytes()[13:])
    with pytest.raises(ArtifactError, match=r"model.so was modified \(SHA-256 mismatch\)"):
        bitsmith.Artifact.load(copy)


def test_modified_weights_are_refused(copy):
    weights = copy / "weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="weights.safetensors was modified"):
        bitsmith.Artifact.load(copy)


def test_missing_file_is_refused(copy):
    (copy / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing weights.safetensors"):
        bitsmith.Artifact.load(copy)


def test_manifest_member_escaping_the_directory_is_refused(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["../outside.so"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="escapes the artifact directory"):
        bitsmith.Artifact.load(copy)


def test_directory_without_manifest_is_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        bitsmith.Artifact.load(tmp_path)


def test_save_copies_and_reverifies(compiled, tmp_path):
    saved = compiled.save(tmp_path / "saved")
    assert saved.path == (tmp_path / "saved").resolve()
    assert (saved.path / "manifest.json").read_bytes() == (compiled.path / "manifest.json").read_bytes()


def test_recompiling_replaces_the_previous_artifact_atomically(tmp_path):
    out = tmp_path / "a"
    first = bitsmith.compile(zoo.onnx_path(MODEL), "host", input_shapes=zoo.input_shapes(MODEL), output_dir=out, quiet=True)
    second = bitsmith.compile(zoo.onnx_path(MODEL), "host", input_shapes=zoo.input_shapes(MODEL, batch=2),
                              output_dir=out, quiet=True)
    assert first.path == second.path
    assert bitsmith.Artifact.load(out).inputs[0].shape == (2, 3, 24, 24)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary directories left


def test_output_under_a_file_is_an_output_error_and_writes_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="choose a writable location"):
        bitsmith.compile(zoo.onnx_path(MODEL), "host", input_shapes=zoo.input_shapes(MODEL),
                         output_dir=blocker / "art", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_refuses_to_overwrite_a_directory_that_is_not_an_artifact(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a bitsmith artifact"):
        bitsmith.compile(zoo.onnx_path(MODEL), "host", input_shapes=zoo.input_shapes(MODEL),
                         output_dir=tmp_path / "mine", quiet=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_unknown_target_names_the_known_ones():
    with pytest.raises(UsageError, match="unknown target 'tpu-v9'.*x86-avx2"):
        bitsmith.compile(zoo.onnx_path(MODEL), "tpu-v9", input_shapes=zoo.input_shapes(MODEL))
