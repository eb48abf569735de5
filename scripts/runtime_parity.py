"""Evidence for the C++ runtime: same outputs as Python, bit for bit, and how fast each runs.

For every case (by default the artifacts the runtime's ctest uses: FP32 mtcnn_rnet, mobilenet_v2,
minilm_l6, magika and W8A8 mobilenet_v2, minilm_l6) this script
  - makes the artifact and real inputs with runtime/tests/make_artifacts.py (cached),
  - runs build/runtime/bitsmith-run on every sample and compares its outputs byte for byte with
    bitsmith.Artifact.run in this process,
  - times both on the same input and the same TVM thread count (TVM_NUM_THREADS, set for this
    process before TVM starts and passed to the runner as --threads), alternating rounds of the
    C++ runner's --bench and rounds of Artifact.run, and reports medians.

cpp_ms is the runner's own per-run time (bsm_run: the VM call on inputs already set). python_ms is
Artifact.run as a Python user calls it (numpy -> TVM tensors, the call, TVM -> numpy); python_vm_ms
is Artifact.time, the VM call alone, for the like-for-like comparison.

Writes docs/results/runtime_parity.json and .md. Needs the runtime built first:
    cmake -S . -B build && cmake --build build -j2
    .venv/bin/python scripts/runtime_parity.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
MAKE_ARTIFACTS = REPO / "runtime" / "tests" / "make_artifacts.py"
DEFAULT_CASES = ["mtcnn_rnet-fp32", "mobilenet_v2-fp32", "minilm_l6-fp32", "magika-fp32", "mobilenet_v2-w8a8",
                 "minilm_l6-w8a8"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="make_artifacts.py cases")
    parser.add_argument("--runner", type=Path, default=REPO / "build" / "runtime" / "bitsmith-run")
    parser.add_argument("--artifacts", type=Path, default=REPO / "build" / "test_artifacts")
    parser.add_argument("--threads", type=int, default=2, help="TVM worker threads for both (default 2: this machine's cores)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating C++ / Python rounds")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per round and side")
    return parser.parse_args()


ARGS = parse_args()
os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)  # before TVM's thread pool exists (first import below)

import numpy as np  # noqa: E402

import bitsmith  # noqa: E402
from bitsmith.measure import median, write_results  # noqa: E402


def load_case(case_dir: Path) -> tuple[dict, list[dict[str, Path]]]:
    info = json.loads((case_dir / "case.json").read_text())
    samples = [{name: case_dir / "inputs" / str(k) / f"{name}.npy" for name in info["inputs"]}
               for k in range(info["samples"])]
    return info, samples


def runner_cmd(artifact: Path, inputs: dict[str, Path], *extra: str) -> list[str]:
    cmd = [str(ARGS.runner), str(artifact), "--quiet", "--threads", str(ARGS.threads), *extra]
    for name, path in inputs.items():
        cmd += ["--input", f"{name}={path}"]
    return cmd


def check_runner(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bitsmith-run failed ({' '.join(cmd)}):\n{result.stderr}")


def bit_exact(artifact: bitsmith.Artifact, samples: list[dict[str, Path]], workdir: Path) -> bool:
    same = True
    for k, files in enumerate(samples):
        python = artifact.run({name: np.load(path, allow_pickle=False) for name, path in files.items()})
        outputs = {name: workdir / f"{k}-{name}.npy" for name in python}
        check_runner(runner_cmd(artifact.path, files, *[a for n, p in outputs.items() for a in ("--output", f"{n}={p}")]))
        for name, want in python.items():
            got = np.load(outputs[name], allow_pickle=False)
            same &= got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
    return bool(same)


def cpp_round(artifact: Path, files: dict[str, Path], workdir: Path) -> list[float]:
    report = workdir / "bench.json"
    # A fresh process each round: more warm-up than the long-lived Python side needs (caches, thread pool).
    check_runner(runner_cmd(artifact, files, "--bench", str(ARGS.runs), "--warmup", "10", "--bench-json", str(report)))
    return json.loads(report.read_text())["ms"]


def python_round(artifact: bitsmith.Artifact, feed: dict[str, np.ndarray]) -> list[float]:
    for _ in range(3):
        artifact.run(feed)
    times = []
    for _ in range(ARGS.runs):
        start = time.perf_counter()
        artifact.run(feed)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def measure(case: str, workdir: Path) -> dict:
    case_dir = ARGS.artifacts / case
    info, samples = load_case(case_dir)
    artifact = bitsmith.Artifact.load(case_dir / "artifact")
    exact = bit_exact(artifact, samples, workdir)
    feed = {name: np.load(path, allow_pickle=False) for name, path in samples[0].items()}
    cpp: list[float] = []
    python: list[float] = []
    python_vm: list[float] = []
    for _ in range(ARGS.rounds):  # alternate, so that drift on a shared machine hits both sides alike
        cpp += cpp_round(artifact.path, samples[0], workdir)
        python += python_round(artifact, feed)
        python_vm += artifact.time(feed, repeat=ARGS.runs, warmup=3)
    result = {"model": info["model"], "case": case, "samples": len(samples), "bit_exact": exact,
              "cpp_ms": median(cpp), "python_ms": median(python), "python_vm_ms": median(python_vm),
              "cpp_min_ms": min(cpp), "python_min_ms": min(python), "python_vm_min_ms": min(python_vm)}
    result["python_over_cpp"] = result["python_ms"] / result["cpp_ms"]
    print(f"{case}: bit_exact={exact} cpp {result['cpp_ms']:.3f} ms, python {result['python_ms']:.3f} ms "
          f"(VM call alone {result['python_vm_ms']:.3f} ms)", flush=True)
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical CPUs"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(doc: dict) -> str:
    lines = [
        "# C++ runtime vs Python: outputs and latency",
        "",
        f"`bitsmith-run` (C++, no Python) against `bitsmith.Artifact.run` on the same artifacts (FP32 and W8A8) and real "
        f"inputs ({doc['samples']} samples per model for exactness), TVM_NUM_THREADS={doc['threads']} for both, "
        f"{doc['rounds']} alternating rounds of {doc['runs']} runs per side (medians). CPU: {doc['cpu']}; "
        f"1-minute load average {doc['load_average'][0]} before, {doc['load_average'][1]} after. "
        "Written by `scripts/runtime_parity.py`.",
        "",
        "| model | bit-exact | C++ ms | Python ms (Artifact.run) | Python ms (VM call only) | Python / C++ | min ms: C++ / Artifact.run / VM call |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in doc["models"].items():
        lines.append(f"| {name} | {'yes' if r['bit_exact'] else '**no**'} | {r['cpp_ms']:.3f} | {r['python_ms']:.3f} | "
                     f"{r['python_vm_ms']:.3f} | {r['python_over_cpp']:.2f} | "
                     f"{r['cpp_min_ms']:.3f} / {r['python_min_ms']:.3f} / {r['python_vm_min_ms']:.3f} |")
    lines += ["",
              "C++ ms is the runner's time per `bsm_run` (inputs already set; outputs left in place). Artifact.run "
              "also converts numpy inputs to TVM tensors and outputs back; the VM-call-only column removes that, "
              "so it and C++ should agree: both execute the same compiled library in the same TVM runtime. "
              "This machine is shared (2 cores, other jobs running), so medians move between runs; the minima "
              "show the uncontended cost.",
              ""]
    return "\n".join(lines)


def main() -> None:
    if not ARGS.runner.is_file():
        raise SystemExit(f"{ARGS.runner} does not exist: build it first (cmake -S . -B build && cmake --build build -j2)")
    load_before = os.getloadavg()[0]
    subprocess.run([sys.executable, str(MAKE_ARTIFACTS), "--out", str(ARGS.artifacts), *ARGS.cases], check=True)
    with tempfile.TemporaryDirectory(prefix="bsm-parity-") as tmp:
        models = {}
        for case in ARGS.cases:
            work = Path(tmp) / case
            work.mkdir()
            result = measure(case, work)
            models[case] = result
    doc = {"threads": ARGS.threads, "rounds": ARGS.rounds, "runs": ARGS.runs, "samples": min(m["samples"] for m in models.values()),
           "cpu": cpu_name(),
           "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)], "bitsmith_version": bitsmith.__version__, "models": models}
    write_results(RESULTS, "runtime_parity", doc, render(doc))
    print(render(doc))


if __name__ == "__main__":
    main()
