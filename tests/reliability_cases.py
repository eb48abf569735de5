"""The bad-input table: one function per kind of bad input, run the way a user meets it.

Each case runs the real command line (`python -m bitsmith ...` in a subprocess) wherever the input can
be expressed there, else the Python API in a subprocess, in a fresh workspace:

    <workspace>/inputs/     the files the case hands to bitsmith
    <workspace>/out/        the parent of the output directory (-o <workspace>/out/artifact)
    <workspace>/tmp/        $TMPDIR of the run

and records a Result: the exit code, bitsmith's one-line message, and whether anything was left
behind (`partial_output`): a new or changed path under out/ (an artifact, a temporary directory, a
created parent) or anything under tmp/. Every case states the documented exit code it must give
(bitsmith.errors) and words its message must contain: the thing at fault and what to do.

Used by tests/test_reliability.py (one test per case) and scripts/reliability.py (the evidence in
docs/results/reliability.json).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
import time
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bitsmith import zoo

MODEL = "mtcnn_rnet"  # small and real: compiles in seconds
SHAPE = "input=1x3x24x24"
DISK_LIMIT_BYTES = 64 * 1024  # the simulated full disk: no file may grow past 64 KiB
TIMEOUT_S = 600


@dataclass
class Result:
    exit_code: int
    message: str
    partial_output: bool
    leftovers: list[str]
    seconds: float


@dataclass(frozen=True)
class Case:
    name: str
    what: str  # the bad input, in words
    via: str  # "cli" or "api"
    exit_code: int  # the documented exit code it must give
    mentions: tuple[str, ...]  # words the message must contain (case-insensitive)
    run: Callable[["Workspace"], Result]

    def pending(self) -> str:
        """Why the case cannot run in this build ("" when it can)."""
        if self.name == "budget_no_configuration_meets" and importlib.util.find_spec("bitsmith.precision") is None:
            return "needs the precision planner (bitsmith.precision), which this build lacks"
        if self.name == "disk_full_tmpfs" and not _namespaces_allowed():
            return "this machine does not let an unprivileged process mount a small tmpfs (unshare -rm)"
        return ""

    def unmentioned(self, result: Result) -> list[str]:
        """The words the message should contain but does not."""
        return [word for word in self.mentions if word.lower() not in result.message.lower()]


# ---------------------------------------------------------------------------------------------
# Workspace: runs bitsmith and looks for what it left behind
# ---------------------------------------------------------------------------------------------
def _tree(root: Path) -> dict[str, str]:
    """Every path under `root` -> a digest of its content ("dir" for directories)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


class Workspace:
    def __init__(self, root: Path, reference_artifact: Callable[[], Path]) -> None:
        self.root = root
        self.inputs, self.out, self.tmp = root / "inputs", root / "out", root / "tmp"
        for d in (self.inputs, self.out, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.artifact = self.out / "artifact"
        self._reference_artifact = reference_artifact

    # -- inputs --------------------------------------------------------------------------------
    def file(self, name: str, content: bytes) -> Path:
        path = self.inputs / name
        path.write_bytes(content)
        return path

    def onnx_file(self, name: str, proto: onnx.ModelProto) -> Path:
        return self.file(name, proto.SerializeToString())

    def npz(self, name: str, **arrays: np.ndarray) -> Path:
        path = self.inputs / name
        np.savez(path, **arrays)
        return path

    def copy_of_artifact(self, dest: Path) -> Path:
        shutil.copytree(self._reference_artifact(), dest)
        return dest

    # -- running -------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        # torch creates its compile cache under $TMPDIR when it loads (torch._dynamo): kept on purpose,
        # and not bitsmith's to clean, so it goes elsewhere and tmp/ shows bitsmith's leftovers only
        return {**os.environ, "TMPDIR": str(self.tmp), "TORCHINDUCTOR_CACHE_DIR": str(self.root / "torch-cache"),
                "PYTHONDONTWRITEBYTECODE": "1"}

    def cli(self, *args: object, file_size_limit: int | None = None) -> Result:
        """`python -m bitsmith ARGS` in a subprocess (optionally under a file size limit)."""
        return self._run([sys.executable, "-m", "bitsmith", *map(str, args)], file_size_limit)

    def api(self, code: str) -> Result:
        """Python `code` (with `bitsmith`, `zoo`, `np` imported) in a subprocess; a BitsmithError
        exits with its exit code and prints its message as the CLI does."""
        program = textwrap.dedent("""
            import sys
            import numpy as np
            import bitsmith
            from bitsmith import zoo
            try:
            {body}
            except bitsmith.BitsmithError as exc:
                print(f"bitsmith: error: {{exc}}", file=sys.stderr)
                sys.exit(exc.exit_code)
        """).format(body=textwrap.indent(textwrap.dedent(code), "    "))
        return self._run([sys.executable, "-c", program], None)

    def _run(self, argv: list[str], file_size_limit: int | None) -> Result:
        before = _tree(self.out)
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, env=self.env(),
                              cwd=self.root, preexec_fn=_limit_file_size(file_size_limit) if file_size_limit else None)
        after = _tree(self.out)
        leftovers = sorted(f"out/{p}" for p in after if before.get(p) != after[p])
        leftovers += sorted(f"out/{p} (removed)" for p in before if p not in after)
        leftovers += sorted(f"tmp/{p}" for p in _tree(self.tmp))
        seconds = time.perf_counter() - start
        marker = proc.stderr.rfind("bitsmith: error: ")
        message = proc.stderr[marker + len("bitsmith: error: "):] if marker >= 0 else proc.stderr[-2000:]
        return Result(proc.returncode, message.strip(), bool(leftovers), leftovers, round(seconds, 2))


