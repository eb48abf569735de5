"""Evidence for optional tuning (`bitsmith compile --tune N`, backends/tuning.py) on the host CPU.

For each case (default: MobileNetV2 batch 1 and MiniLM-L6 sequence 128 batch 1, both W8A8, calibrated
on the zoo's calibration split) the script
1. compiles with the templates alone (compile time);
2. compiles with `tune=N` into a fresh tuning database: compile time, MetaSchedule's search time, trials,
   tunable kernels, kernels tuned, kernels given a tuned schedule and kernels whose tuned schedule
   failed the reference check;
3. compiles again with the same database: the second compile must tune nothing (no trials, no tuning
   time) and pick the same schedules;
4. checks that the tuned artifact's outputs equal the untuned one's bit for bit on evaluation inputs;
5. times, alternating run by run (bitsmith.measure.time_alternating), the untuned and tuned artifacts
   and ONNX Runtime FP32 and INT8 (quantize_static QDQ, as scripts/x86_speed.py makes it), every
   contender on every CPU this process may use, ORT without spin-waiting; medians and ratios.

Writes docs/results/x86_tuning.json and .md. Re-run: `.venv/bin/python scripts/x86_tuning.py`
(about 20-30 min on 2 cores, mostly tuning; `--cases mobilenet_v2-b1`, `--trials N`, `--repeat N`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from x86_speed import CALIBRATION_FEEDS, Case, cpu_name, ort_int8_model  # noqa: E402  (a sibling script)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
RECIPE = "w8a8"
CASES = [Case("mobilenet_v2", 1), Case("minilm_l6", 1)]
# Enough trials for every candidate of every kernel of these models (MobileNetV2 W8A8: ~400).
DEFAULT_TRIALS = 2000
FIDELITY_FEEDS = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=[c.name for c in CASES])
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="the --tune budget of the first compile")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs of each contender after warm-up")
    return parser.parse_args()


def compile_three_ways(case: Case, trials: int, workdir: Path) -> dict:
    """Untuned, tuned into a fresh database, and tuned again from it: artifacts, times, summaries."""
    from bitsmith import zoo
    from bitsmith.pipeline import compile_traced

    shapes = zoo.input_shapes(case.model, batch=case.batch)
    calibration = zoo.inputs(case.model, CALIBRATION_FEEDS, batch=case.batch, split="calib")
    database = workdir / f"{case.name}-tuning-db"
    record: dict = {"case": case.name, "model": case.model, "batch": case.batch, "recipe": RECIPE,
                    "input_shapes": shapes, "trials_allowed": trials}
    for step, tune in (("untuned", None), ("tuned", trials), ("second", trials)):
        start = time.perf_counter()
        compiled = compile_traced(zoo.onnx_path(case.model), "host", recipe=RECIPE, calibration=calibration,
                                  input_shapes=shapes, output_dir=workdir / f"{case.name}-{step}", quiet=True,
                                  tune=tune, tuning_database=database if tune is not None else None)
        record[f"{step}_compile_s"] = round(time.perf_counter() - start, 1)
        record[f"{step}_artifact"] = str(workdir / f"{case.name}-{step}")
        if compiled.tuning is not None:
            record[f"{step}_tuning"] = {k: v for k, v in compiled.tuning.to_json().items() if k != "database"}
        print(f"{case.name}: {step} compile {record[f'{step}_compile_s']} s "
              f"{record.get(f'{step}_tuning', {})}", flush=True)
    batch1 = zoo.inputs(case.model, CALIBRATION_FEEDS, batch=1, split="calib")
    record["ort_int8_model"] = str(ort_int8_model(case, batch1, workdir))
    return record


def equal_outputs(record: dict) -> dict:
    """Whether the tuned artifact's outputs equal the untuned one's, bit for bit, on evaluation inputs."""
    import bitsmith
    from bitsmith import zoo

    feeds = zoo.inputs(record["model"], FIDELITY_FEEDS, batch=record["batch"], split="eval")
    untuned, tuned = (bitsmith.Artifact.load(record[f"{step}_artifact"]) for step in ("untuned", "tuned"))
    differing = 0
    for feed in feeds:
        want, got = untuned.run(feed), tuned.run(feed)
        differing += sum(int(np.sum(want[name] != got[name])) for name in want)
    return {"feeds": len(feeds), "differing_elements": differing, "bit_exact": differing == 0}


def time_contenders(record: dict, repeat: int) -> dict:
    """Medians of the untuned and tuned artifacts and ONNX Runtime FP32 / INT8, alternating run by run."""
    import bitsmith
    from bitsmith import zoo
    from bitsmith.measure import median, ort_session, time_alternating

    feed = zoo.inputs(record["model"], 1, batch=record["batch"], split="eval")[0]
    contenders = {}
    threads = None
    for step in ("untuned", "tuned"):
        artifact = bitsmith.Artifact.load(record[f"{step}_artifact"])
        runner = artifact._runner
        threads = runner.threads
        args = runner.prepare(artifact._ordered_inputs(feed), artifact._params)
        contenders[f"bitsmith_{step}"] = (lambda main, args: lambda: main(*args))(runner._main, args)
    for kind, path in (("fp32", zoo.onnx_path(record["model"])), ("int8", record["ort_int8_model"])):
        session = ort_session(path, threads=threads, spin=False)
        names = [o.name for o in session.get_outputs()]
        contenders[f"ort_{kind}"] = (lambda s, n: lambda: s.run(n, feed))(session, names)
    load_before = os.getloadavg()[0]
    times = time_alternating(contenders, repeat=repeat, warmup=3)
    result: dict = {"threads": threads}
    result.update({f"{name}_ms": round(median(values), 3) for name, values in times.items()})
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["ratios"] = {
        "tuned_vs_untuned": round(result["bitsmith_tuned_ms"] / result["bitsmith_untuned_ms"], 3),
        "tuned_vs_ort_fp32": round(result["bitsmith_tuned_ms"] / result["ort_fp32_ms"], 3),
        "tuned_vs_ort_int8": round(result["bitsmith_tuned_ms"] / result["ort_int8_ms"], 3),
        "untuned_vs_ort_fp32": round(result["bitsmith_untuned_ms"] / result["ort_fp32_ms"], 3),
        "untuned_vs_ort_int8": round(result["bitsmith_untuned_ms"] / result["ort_int8_ms"], 3)}
    return result


def render(doc: dict) -> str:
    lines = ["# x86 tuning: `bitsmith compile --tune N` against the templates alone and ONNX Runtime", "",
             "Written by `scripts/x86_tuning.py` (re-run it to regenerate). Host target "
             f"`{doc['target']}`, {doc['cpu']}; ONNX Runtime {doc['onnxruntime']}. bitsmith W8A8 "
             "(`recipe=\"w8a8\"`), untuned (default schedules) and tuned (MetaSchedule times every tiling "
             "candidate of every convolution / matmul / pooling kernel; checked against the unscheduled kernel "
             "before use). Median ms of "
             f"{doc['repeat']} alternating runs after 3 warm-up runs, one real evaluation input, the same "
             "thread count for every contender.", "",
             "## Tuning and the second compile", "",
             "| case | kernels | trials | tuning s | tuned kernels used | rejected by the check | compile s: untuned / "
             "tuned / second | second compile: trials, tuning s, from database | outputs tuned = untuned |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case in doc["cases"]:
        first, second = case["tuned_tuning"], case["second_tuning"]
        lines.append(
            f"| {case['case']} | {first['kernels']} | {first['trials']} | {first['tuning_seconds']:.0f} | "
            f"{len(first['replaced'])} | {len(first['rejected'])} | {case['untuned_compile_s']} / "
            f"{case['tuned_compile_s']} / {case['second_compile_s']} | {second['trials']}, "
            f"{second['tuning_seconds']:.0f}, {second['from_database']} of {second['kernels']} | "
            f"{'bit-exact' if case['outputs']['bit_exact'] else str(case['outputs']['differing_elements']) + ' differ'} "
            f"({case['outputs']['feeds']} inputs) |")
    lines += ["", "## Speed", "",
              "| case | threads | untuned ms | tuned ms | ORT FP32 ms | ORT INT8 ms | tuned / untuned | "
              "tuned / ORT FP32 | tuned / ORT INT8 | untuned / ORT FP32 | untuned / ORT INT8 | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in doc["cases"]:
        t, r = case["timing"], case["timing"]["ratios"]
        lines.append(f"| {case['case']} | {t['threads']} | {t['bitsmith_untuned_ms']:.2f} | {t['bitsmith_tuned_ms']:.2f} | "
                     f"{t['ort_fp32_ms']:.2f} | {t['ort_int8_ms']:.2f} | {r['tuned_vs_untuned']:.2f} | "
                     f"{r['tuned_vs_ort_fp32']:.2f} | {r['tuned_vs_ort_int8']:.2f} | {r['untuned_vs_ort_fp32']:.2f} | "
                     f"{r['untuned_vs_ort_int8']:.2f} | {t['load_average']} |")
    lines += ["", "Compile times include calibration and quantization; the tuned compile's includes the search. "
              "The host is shared: load average (1 min, before / after) beside each row, "
              f"{doc['load_average']} at start / end.", ""]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    import onnxruntime

    import bitsmith
    from bitsmith.measure import write_results
    from bitsmith.targets import load

    selected = [c for c in CASES if c.name in args.cases]
    load_start = os.getloadavg()[0]
    cases = []
    with tempfile.TemporaryDirectory(prefix="bitsmith-x86-tuning-") as tmp:
        for case in selected:
            record = compile_three_ways(case, args.trials, Path(tmp))
            record["outputs"] = equal_outputs(record)
            record["timing"] = time_contenders(record, args.repeat)
            print(f"{case.name}: {record['outputs']} {record['timing']}", flush=True)
            cases.append({k: v for k, v in record.items() if not k.endswith(("_artifact", "_model"))})
    doc = {"target": load("host").name, "cpu": cpu_name(), "cpu_count": len(os.sched_getaffinity(0)),
           "onnxruntime": onnxruntime.__version__, "bitsmith_version": bitsmith.__version__,
           "repeat": args.repeat, "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
           "cases": cases}
    write_results(RESULTS, "x86_tuning", doc, render(doc))
    print(render(doc))


if __name__ == "__main__":
    main()
