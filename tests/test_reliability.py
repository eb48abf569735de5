"""Reliability: bad input never crashes bitsmith or leaves half an artifact, a killed compile never
damages the previous artifact, tampered code is never loaded, the same inputs give the same bytes,
and nothing unpickles. The bad-input table itself lives in reliability_cases.py (shared with
scripts/reliability.py, which writes docs/results/reliability.json)."""

import ctypes
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import bitsmith
from bitsmith.errors import ArtifactError

import reliability_cases as rc

REPO = Path(__file__).resolve().parents[1]
CASES = {case.name: case for case in rc.CASES}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def reference(workdir):
    return rc.ReferenceArtifact(workdir)


# variants of a case the default run already has (a full disk over a previous artifact, a real full
# disk on tmpfs, Inf beside NaN): they compile or quantize before failing, so they run with -m slow
SLOW_CASES = ("disk_full_over_previous_artifact", "disk_full_tmpfs", "calibration_inf")


@pytest.fixture(scope="module")
def table(workdir):
    """The default run's cases, run two at a time; the others run one by one when selected."""
    return rc.run_table(workdir / "table", [c for c in rc.CASES if c.name not in SLOW_CASES])


def test_the_table_covers_at_least_fifteen_kinds_of_bad_input():
    assert len(rc.CASES) >= 15
    assert {c.exit_code for c in rc.CASES} >= {2, 3, 4, 5, 6, 7, 9}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n
                                  for n in sorted(CASES)])
def test_bad_input_gives_its_exit_code_a_helpful_message_and_no_partial_output(request, workdir, name):
    case = CASES[name]
    if case.pending():
        pytest.skip(case.pending())
    if name in SLOW_CASES:
        result = rc.run_table(workdir / "slow", [case])[name]
    else:
        result = request.getfixturevalue("table")[name]
    assert result.exit_code == case.exit_code, result.message
    assert "Traceback" not in result.message
    assert case.unmentioned(result) == [], result.message
    assert not result.partial_output, result.leftovers


@pytest.mark.parametrize("point", ["start", "model.so"])
def test_sigkill_mid_write_leaves_the_previous_artifact_or_the_new_one_whole(workdir, reference, point):
    outcome = rc.kill_mid_write(workdir / "kill", reference, point)
    assert outcome["verified"] and outcome["output"] in ("previous", "new"), outcome
    assert outcome["next_compile_exit_code"] == 0
    assert outcome["left_after_next_compile"] == ["artifact"], outcome  # the dead writer's temporaries are gone


# W8A8 runs every stage FP32 does (import, emit, build, export) plus calibration and quantization;
# scripts/reliability.py checks FP32 and more models too
@pytest.mark.parametrize("name, recipe", [("mtcnn_rnet", "w8a8")])
def test_same_model_data_target_and_options_give_identical_bytes(workdir, name, recipe):
    check = rc.compile_twice(workdir / "determinism", name, recipe)
    assert check["identical"], check["differing"]
    assert {"model.so", "weights.safetensors", "graph.json", "manifest.json"} <= set(check["files"])


def test_a_replaced_library_is_refused_before_it_is_loaded(reference, tmp_path):
    """A library whose constructor leaves a marker file: verification must refuse it before dlopen."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the planted library")
    marker = tmp_path / "library-was-loaded"
    source = tmp_path / "planted.c"
    source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void planted(void) {\n'
                      f'  FILE *f = fopen("{marker}", "w"); if (f) fclose(f);\n}}\n')
    planted = tmp_path / "planted.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(planted), str(source)], check=True)
    artifact = shutil.copytree(reference(), tmp_path / "artifact")
    shutil.copyfile(planted, artifact / "model.so")
    with pytest.raises(ArtifactError, match="model.so was modified"):
        bitsmith.Artifact.load(artifact)
    assert not marker.exists()
    ctypes.CDLL(str(planted))  # the control: loading it does leave the marker
    assert marker.exists()


def test_no_pickle_anywhere_in_bitsmiths_source():
    assert rc.pickle_uses(REPO) == []


def test_the_pickle_scan_finds_what_it_looks_for(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "bad.py").write_text(
        "import pickle\nimport numpy as np\nimport torch\n"
        "a = np.load('x.npy')\nb = np.load('y.npz', allow_pickle=False)\nc = torch.load('w.pt')\n"
        "d = torch.load('w.pt', weights_only=True)\n")
    found = rc.pickle_uses(tmp_path)
    assert [f.split(": ", 1)[1] for f in found] == [
        "import pickle", "numpy.load without allow_pickle=False", "torch.load without weights_only=True"]


def test_artifact_manifest_names_only_plain_relative_members(reference):
    manifest = json.loads((reference() / "manifest.json").read_text())
    for name in manifest["files"]:
        assert not Path(name).is_absolute() and ".." not in Path(name).parts