def _limit_file_size(limit: int) -> Callable[[], None]:
    """A full disk, simulated without privileges: every write past `limit` bytes of a file fails
    (EFBIG, as ENOSPC on a full disk) instead of killing the process with SIGXFSZ."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


# ---------------------------------------------------------------------------------------------
# Small ONNX graphs for the malformed cases
# ---------------------------------------------------------------------------------------------
def _graph_model(nodes: list, inputs: list, outputs: list, initializers: list = (), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "case", inputs, outputs, list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _x(shape=(2, 4)):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))


def _y(shape=None, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info("y", elem, shape)


def nonzero_model() -> onnx.ModelProto:
    return _graph_model([helper.make_node("NonZero", ["x"], ["y"], name="find_nonzero")], [_x()],
                        [_y(elem=TensorProto.INT64)])


def loop_model() -> onnx.ModelProto:
    """y = x + 1, three times, in an ONNX Loop."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Add", ["acc", "one"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(np.float32(1.0), "one")])
    loop = helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], name="repeat_add", body=body)
    return _graph_model([loop], [_x()], [_y()], [numpy_helper.from_array(np.int64(3), "trips"),
                                                  numpy_helper.from_array(np.bool_(True), "keep_going")])


def no_input_model() -> onnx.ModelProto:
    return _graph_model([helper.make_node("Relu", ["c"], ["y"], name="relu")], [], [_y()],
                        [numpy_helper.from_array(np.ones(4, np.float32), "c")])


def dangling_input_model() -> onnx.ModelProto:
    """A node reading a tensor nothing defines (a deleted node, a renamed weight)."""
    return _graph_model([helper.make_node("Add", ["x", "bias_that_was_removed"], ["y"], name="add_bias")], [_x()], [_y()])


def huge_constant_model() -> onnx.ModelProto:
    """ConstantOfShape asking for 2^40 elements (4 TiB of float32): a typo in a shape, not a model."""
    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="make_big"),
             helper.make_node("ReduceSum", ["big"], ["s"], name="sum_big", keepdims=0),
             helper.make_node("Add", ["x", "s"], ["y"], name="add")]
    return _graph_model(nodes, [_x()], [_y()], [shape])


def _rnet() -> Path:
    return zoo.onnx_path(MODEL)


def _rnet_samples(count: int = 4) -> np.ndarray:
    return np.concatenate([f["input"] for f in zoo.inputs(MODEL, count, split="calib")])


