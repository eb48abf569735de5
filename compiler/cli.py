"""The `bitsmith` command line: compile, bench, inspect, targets.

Exit codes are those of bitsmith.errors (0 success, 2 usage, 3 model, 4 unsupported, 5 data,
6 budget, 7 artifact, 8 build, 9 output, 10 gate failed); errors print one line to stderr.
`--fail-if "NAME>NUMBER"` (compile, bench; repeatable) exits 10 with the reason on stderr when a
measured quantity trips it (bitsmith.gates). `--quiet` silences progress bars and notes; `-v` logs
each pipeline step (the logging module, logger "bitsmith").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import targets
from .artifact import Artifact
from .errors import BitsmithError, UsageError
from .feeds import load_feeds
from .gates import GATE_FIELDS, parse_gate


def parse_shape_hint(text: str) -> tuple[str, tuple[int, ...]]:
    """'input=1x3x224x224' -> ('input', (1, 3, 224, 224))."""
    name, sep, dims = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise UsageError(f"--input-shape {text!r} must look like NAME=1x3x224x224") from None


def _shape_hints(items: Sequence[str] | None) -> dict[str, tuple[int, ...]] | None:
    if not items:
        return None
    return dict(parse_shape_hint(item) for item in items)


# -- commands -----------------------------------------------------------------------------------
def cmd_compile(args: argparse.Namespace) -> int:
    from .pipeline import compile_traced

    gates = [parse_gate(text) for text in args.fail_if or []]
    needing_data = [g.expression for g in gates if g.name in DATA_GATES]
    if needing_data and not args.data:
        raise UsageError(f"--fail-if {', '.join(needing_data)} needs evaluation data: give --data FILE.npz")
    hints = _shape_hints(args.input_shape)
    calibration = None
    if args.calibration:
        calibration, hints = load_feeds(args.calibration, args.model, hints=hints)
    compiled = compile_traced(args.model, args.target, input_shapes=hints, output_dir=args.output,
                              quiet=args.quiet, recipe=args.recipe, calibration=calibration, tune=args.tune,
                              tuning_database=args.tuning_db)
    artifact = compiled.artifact
    if not args.quiet:
        print(f"wrote {artifact.path} ({artifact.size_bytes() / 1e6:.2f} MB, target {artifact.target})")
        if compiled.tuning is not None:
            print(_tuning_line(compiled.tuning))
    if gates or args.report:
        from .bench import BenchSettings, measure, subject_from_compile

        data = _eval_feeds(args.data, artifact) if args.data else None
        feeds = data or [{s.name: np.zeros(s.shape, s.dtype) for s in artifact.inputs}]
        settings = BenchSettings(repeat=args.repeat, warmup=3, profile_runs=0, baselines=False, memory=False,
                                 sqnr_feeds=8 if data else 0, quiet=args.quiet)
        report = measure(subject_from_compile(compiled, artifact_target(artifact), args.model), feeds, calibration,
                         None, settings)
        if not data:
            report.data["accuracy"] = {"status": "not computed: no evaluation data (--data)", "metric": None,
                                       "value": None, "fp32": None, "drop": None}
        _apply_gates([report], gates, args.report, args.quiet)
    return 0


DATA_GATES = ("metric_drop", "metric", "min_sqnr_db")


def _tuning_line(summary: Any) -> str:
    rejected = f", {len(summary.rejected)} rejected by the reference check" if summary.rejected else ""
    return (f"tuning: {summary.kernels} tunable kernels, {summary.from_database} from the database, "
            f"{summary.tuned} tuned now ({summary.trials} trials, {summary.tuning_seconds:.0f} s); "
            f"{len(summary.replaced)} use a tuned schedule{rejected} [{summary.database}]")


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchSettings, bench

    gates = [parse_gate(text) for text in args.fail_if or []]
    source = Path(args.source)
    is_artifact = source.is_dir()
    hints = _shape_hints(args.input_shape)
    names = [t.strip() for t in args.target.split(",") if t.strip()] if args.target else None
    if is_artifact:
        artifact = Artifact.load(source)
        names = names or [artifact.target]
        data = _eval_feeds(args.data, artifact)
        calibration = _eval_feeds(args.calibration, artifact) if args.calibration else None
        bench_source: Any = artifact
    else:
        names = names or ["host"]
        data, hints = load_feeds(args.data, source, hints=hints)
        calibration = load_feeds(args.calibration, source, hints=hints)[0] if args.calibration else None
        bench_source = source
    settings = BenchSettings(repeat=args.repeat, warmup=args.warmup, latency=args.latency,
                             baselines=not args.no_baselines, memory=not args.no_memory,
                             profile_runs=args.profile_runs, metric=args.metric, quiet=args.quiet)
    reports = bench(bench_source, names, data=data, calibration=calibration, recipe=args.recipe,
                    input_shapes=hints, fp32_model=args.model,
                    output_dir=Path(args.output) / "artifacts" if not is_artifact else None, settings=settings)
    _apply_gates(reports, gates, args.output, args.quiet)
    return 0


def _apply_gates(reports: list[Any], gates: list[Any], output: str | None, quiet: bool) -> None:
    """Evaluate the gates on each report, record them in it, write the reports, then fail if one tripped."""
    from .gates import check, evaluate

    results = []
    for report in reports:
        report.data["gates"] = evaluate(gates, report.gate_values(), report.target)
        results += report.data["gates"]
        if output:
            written = report.save(Path(output) / report.target)
            if not quiet:
                print(f"{report.target}: {_one_line(report)}; wrote {', '.join(str(p) for p in written.values())}")
        elif not quiet:
            print(f"{report.target}: {_one_line(report)}")
    check(results)


def _one_line(report: Any) -> str:
    d = report.data
    lat, acc = d["latency"], d["accuracy"]
    text = f"p50 {lat['p50_ms']:.3f} ms ({lat['source']}), {d['artifact']['size_bytes'] / 1e6:.2f} MB"
    if acc.get("value") is not None:
        text += f", {acc['metric']} {acc['value']:.4f} (drop {100 * acc['drop']:.2f}%)"
    return text


def artifact_target(artifact: Artifact) -> targets.Target:
    return targets.load(artifact.target)


def _eval_feeds(path: str, artifact: Artifact) -> list[dict[str, np.ndarray]]:
    shapes = {s.name: s.shape for s in artifact.inputs}
    dtypes = {s.name: s.dtype for s in artifact.inputs}
    return load_feeds(path, shapes=shapes, dtypes=dtypes)[0]


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.path)
    info = _inspect_artifact(path) if path.is_dir() else _inspect_model(path, _shape_hints(args.input_shape))
    print(json.dumps(info, indent=1) if args.json else _render(info))
    return 0


def _inspect_artifact(path: Path) -> dict[str, Any]:
    from .artifact import read_verified_manifest

    manifest = read_verified_manifest(path)
    return {"kind": "artifact", "path": str(path), "model": manifest["model"]["name"],
            "target": manifest["target"]["name"], "precision": manifest.get("precision"),
            "inputs": manifest["inputs"], "outputs": manifest["outputs"],
            "parameters": manifest["model"]["parameters"], "ops": manifest["model"]["ops"],
            "files": {name: (path / name).stat().st_size for name in manifest["files"]},
            "versions": manifest["versions"], "hashes": "verified"}


def _inspect_model(path: Path, hints: dict[str, tuple[int, ...]] | None) -> dict[str, Any]:
    from .pipeline import load_model

    graph = load_model(path, hints)
    def spec(name: str) -> dict[str, Any]:
        v = graph.values[name]
        return {"name": name, "shape": list(v.shape), "dtype": v.dtype}
    return {"kind": "model", "path": str(path), "model": graph.name, "opset": graph.metadata.get("opset"),
            "inputs": [spec(n) for n in graph.inputs], "outputs": [spec(n) for n in graph.outputs],
            "parameters": graph.parameter_count(), "nodes": len(graph.nodes), "ops": graph.op_counts()}


def _render(info: dict[str, Any]) -> str:
    lines = [f"{info['kind']}: {info['path']}  ({info['model']})"]
    for key in ("target", "precision", "opset", "parameters", "nodes", "hashes"):
        if info.get(key) is not None:
            lines.append(f"  {key}: {info[key]:,}" if isinstance(info[key], int) else f"  {key}: {info[key]}")
    for role in ("inputs", "outputs"):
        for s in info[role]:
            lines.append(f"  {role[:-1]} {s['name']}: {s['dtype']}{s['shape']}")
    lines.append("  ops: " + ", ".join(f"{op} x{n}" for op, n in info["ops"].items()))
    for name, size in info.get("files", {}).items():
        lines.append(f"  file {name}: {size:,} bytes")
    return "\n".join(lines)


def cmd_targets(args: argparse.Namespace) -> int:
    rows = [targets.load(name) for name in targets.available()]
    if args.json:
        print(json.dumps([t.to_json() | {"runs_on_host": t.runs_on_host()} for t in rows], indent=1))
        return 0
    host = targets.resolve_host().name if any(t.runs_on_host() for t in rows) else None
    for t in rows:
        mark = " (host)" if t.name == host else (" [runs here]" if t.runs_on_host() else "")
        native = ", ".join(t.formats.get("native", []))
        print(f"{t.name:14s} {t.family:5s} {t.description}{mark}\n{'':20s}native formats: {native}")
    return 0


# -- entry point --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitsmith", description="Hardware-aware quantization compiler.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each pipeline step")
    parser.add_argument("--quiet", "-q", dest="quiet_all", action="store_true", help="no progress bars or notes")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile a model to a deployable artifact")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--target", "-t", default="host", help="target name (see `bitsmith targets`); default: host")
    p.add_argument("--output", "-o", required=True, help="artifact directory to write")
    p.add_argument("--input-shape", action="append", metavar="NAME=DxDx..", help="static shape of a dynamic input")
    p.add_argument("--recipe", "-r", metavar="NAME",
                   help="quantize with this preset (w8a8, w8_weight_only, w4a8, fp8_e4m3, mxfp4_weights); default: FP32")
    p.add_argument("--calibration", metavar="FILE.npz",
                   help="calibration samples: one array per input name, leading sample axis (see bitsmith.feeds)")
    p.add_argument("--data", metavar="FILE.npz", help="evaluation samples for --fail-if metric gates and --report")
    p.add_argument("--report", metavar="DIR", help="write a report (report.json/.md/.html) of the artifact here")
    p.add_argument("--repeat", type=int, default=20, help="timed runs for --report / latency gates (default 20)")
    p.add_argument("--tune", type=int, metavar="N",
                   help="time up to N candidate kernel schedules with MetaSchedule and keep the fastest (a per-target "
                        "database: later compiles reuse it; 0: reuse only); default: the templates alone")
    p.add_argument("--tuning-db", metavar="DIR",
                   help="tuning database root (default: $BITSMITH_TUNING_DB or ~/.cache/bitsmith/tuning)")
    _add_common(p)
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("bench", help="benchmark a model or an artifact: one report per target")
    p.add_argument("source", help="ONNX model file (compiled for each target) or artifact directory")
    p.add_argument("--target", "-t", help="target names, comma-separated (default: host, or the artifact's)")
    p.add_argument("--data", required=True, metavar="FILE.npz", help="evaluation samples (as --calibration)")
    p.add_argument("--calibration", metavar="FILE.npz", help="calibration samples (quantization, ONNX Runtime INT8)")
    p.add_argument("--recipe", "-r", metavar="NAME", help="quantization preset when benching a model")
    p.add_argument("--model", metavar="FP32.onnx", help="an artifact's FP32 source: accuracy vs FP32, ONNX Runtime")
    p.add_argument("--input-shape", action="append", metavar="NAME=DxDx..", help="static shape of a dynamic input")
    p.add_argument("--output", "-o", default="bitsmith-bench", help="report directory: <output>/<target>/report.*")
    p.add_argument("--repeat", type=int, default=50, help="timed runs per contender (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--latency", choices=["auto", "measured", "predicted"], default="auto",
                   help="auto: measure where the target runs here, predict elsewhere")
    p.add_argument("--metric", choices=["auto", "top1_agreement", "cosine"], default="auto",
                   help="accuracy metric vs FP32 (default: by the model's outputs, see bitsmith.fidelity)")
    p.add_argument("--no-baselines", action="store_true", help="skip ONNX Runtime FP32 / INT8")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe (a fresh process)")
    p.add_argument("--profile-runs", type=int, default=3, help="instrumented runs for per-layer times (0: none)")
    _add_common(p)
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("inspect", help="summarize a model file or an artifact directory")
    p.add_argument("path")
    p.add_argument("--input-shape", action="append", metavar="NAME=DxDx..")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("targets", help="list the targets bitsmith can compile for")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_targets)
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fail-if", action="append", metavar="EXPR",
                   help=f"exit 10 if EXPR holds, e.g. \"metric_drop>0.01\"; names: {', '.join(GATE_FIELDS)}")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or notes")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.quiet = getattr(args, "quiet", False) or args.quiet_all
    level = logging.INFO if args.verbose else (logging.ERROR if args.quiet else logging.WARNING)
    logging.basicConfig(level=level, format="%(name)s: %(message)s")
    try:
        return int(args.run(args))
    except BitsmithError as exc:
        print(f"bitsmith: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bitsmith: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
