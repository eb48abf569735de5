"""Create the artifacts, inputs and Python reference outputs the runtime's end-to-end tests use.

    make_artifacts.py --out DIR CASE [CASE ...]

For each case this writes DIR/<case>/:

    artifact/               bitsmith.compile(...) of the zoo model, for the host
    inputs/<k>/<name>.npy   real inputs: sample k of bitsmith.zoo.inputs(model, SAMPLES, split="eval")
    expected/<k>/<name>.npy bitsmith.Artifact.run on those inputs (the outputs C++ must equal bit for bit)
    case.json               the case, its input/output names, sample count and cache key

A case is rebuilt only when its cache key changes: a digest of the case definition, every Python
source of the bitsmith package and the installed tvm / tvm_ffi versions. With the key unchanged this
script returns at once without importing bitsmith (so ctest reruns are quick).

To test another configuration (e.g. a W8A8 artifact once the compiler produces them), add a Case
to CASES with its compile options and name it in BITSMITH_RUNTIME_TEST_CASES (runtime/tests/CMakeLists.txt).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("compiler", "frontends", "passes", "backends")  # the folders of import package bitsmith
SAMPLES = 3


@dataclass(frozen=True)
class Case:
    model: str                                              # a bitsmith.zoo model
    compile_options: dict[str, Any] = field(default_factory=dict)  # extra bitsmith.compile keywords
    calibration_batches: int = 0                            # real calibration inputs (quantized cases)


CASES: dict[str, Case] = {
    "mtcnn_rnet-fp32": Case("mtcnn_rnet"),
    "mobilenet_v2-fp32": Case("mobilenet_v2"),
    "minilm_l6-fp32": Case("minilm_l6"),
    "magika-fp32": Case("magika"),
    "mobilenet_v2-w8a8": Case("mobilenet_v2", {"recipe": "w8a8"}, calibration_batches=4),
    "minilm_l6-w8a8": Case("minilm_l6", {"recipe": "w8a8"}, calibration_batches=4),
    # packed low-precision weights (uint8 parameters) decoded by main_transform_params at load
    "mtcnn_rnet-w4a8": Case("mtcnn_rnet", {"recipe": "w4a8"}, calibration_batches=2),
    "mtcnn_rnet-nvfp4_weights": Case("mtcnn_rnet", {"recipe": "nvfp4_weights"}),
    "mtcnn_rnet-fp8_e4m3": Case("mtcnn_rnet", {"recipe": "fp8_e4m3"}, calibration_batches=2),
}


def cache_key(name: str, case: Case) -> str:
    digest = hashlib.sha256(json.dumps({"name": name, "case": asdict(case), "samples": SAMPLES}, sort_keys=True).encode())
    for package in ("apache-tvm", "apache-tvm-ffi"):
        digest.update(f"{package}={metadata.version(package)}".encode())
    for folder in PACKAGE_DIRS:
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".json"):
                digest.update(path.relative_to(REPO).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def is_current(case_dir: Path, key: str) -> bool:
    try:
        return json.loads((case_dir / "case.json").read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


def save(folder: Path, arrays: dict[str, Any]) -> None:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def build(name: str, case: Case, case_dir: Path, key: str) -> None:
    import bitsmith
    from bitsmith import zoo

    tmp = case_dir.with_name(case_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    options = dict(case.compile_options)
    if case.calibration_batches:
        options["calibration"] = zoo.inputs(case.model, case.calibration_batches, split="calib")
    artifact = bitsmith.compile(zoo.onnx_path(case.model), "host", input_shapes=zoo.input_shapes(case.model),
                                output_dir=tmp / "artifact", quiet=True, **options)
    feeds = zoo.inputs(case.model, SAMPLES, split="eval")
    for k, feed in enumerate(feeds):
        save(tmp / "inputs" / str(k), feed)
        save(tmp / "expected" / str(k), artifact.run(feed))
    description = {"case": name, "model": case.model, "compile_options": case.compile_options, "samples": len(feeds),
                   "inputs": [s.name for s in artifact.inputs], "outputs": [s.name for s in artifact.outputs], "key": key}
    (tmp / "case.json").write_text(json.dumps(description, indent=1))
    shutil.rmtree(case_dir, ignore_errors=True)
    tmp.rename(case_dir)  # complete or absent: an interrupted run never leaves a half case behind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to hold one folder per case")
    parser.add_argument("cases", nargs="+", help=f"cases to make; known: {', '.join(CASES)}")
    args = parser.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        print(f"make_artifacts: unknown case(s) {unknown}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        case_dir, key = args.out / name, cache_key(name, CASES[name])
        if is_current(case_dir, key):
            print(f"{name}: up to date")
            continue
        start = time.perf_counter()
        build(name, CASES[name], case_dir, key)
        print(f"{name}: built in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