def _edit_manifest(artifact: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    edit(manifest)
    (artifact / "manifest.json").write_text(json.dumps(manifest))


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------
def truncated_onnx(ws: Workspace) -> Result:
    blob = _rnet().read_bytes()
    return ws.cli("compile", ws.file("rnet_cut.onnx", blob[: len(blob) // 2]), "--input-shape", SHAPE, "-o", ws.artifact)


def corrupt_onnx(ws: Workspace) -> Result:
    blob = bytearray(_rnet().read_bytes())
    blob[100:164] = b"\xff" * 64  # garbage over the graph's structure
    return ws.cli("compile", ws.file("rnet_corrupt.onnx", bytes(blob)), "--input-shape", SHAPE, "-o", ws.artifact)


def wrong_file_type(ws: Workspace) -> Result:
    from bitsmith import zoo_data

    png = (zoo_data.package_dir("skimage") / "data" / "camera.png").read_bytes()  # a real photo, named .onnx
    return ws.cli("compile", ws.file("camera.onnx", png), "-o", ws.artifact)


def missing_model_file(ws: Workspace) -> Result:
    return ws.cli("compile", ws.inputs / "no_such_model.onnx", "-o", ws.artifact)


def unsupported_op(ws: Workspace) -> Result:
    return ws.cli("compile", ws.onnx_file("nonzero.onnx", nonzero_model()), "-o", ws.artifact)


def control_flow_if(ws: Workspace) -> Result:
    return ws.cli("compile", zoo.onnx_path("silero_vad"), "-o", ws.artifact)


def control_flow_loop(ws: Workspace) -> Result:
    return ws.cli("compile", ws.onnx_file("loop.onnx", loop_model()), "-o", ws.artifact)


def dynamic_shape_without_hint(ws: Workspace) -> Result:
    return ws.cli("compile", zoo.onnx_path("ppocr_cls"), "-o", ws.artifact)


def shape_hint_that_does_not_fit(ws: Workspace) -> Result:
    return ws.cli("compile", _rnet(), "--input-shape", "input=1x4x24x24", "-o", ws.artifact)


def malformed_shape_hint(ws: Workspace) -> Result:
    return ws.cli("compile", _rnet(), "--input-shape", "input:1,3,24,24", "-o", ws.artifact)


def graph_without_inputs(ws: Workspace) -> Result:
    return ws.cli("compile", ws.onnx_file("no_inputs.onnx", no_input_model()), "-o", ws.artifact)


def dangling_tensor(ws: Workspace) -> Result:
    return ws.cli("compile", ws.onnx_file("dangling.onnx", dangling_input_model()), "-o", ws.artifact)


def tensor_too_large(ws: Workspace) -> Result:
    return ws.cli("compile", ws.onnx_file("huge.onnx", huge_constant_model()), "-o", ws.artifact)


def opset_out_of_range(ws: Workspace) -> Result:
    old = _graph_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_x()], [_y()], opset=9)
    return ws.cli("compile", ws.onnx_file("opset9.onnx", old), "-o", ws.artifact)


def _compile_w8a8(ws: Workspace, calibration: Path) -> Result:
    return ws.cli("compile", _rnet(), "--input-shape", SHAPE, "--recipe", "w8a8", "--calibration", calibration,
                  "-o", ws.artifact)


def calibration_wrong_shape(ws: Workspace) -> Result:
    return _compile_w8a8(ws, ws.npz("calib_32px.npz", input=np.zeros((4, 3, 32, 32), np.float32)))


def calibration_wrong_dtype(ws: Workspace) -> Result:
    bytes_as_floats = np.random.default_rng(0).random((2, 2048), dtype=np.float32)  # magika reads int32 bytes
    return ws.cli("compile", zoo.onnx_path("magika"), "--recipe", "w8a8", "--calibration",
                  ws.npz("calib_float.npz", bytes=bytes_as_floats), "-o", ws.artifact)


def calibration_nan(ws: Workspace) -> Result:
    samples = _rnet_samples()
    samples[1, 0, 3, 3] = np.nan
    return _compile_w8a8(ws, ws.npz("calib_nan.npz", input=samples))


def calibration_inf(ws: Workspace) -> Result:
    samples = _rnet_samples()
    samples[2, 1, 0, 0] = np.inf
    return _compile_w8a8(ws, ws.npz("calib_inf.npz", input=samples))


def calibration_empty(ws: Workspace) -> Result:
    return _compile_w8a8(ws, ws.npz("calib_empty.npz", input=np.zeros((0, 3, 24, 24), np.float32)))


def calibration_wrong_input_name(ws: Workspace) -> Result:
    return _compile_w8a8(ws, ws.npz("calib_named.npz", image=_rnet_samples()))


def calibration_not_npz(ws: Workspace) -> Result:
    return _compile_w8a8(ws, ws.file("calib.npz", b"input,0.1,0.2\n"))


def recipe_without_calibration(ws: Workspace) -> Result:
    return ws.cli("compile", _rnet(), "--input-shape", SHAPE, "--recipe", "w8a8", "-o", ws.artifact)


def unknown_recipe(ws: Workspace) -> Result:
    return ws.cli("compile", _rnet(), "--input-shape", SHAPE, "--recipe", "w3a3", "--calibration",
                  ws.npz("calib.npz", input=_rnet_samples()), "-o", ws.artifact)


def unknown_target(ws: Workspace) -> Result:
    return ws.cli("compile", _rnet(), "--input-shape", SHAPE, "--target", "tpu-v9", "-o", ws.artifact)


def budget_no_configuration_meets(ws: Workspace) -> Result:
    return ws.api(f"""
        from bitsmith.constraints import Constraints
        feeds = zoo.inputs({MODEL!r}, 2, split="calib")
        bitsmith.compile(zoo.onnx_path({MODEL!r}), "host", input_shapes=zoo.input_shapes({MODEL!r}),
                         calibration=feeds, constraints=Constraints(size_mb=0.001),
                         output_dir={str(ws.artifact)!r}, quiet=True)
    """)


def output_under_a_file(ws: Workspace) -> Result:
    blocker = ws.out / "results.txt"
    blocker.write_text("a file where a directory was expected\n")
    return ws.cli("compile", _rnet(), "--input-shape", SHAPE, "-o", blocker / "artifact")


def output_is_not_an_artifact(ws: Workspace) -> Result:
    ws.artifact.mkdir()
    (ws.artifact / "notes.txt").write_text("keep me\n")
    return ws.cli("compile", _rnet(), "--input-shape", SHAPE, "-o", ws.artifact)


def disk_full(ws: Workspace) -> Result:
    return ws.cli("compile", _rnet(), "--input-shape", SHAPE, "-o", ws.artifact, file_size_limit=DISK_LIMIT_BYTES)


def disk_full_over_previous_artifact(ws: Workspace) -> Result:
    ws.copy_of_artifact(ws.artifact)
    return ws.cli("compile", _rnet(), "--input-shape", "input=2x3x24x24", "-o", ws.artifact,
                  file_size_limit=DISK_LIMIT_BYTES)


def disk_full_tmpfs(ws: Workspace) -> Result:
    """A real full disk: out/ is a 300 KiB tmpfs (in a user and mount namespace, so no privileges
    are needed where the kernel allows them), too small for RNet's 0.4 MB of weights."""
    listing = ws.root / "tmpfs-contents.txt"
    script = ('mount -t tmpfs -o size=300k tmpfs "$1" || exit 99; shift; "$@"; code=$?; '
              f'ls -A "{ws.out}" > "{listing}"; exit $code')
    result = ws._run(["unshare", "-rm", "sh", "-c", script, "sh", str(ws.out), sys.executable, "-m", "bitsmith",
                      "compile", str(_rnet()), "--input-shape", SHAPE, "-o", str(ws.artifact)], None)
    left = listing.read_text().split() if listing.is_file() else ["(the tmpfs could not be listed)"]
    leftovers = result.leftovers + [f"out/{name} (on the tmpfs)" for name in left]
    return Result(result.exit_code, result.message, bool(leftovers), leftovers, result.seconds)


@lru_cache(maxsize=1)
def _namespaces_allowed() -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs in its own namespaces."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


def artifact_missing_file(ws: Workspace) -> Result:
    (ws.copy_of_artifact(ws.artifact) / "weights.safetensors").unlink()
    return ws.cli("inspect", ws.artifact)


def artifact_modified_file(ws: Workspace) -> Result:
    library = ws.copy_of_artifact(ws.artifact) / "model.so"
    blob = bytearray(library.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit
    library.write_bytes(bytes(blob))
    return ws.cli("inspect", ws.artifact)


def artifact_member_escapes(ws: Workspace) -> Result:
    _edit_manifest(ws.copy_of_artifact(ws.artifact),
                   lambda m: m["files"].update({"../outside.so": "0" * 64}))
    return ws.cli("inspect", ws.artifact)


def artifact_member_absolute(ws: Workspace) -> Result:
    _edit_manifest(ws.copy_of_artifact(ws.artifact),
                   lambda m: m.update(library="/tmp/evil.so", files={**m["files"], "/tmp/evil.so": "0" * 64}))
    return ws.cli("inspect", ws.artifact)


def artifact_manifest_corrupt(ws: Workspace) -> Result:
    manifest = ws.copy_of_artifact(ws.artifact) / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:200])
    return ws.cli("inspect", ws.artifact)


def _case(run: Callable[[Workspace], Result], what: str, via: str, exit_code: int, *mentions: str) -> Case:
    return Case(run.__name__, what, via, exit_code, mentions, run)


CASES: list[Case] = [
    _case(truncated_onnx, "ONNX file cut in half", "cli", 3, "rnet_cut.onnx", "truncated"),
    _case(corrupt_onnx, "64 bytes of garbage over the ONNX graph structure", "cli", 3, "rnet_corrupt.onnx", "not a valid ONNX"),
    _case(wrong_file_type, "a PNG photo named .onnx", "cli", 3, "camera.onnx", "another file type"),
    _case(missing_model_file, "model path that does not exist", "cli", 3, "no_such_model.onnx", "does not exist"),
    _case(unsupported_op, "NonZero (data-dependent shape)", "cli", 4, "NonZero", "find_nonzero", "replace"),
    _case(control_flow_if, "silero-vad: an If node", "cli", 4, "If (control flow)", "If_0", "without control flow"),
    _case(control_flow_loop, "an ONNX Loop", "cli", 4, "Loop (control flow)", "repeat_add"),
    _case(dynamic_shape_without_hint, "PP-OCR cls: dynamic batch/width, no --input-shape", "cli", 2, "'x'", "--input-shape x="),
    _case(shape_hint_that_does_not_fit, "--input-shape contradicting the model", "cli", 2, "'input'", "does not fit"),
    _case(malformed_shape_hint, "--input-shape input:1,3,24,24", "cli", 2, "--input-shape", "NAME=1x3x224x224"),
    _case(graph_without_inputs, "a graph whose only tensor is an initializer", "cli", 3, "no_inputs.onnx", "no inputs"),
    _case(dangling_tensor, "a node reading a tensor nothing defines", "cli", 3, "add_bias", "bias_that_was_removed", "re-export"),
    _case(tensor_too_large, "ConstantOfShape of 2^40 elements", "cli", 4, "make_big", "elements"),
    _case(opset_out_of_range, "opset 9 model", "cli", 4, "opset 9", "convert_version"),
    _case(calibration_wrong_shape, "32x32 calibration images for a 24x24 model", "cli", 5, "calib_32px.npz", "'input'", "[1, 3, 24, 24]"),
    _case(calibration_wrong_dtype, "float32 calibration data for magika's int32 input", "cli", 5, "calib_float.npz", "'bytes'", "int32"),
    _case(calibration_nan, "a NaN in one calibration image", "cli", 5, "'input'", "NaN", "clean"),
    _case(calibration_inf, "an Inf in one calibration image", "cli", 5, "'input'", "Inf", "clean"),
    _case(calibration_empty, "calibration file with zero samples", "cli", 5, "calib_empty.npz", "0 samples"),
    _case(calibration_wrong_input_name, "calibration arrays keyed by a name the model lacks", "cli", 5, "calib_named.npz", "missing ['input']"),
    _case(calibration_not_npz, "a CSV text file given as the calibration .npz", "cli", 5, "calib.npz", "not an .npz", "numpy.savez"),
    _case(recipe_without_calibration, "--recipe w8a8 with no calibration data", "cli", 5, "w8a8", "calibration"),
    _case(unknown_recipe, "--recipe w3a3", "cli", 2, "w3a3", "w8a8"),
    _case(unknown_target, "--target tpu-v9", "cli", 2, "tpu-v9", "x86-avx2"),
    _case(budget_no_configuration_meets, "size budget of 1 kB for RNet (0.1M parameters)", "api", 6, "size_mb", "0.001"),
    _case(output_under_a_file, "-o below a regular file", "cli", 9, "results.txt", "writable location"),
    _case(output_is_not_an_artifact, "-o an existing directory of someone's files", "cli", 9, "not a bitsmith artifact", "refusing"),
    _case(disk_full, "every file write past 64 KiB fails (RLIMIT_FSIZE)", "cli", 9, "artifact", "file size limit", "another output directory"),
    _case(disk_full_over_previous_artifact, "disk full while replacing a previous artifact", "cli", 9, "artifact", "file size limit"),
    _case(disk_full_tmpfs, "output on a 300 KiB tmpfs: writes fail with ENOSPC", "cli", 9, "artifact", "disk is full", "free space"),
    _case(artifact_missing_file, "artifact without its weights file", "cli", 7, "weights.safetensors", "recompile"),
    _case(artifact_modified_file, "one bit flipped in the artifact's library", "cli", 7, "model.so", "SHA-256 mismatch", "recompile"),
    _case(artifact_member_escapes, "manifest listing ../outside.so", "cli", 7, "../outside.so", "escapes", "recompile"),
    _case(artifact_member_absolute, "manifest naming /tmp/evil.so as the library", "cli", 7, "/tmp/evil.so", "absolute", "recompile"),
    _case(artifact_manifest_corrupt, "manifest.json cut short", "cli", 7, "manifest.json", "not valid JSON"),
]


# ---------------------------------------------------------------------------------------------
# Running the table
# ---------------------------------------------------------------------------------------------
class ReferenceArtifact:
    """A real RNet artifact, compiled once on first use, that the artifact cases copy and damage."""

    def __init__(self, root: Path) -> None:
        self.path = root / "reference" / "rnet"
        self._lock = threading.Lock()

    def __call__(self) -> Path:
        with self._lock:
            if not self.path.is_dir():
                import bitsmith

                bitsmith.compile(_rnet(), "host", input_shapes=zoo.input_shapes(MODEL), output_dir=self.path, quiet=True)
            return self.path


def run_table(root: Path, cases: list[Case] = CASES, workers: int = 2) -> dict[str, Result]:
    """Run every case that can run here (each in root/<case name>), `workers` at a time."""
    reference = ReferenceArtifact(root)
    runnable = [c for c in cases if not c.pending()]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda c: c.run(Workspace(root / c.name, reference)), runnable)
        return dict(zip((c.name for c in runnable), results))


