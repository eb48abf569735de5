"""End-to-end checks of the C++ runtime against the artifacts make_artifacts.py wrote.

    e2e.py --artifacts DIR parity    --runner BIN --case CASE   C++ outputs == Python outputs, bit for bit
    e2e.py --artifacts DIR tampered  --runner BIN --case CASE   modified/missing/escaping files are refused
    e2e.py --artifacts DIR bad-input --runner BIN --case CASE   wrong shape/dtype/count: clear message
    e2e.py --artifacts DIR usage     --runner BIN               bad command lines: exit 2 with a message
    e2e.py --artifacts DIR classify  --classify BIN --case CASE the example prints Python's top-5
    e2e.py --artifacts DIR consumer  --prefix P --cmake CMAKE --work W --case CASE
                                     build runtime/examples against the installed package (find_package)
    e2e.py --artifacts DIR isolated  --prefix P CASE...         the installed runner, copied alone with the
                                     two TVM libraries and the artifact, runs under `env -i`: same outputs

Only numpy is needed here; the runner itself never sees Python.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TVM_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# ------------------------------------------------------------------------------------ helpers
class CaseData:
    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.info = json.loads((self.dir / "case.json").read_text())
        self.artifact = self.dir / "artifact"

    @property
    def samples(self) -> range:
        return range(self.info["samples"])

    def input_files(self, k: int) -> dict[str, Path]:
        return {name: self.dir / "inputs" / str(k) / f"{name}.npy" for name in self.info["inputs"]}

    def expected(self, k: int) -> dict[str, np.ndarray]:
        return {name: np.load(self.dir / "expected" / str(k) / f"{name}.npy") for name in self.info["outputs"]}


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)


def runner_cmd(runner: Path | str, artifact: Path | str, inputs: dict[str, Path | str],
               outputs: dict[str, Path | str]) -> list[str]:
    cmd = [str(runner), str(artifact), "--quiet"]
    for name, path in inputs.items():
        cmd += ["--input", f"{name}={path}"]
    for name, path in outputs.items():
        cmd += ["--output", f"{name}={path}"]
    return cmd


def compare(expected: dict[str, np.ndarray], out_dir: Path, where: str) -> None:
    for name, want in expected.items():
        got = np.load(out_dir / f"{name}.npy")
        check(got.dtype == want.dtype and got.shape == want.shape,
              f"{where}: output {name!r} is {got.dtype}{list(got.shape)}, Python gave {want.dtype}{list(want.shape)}")
        if got.tobytes() != want.tobytes():
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            raise CheckFailed(f"{where}: output {name!r} differs from Python's: {int((got != want).sum())} of "
                              f"{got.size} elements, max |diff| {diff.max():.3g}")


def expect_refusal(result: subprocess.CompletedProcess, needles: list[str], what: str, exit_code: int = 1) -> None:
    check(result.returncode == exit_code,
          f"{what}: expected exit {exit_code}, got {result.returncode}; stderr: {result.stderr.strip()}")
    for needle in needles:
        check(needle in result.stderr, f"{what}: stderr lacks {needle!r}: {result.stderr.strip()}")
    print(f"ok: {what}: {result.stderr.strip().splitlines()[0]}")


# -------------------------------------------------------------------------------------- checks
def parity(args) -> None:
    case = CaseData(args.artifacts, args.case)
    with tempfile.TemporaryDirectory(prefix="bsm-parity-") as tmp:
        for k in case.samples:
            out = Path(tmp) / str(k)
            out.mkdir()
            outputs = {name: out / f"{name}.npy" for name in case.info["outputs"]}
            result = run(runner_cmd(args.runner, case.artifact, case.input_files(k), outputs))
            check(result.returncode == 0, f"sample {k}: runner failed: {result.stderr.strip()}")
            compare(case.expected(k), out, f"{args.case} sample {k}")
    print(f"ok: {args.case}: {len(case.samples)} samples, every output bit-identical to bitsmith.Artifact.run")


def tampered(args) -> None:
    case = CaseData(args.artifacts, args.case)
    inputs = case.input_files(0)
    with tempfile.TemporaryDirectory(prefix="bsm-tamper-") as tmp:
        def fresh_copy(label: str) -> Path:
            dest = Path(tmp) / label
            shutil.copytree(case.artifact, dest)
            return dest

        def attempt(artifact: Path) -> subprocess.CompletedProcess:
            return run(runner_cmd(args.runner, artifact, inputs, {}))

        manifest = json.loads((case.artifact / "manifest.json").read_text())
        for member in sorted(manifest["files"]):
            art = fresh_copy("flip-" + member.replace("/", "_"))
            data = bytearray((art / member).read_bytes())
            data[len(data) // 2] ^= 0x01  # one bit, mid-file
            (art / member).write_bytes(bytes(data))
            expect_refusal(attempt(art), [str(art / member), "SHA-256 mismatch"], f"one bit flipped in {member}")

        art = fresh_copy("truncated")
        with open(art / "weights.safetensors", "r+b") as f:
            f.truncate(100)
        expect_refusal(attempt(art), ["weights.safetensors", "SHA-256 mismatch"], "truncated weights")

        art = fresh_copy("missing")
        (art / "model.so").unlink()
        expect_refusal(attempt(art), ["is missing model.so"], "missing library")

        art = fresh_copy("escape")
        edited = dict(manifest, files={**manifest["files"], "../outside.bin": "0" * 64})
        (art / "manifest.json").write_text(json.dumps(edited))
        expect_refusal(attempt(art), ["'../outside.bin'", "escapes the artifact directory"], "member name with ..")

        art = fresh_copy("absolute")
        edited = dict(manifest, library="/tmp/evil.so", files={**manifest["files"], "/tmp/evil.so": "0" * 64})
        (art / "manifest.json").write_text(json.dumps(edited))
        expect_refusal(attempt(art), ["'/tmp/evil.so'", "is absolute"], "absolute member name")

        art = fresh_copy("unlisted")
        edited = dict(manifest, files={k: v for k, v in manifest["files"].items() if k != "model.so"})
        (art / "manifest.json").write_text(json.dumps(edited))
        expect_refusal(attempt(art), ["does not list 'model.so'"], "library not among the hashed files")

        art = fresh_copy("version")
        (art / "manifest.json").write_text(json.dumps(dict(manifest, version=99)))
        expect_refusal(attempt(art), ["not a bitsmith artifact of version 1"], "unknown format version")


def bad_input(args) -> None:
    case = CaseData(args.artifacts, args.case)
    (name, good), = case.input_files(0).items()  # a single-input case
    spec = json.loads((case.artifact / "manifest.json").read_text())["inputs"][0]
    want = f"{spec['dtype']}[{','.join(map(str, spec['shape']))}]"
    array = np.load(good)
    with tempfile.TemporaryDirectory(prefix="bsm-badinput-") as tmp:
        wrong_shape = np.zeros(array.shape[:-1] + (array.shape[-1] + 1,), array.dtype)
        path = Path(tmp) / "wrong_shape.npy"
        np.save(path, wrong_shape)
        got = f"{wrong_shape.dtype}[{','.join(map(str, wrong_shape.shape))}]"
        result = run(runner_cmd(args.runner, case.artifact, {name: path}, {}))
        expect_refusal(result, [f"input '{name}' must be {want}, got {got}", str(path)], "wrong input shape")

        path = Path(tmp) / "wrong_dtype.npy"
        np.save(path, array.astype(np.float64))
        result = run(runner_cmd(args.runner, case.artifact, {name: path}, {}))
        expect_refusal(result, [f"input '{name}' must be {want}, got float64["], "wrong input dtype")

        path = Path(tmp) / "garbage.npy"
        path.write_bytes(b"not an npy file at all")
        result = run(runner_cmd(args.runner, case.artifact, {name: path}, {}))
        expect_refusal(result, [f"{path} is not a valid .npy file"], "not an .npy file")

        result = run([args.runner, case.artifact])
        expect_refusal(result, ["the model takes 1 input (", f"'{name}' {want}"], "missing input", exit_code=2)
        result = run([args.runner, case.artifact, "--input", good, "--input", good])
        expect_refusal(result, ["too many --input files"], "too many inputs", exit_code=2)


def usage(args) -> None:
    result = run([args.runner, "--help"])
    check(result.returncode == 0 and "usage: bitsmith-run" in result.stdout, "--help must print the usage")
    expect_refusal(run([args.runner]), ["no ARTIFACT directory given"], "no arguments", exit_code=2)
    expect_refusal(run([args.runner, "x", "--bench", "zero"]), ["--bench needs an integer >= 1"], "bad --bench", exit_code=2)
    expect_refusal(run([args.runner, "x", "--frobnicate"]), ["unknown option --frobnicate"], "unknown option", exit_code=2)
    expect_refusal(run([args.runner, "/nonexistent/art"]), ["/nonexistent/art is not an artifact directory"],
                   "missing artifact")


def classify(args) -> None:
    case = CaseData(args.artifacts, args.case)
    for k in case.samples:
        (image,) = case.input_files(k).values()
        result = run([args.classify, case.artifact, image])
        check(result.returncode == 0, f"classify failed: {result.stderr.strip()}")
        lines = result.stdout.strip().splitlines()[1:]
        got = [int(line.split()[1]) for line in lines]
        (logits,) = case.expected(k).values()
        flat = logits.reshape(-1)
        want = sorted(range(flat.size), key=lambda i: (-flat[i], i))[:5]
        check(got == want, f"sample {k}: classify's top-5 {got} != Python's {want}")
        print(f"ok: sample {k}: top-5 {got}")


def consumer(args) -> None:
    """Configure, build and run runtime/examples as a separate project using find_package."""
    case = CaseData(args.artifacts, args.case)
    source = args.prefix / "share" / "bitsmith_runtime" / "examples"
    shutil.rmtree(args.work, ignore_errors=True)
    configure = run([args.cmake, "-S", source, "-B", args.work, f"-DCMAKE_PREFIX_PATH={args.prefix}",
                     "-DCMAKE_BUILD_TYPE=Release"])
    check(configure.returncode == 0, f"configuring against the installed package failed:\n{configure.stdout}{configure.stderr}")
    build = run([args.cmake, "--build", args.work, "-j2"])
    check(build.returncode == 0, f"building the consumer failed:\n{build.stdout}{build.stderr}")
    (image,) = case.input_files(0).values()
    result = run([args.work / "classify", case.artifact, image, "--output", case.info["outputs"][-1], "--top", "1"])
    check(result.returncode == 0, f"the consumer's classify failed: {result.stderr.strip()}")
    flat = case.expected(0)[case.info["outputs"][-1]].reshape(-1)
    top = int(result.stdout.strip().splitlines()[1].split()[1])
    check(top == int(np.argmax(flat)), f"consumer classify top-1 {top} != Python's {int(np.argmax(flat))}")
    print(f"ok: find_package(bitsmith_runtime) consumer built and ran (top-1 {top})")


SYSTEM_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/usr/local/lib/")


def loaded_libraries(ld_debug_output: str) -> list[str]:
    """Paths of the shared objects the dynamic loader initialised (from LD_DEBUG=libs)."""
    return sorted(set(re.findall(r"calling init: (\S+)", ld_debug_output)))


def isolated(args) -> None:
    """Copy the installed runner, the two TVM libraries and each artifact into an empty directory
    and run them with an empty environment: no Python, no venv, nothing on any search path."""
    with tempfile.TemporaryDirectory(prefix="bsm-isolated-") as tmp:
        box = Path(tmp)
        shutil.copy2(args.prefix / "bin" / "bitsmith-run", box)
        for lib in TVM_LIBS:
            shutil.copy2(args.prefix / "lib" / lib, box)
        for name in args.cases:
            case = CaseData(args.artifacts, name)
            shutil.copytree(case.artifact, box / name)
            shutil.copytree(case.dir / "inputs", box / f"{name}-inputs")
        print("isolated directory holds:", sorted(p.name for p in box.iterdir()))
        for name in args.cases:
            case = CaseData(args.artifacts, name)
            for k in case.samples:
                out = box / f"{name}-out{k}"
                out.mkdir()
                inputs = {n: f"{name}-inputs/{k}/{n}.npy" for n in case.info["inputs"]}
                outputs = {n: f"{out.name}/{n}.npy" for n in case.info["outputs"]}
                cmd = ["env", "-i"] + runner_cmd("./bitsmith-run", name, inputs, outputs)
                result = run(cmd, cwd=box)
                check(result.returncode == 0, f"{name} sample {k} under env -i failed: {result.stderr.strip()}")
                compare(case.expected(k), out, f"{name} sample {k} (isolated)")
            print(f"ok: {name}: isolated runner matches Python on {len(case.samples)} samples")
        # Which libraries did the loader actually use? Only ours beside the binary, and the system's.
        name = args.cases[0]
        case = CaseData(args.artifacts, name)
        inputs = {n: f"{name}-inputs/0/{n}.npy" for n in case.info["inputs"]}
        result = run(["env", "-i", "LD_DEBUG=libs"] + runner_cmd("./bitsmith-run", name, inputs, {}), cwd=box)
        check(result.returncode == 0, f"LD_DEBUG run failed: {result.stderr[-2000:]}")
        libraries = loaded_libraries(result.stderr)
        check(libraries, "LD_DEBUG=libs reported no libraries")
        real_box = os.path.realpath(box) + "/"
        inside = {lib for lib in libraries if os.path.realpath(os.path.join(box, lib)).startswith(real_box)}
        foreign = [lib for lib in libraries if lib not in inside and not lib.startswith(SYSTEM_DIRS)]
        check(not foreign, f"the isolated runner loaded libraries from outside its directory: {foreign}")
        for lib in TVM_LIBS + ("model.so",):
            check(any(os.path.basename(p) == lib for p in inside),
                  f"{lib} was not loaded from the isolated directory: {libraries}")
        print("ok: the loader used only", sorted(os.path.relpath(os.path.join(box, p), box) if p in inside else p
                                               for p in libraries))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, required=True, help="make_artifacts.py's output directory")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("parity", parity), ("tampered", tampered), ("bad-input", bad_input)):
        p = sub.add_parser(name)
        p.add_argument("--runner", type=Path, required=True)
        p.add_argument("--case", required=True)
        p.set_defaults(func=func)
    p = sub.add_parser("usage")
    p.add_argument("--runner", type=Path, required=True)
    p.set_defaults(func=usage)
    p = sub.add_parser("classify")
    p.add_argument("--classify", type=Path, required=True)
    p.add_argument("--case", required=True)
    p.set_defaults(func=classify)
    p = sub.add_parser("consumer")
    for flag in ("--prefix", "--cmake", "--work"):
        p.add_argument(flag, type=Path, required=True)
    p.add_argument("--case", required=True)
    p.set_defaults(func=consumer)
    p = sub.add_parser("isolated")
    p.add_argument("--prefix", type=Path, required=True)
    p.add_argument("cases", nargs="+")
    p.set_defaults(func=isolated)
    args = parser.parse_args()
    try:
        args.func(args)
    except CheckFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
