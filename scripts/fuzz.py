"""Mutation fuzzing of the ONNX import and compile pipeline on the real zoo models (bitsmith.fuzz).

Runs cases 0 .. N-1 of campaign SEED in a worker process (a native abort or a hang ends one case, not
the run), compiles a share of the mutants that import, and writes docs/results/fuzz.json and .md:
the case count, outcome counts (ok / rejected / crash / hang), bitsmith's errors by class, every crash
and hang with its mutations, the slowest cases, the run time and the load average.

    .venv/bin/python scripts/fuzz.py --cases 10000 [--seed 0] [--compile-share 0.05]
    .venv/bin/python scripts/fuzz.py --replay 1234            # rerun one case here, with its traceback
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from bitsmith import fuzz
from bitsmith.pipeline import versions

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def campaign_json(campaign: fuzz.Campaign, started: str, load: tuple[float, float, float]) -> dict:
    return {
        "what": "mutation fuzzing of ONNX import (and compile for a share) on real zoo models",
        "seed": campaign.seed,
        "cases": campaign.cases,
        "compile_share": campaign.compile_share,
        "seed_models": fuzz.SEED_MODELS,
        "compiled_models": list(fuzz.COMPILED_MODELS),
        "time_limits_s": {"import": fuzz.IMPORT_LIMIT_S, "compile": fuzz.COMPILE_LIMIT_S},
        "counts": campaign.counts,
        "crashes": campaign.crashes,
        "hangs": campaign.hangs,
        "compiled": campaign.compiled,
        "rejections_by_error": dict(sorted(campaign.errors.items())),
        "converter_failures": campaign.converter_failures,
        "failures": campaign.failures,
        "unexplained_converter_failures": campaign.unexplained[:20],
        "slowest": campaign.slowest,
        "seconds": campaign.seconds,
        "started": started,
        "load_average_before": list(load),
        "load_average_after": list(os.getloadavg()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "versions": versions(),
        "command": " ".join(["scripts/fuzz.py", *sys.argv[1:]]),
    }


def markdown(data: dict) -> str:
    counts = data["counts"]
    lines = [
        "# Fuzzing: mutated zoo ONNX files through import and compile",
        "",
        f"`{data['command']}` — seed {data['seed']}, {data['cases']:,} cases in {data['seconds']:,.0f} s "
        f"(load average {data['load_average_before'][0]:.1f} before, {data['load_average_after'][0]:.1f} after, "
        f"{data['machine']['cores']} cores).",
        "",
        "Each case is one real zoo model (or bitsmith's W8A8 QDQ export of RNet) with one to three mutations "
        "(byte flips, truncation, splices; op types, attributes, initializer shapes/dtypes/values, graph "
        "inputs, rewired or reordered nodes, opsets, domains, graph outputs), imported in a worker process "
        f"with a time limit; {data['compile_share']:.0%} of the mutants of {', '.join(data['compiled_models'])} "
        "that import are compiled as well. A crash is anything but a bitsmith error (or an IRError, a bug), "
        "a compile that fails and leaves files, or the worker dying.",
        "",
        "| outcome | cases |",
        "|---|---:|",
        *(f"| {kind} | {counts.get(kind, 0):,} |" for kind in ("ok", "rejected", "crash", "hang")),
        f"| compiled | {data['compiled']:,} |",
        "",
        f"**Crashes: {data['crashes']}. Hangs: {data['hangs']}.**",
        "",
        "Rejections by error class: " + ", ".join(f"{k} {v:,}" for k, v in data["rejections_by_error"].items()) + ".",
        "",
        f"Converter failures turned into a ModelError naming the node: {data['converter_failures'].get('onnx', 0)} "
        f"explained by ONNX's strict shape inference, {data['converter_failures'].get('unexplained', 0)} explained "
        "only by the converter's own error.",
        "",
    ]
    if data["failures"]:
        lines += ["## Crashes and hangs", "", "| case | model | mutations | outcome | error |", "|---:|---|---|---|---|"]
        lines += [f"| {f['index']} | {f['model']} | {'; '.join(f['mutations'])} | {f['kind']} | "
                  f"{f['error']}: {f['message'][:120]} |" for f in data["failures"]]
        lines.append("")
    lines += ["## Slowest cases", "", "| case | model | seconds | outcome | compiled |", "|---:|---|---:|---|---|"]
    lines += [f"| {r['index']} | {r['model']} | {r['seconds']:.1f} | {r['kind']} | {r['compiled']} |"
              for r in data["slowest"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile-share", type=float, default=0.05,
                        help="share of the compiled models' mutants that are compiled too (default 0.05)")
    parser.add_argument("--replay", type=int, metavar="INDEX", help="rerun one case in this process and stop")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    if args.replay is not None:
        outcome = fuzz.replay(args.seed, args.replay, args.compile_share)
        print(json.dumps({k: v for k, v in asdict(outcome).items() if k != "detail"}, indent=1))
        return 1 if outcome.kind in ("crash", "hang") else 0

    load = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    bar = tqdm(total=args.cases, unit="case")

    def progress(_index: int, campaign: fuzz.Campaign) -> None:
        bar.update(1)
        bar.set_postfix(crash=campaign.crashes, hang=campaign.hangs, compiled=campaign.compiled)

    campaign = fuzz.fuzz(args.cases, args.seed, compile_share=args.compile_share, progress=progress)
    bar.close()
    data = campaign_json(campaign, started, load)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "fuzz.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.output / "fuzz.md").write_text(markdown(data))
    print(f"{campaign.cases} cases: {campaign.counts}; crashes {campaign.crashes}, hangs {campaign.hangs}; "
          f"{campaign.seconds:.0f} s")
    return 1 if campaign.crashes or campaign.hangs else 0


if __name__ == "__main__":
    sys.exit(main())