# ---------------------------------------------------------------------------------------------
# SIGKILL in the middle of writing an artifact
# ---------------------------------------------------------------------------------------------
# What the temporary directory holds, in the order write_artifact creates it: a kill is aimed at the
# moment the directory first shows each stage (or, for "start", the moment the directory appears).
KILL_POINTS = ("start", "model.so", "weights.safetensors", "graph.json", "manifest.json")


def _stage_seen(out: Path, name: str) -> str | None:
    """The furthest KILL_POINTS stage visible in the temporary directories beside out/<name>."""
    temporaries = list(out.glob(f".{name}.tmp-*"))
    if not temporaries:
        return None
    present: set[str] = set()
    for temporary in temporaries:
        try:
            present |= {p.name for p in temporary.iterdir()}
        except FileNotFoundError:  # renamed or removed between the glob and the listing
            pass
    reached = [stage for stage in KILL_POINTS[1:] if stage in present]
    return reached[-1] if reached else "start"


def kill_mid_write(root: Path, reference: Callable[[], Path], point: str) -> dict:
    """Compile RNet (batch 2) over a copy of the reference artifact (batch 1) and SIGKILL the compile
    as soon as its temporary directory reaches `point`; report what the output directory holds."""
    from bitsmith.artifact import read_verified_manifest

    ws = Workspace(root / f"kill-{point.replace('.', '_')}", reference)
    ws.copy_of_artifact(ws.artifact)
    previous = (ws.artifact / "manifest.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "bitsmith", "compile", str(_rnet()), "--input-shape",
                             "input=2x3x24x24", "-o", str(ws.artifact), "-q"], env=ws.env(), cwd=ws.root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wanted = KILL_POINTS.index(point)
    seen = None
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        seen = _stage_seen(ws.out, ws.artifact.name)
        if seen is not None and KILL_POINTS.index(seen) >= wanted:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
    finished = proc.wait() == 0
    try:
        manifest = read_verified_manifest(ws.artifact)
        state = "previous" if (ws.artifact / "manifest.json").read_bytes() == previous else "new"
        verified = True
        if state == "new" and manifest["inputs"][0]["shape"] != [2, 3, 24, 24]:
            state = "unexpected"
    except Exception as exc:  # the property under test: this must not happen
        state, verified = f"broken: {exc}", False
    stray = sorted(p.name for p in ws.out.iterdir() if p.name != ws.artifact.name)
    # the next compile to the same place removes what the killed one left
    again = ws.cli("compile", _rnet(), "--input-shape", SHAPE, "-o", ws.artifact, "-q")
    after = sorted(p.name for p in ws.out.iterdir())
    return {"aimed_at": point, "killed_at": None if finished else seen, "finished_before_kill": finished,
            "output": state, "verified": verified, "stray_after_kill": stray,
            "next_compile_exit_code": again.exit_code, "left_after_next_compile": after}


# ---------------------------------------------------------------------------------------------
# Determinism: the same inputs give the same bytes
# ---------------------------------------------------------------------------------------------
def compile_twice(root: Path, name: str, recipe: str | None, size_mb: float | None = None) -> dict:
    """Compile zoo model `name` twice (FP32, or `recipe` on the zoo's calibration split, planned per
    layer under a `size_mb` budget if given) into two directories of different names in separate
    processes; compare the files byte for byte."""
    runs = []
    label = f"{recipe or 'fp32'}" + (f", mixed precision under size_mb={size_mb}" if size_mb else "")
    for attempt in ("first", "second"):
        out = root / f"{name}-{recipe or 'fp32'}-{size_mb or 'any'}-{attempt}" / "artifact"
        ws_code = f"""
            from bitsmith.constraints import Constraints
            shapes = zoo.input_shapes({name!r})
            calibration = zoo.inputs({name!r}, 2, split="calib") if {recipe!r} else None
            constraints = Constraints(size_mb={size_mb!r}) if {size_mb!r} else None
            bitsmith.compile(zoo.onnx_path({name!r}), "host", input_shapes=shapes, recipe={recipe!r},
                             calibration=calibration, constraints=constraints, output_dir={str(out)!r}, quiet=True)
        """
        result = Workspace(out.parent, lambda: out).api(ws_code)
        if result.exit_code != 0:
            raise RuntimeError(f"compiling {name} ({label}) failed: {result.message}")
        runs.append(out)
    first, second = (json.loads((run / "manifest.json").read_text()) for run in runs)
    files = sorted(set(first["files"]) | {"manifest.json"})
    differing = [f for f in files if (runs[0] / f).read_bytes() != (runs[1] / f).read_bytes()]
    return {"model": name, "precision": label, "files": files, "file_hashes": first["files"],
            "manifest_sha256": hashlib.sha256((runs[0] / "manifest.json").read_bytes()).hexdigest(),
            "identical": not differing, "differing": differing}


# ---------------------------------------------------------------------------------------------
# No pickle anywhere
# ---------------------------------------------------------------------------------------------
SOURCE_DIRS = ("compiler", "passes", "frontends", "backends", "scripts")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}


def pickle_uses(repo: Path) -> list[str]:
    """Every place in bitsmith's source that could unpickle: imports of pickle-family modules,
    torch.load without weights_only=True, numpy.load without allow_pickle=False, pandas' pickle I/O."""
    import ast

    found = []
    for directory in SOURCE_DIRS:
        for path in sorted((repo / directory).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                where = f"{path.relative_to(repo)}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Import):
                    found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
                    found.append(f"{where}: from {node.module} import ...")
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    found += [f"{where}: {problem}" for problem in _unsafe_call(node)]
    return found


def _unsafe_call(call) -> list[str]:
    import ast

    func = call.func
    owner = func.value.id if isinstance(func.value, ast.Name) else ""
    keywords = {k.arg: k.value for k in call.keywords}

    def is_const(name: str, value: object) -> bool:
        return isinstance(keywords.get(name), ast.Constant) and keywords[name].value is value

    if func.attr == "load" and owner == "torch" and not is_const("weights_only", True):
        return ["torch.load without weights_only=True"]
    if func.attr == "load" and owner in ("np", "numpy") and not is_const("allow_pickle", False):
        return ["numpy.load without allow_pickle=False"]
    if func.attr in ("read_pickle", "to_pickle"):
        return [f"{func.attr}"]
    return []
