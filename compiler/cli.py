"""The `bitsmith` command line: compile, inspect, targets.

Exit codes are those of bitsmith.errors (0 success, 2 usage, 3 model, 4 unsupported, 5 data,
6 budget, 7 artifact, 8 build, 9 output, 10 gate failed); errors print one line to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from . import targets
from .errors import BitsmithError, UsageError
from .feeds import load_feeds


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
    from .pipeline import compile_model

    hints = _shape_hints(args.input_shape)
    calibration = None
    if args.calibration:
        calibration, hints = load_feeds(args.calibration, args.model, hints=hints)
    artifact = compile_model(args.model, args.target, input_shapes=hints, output_dir=args.output,
                             quiet=args.quiet, recipe=args.recipe, calibration=calibration)
    if not args.quiet:
        print(f"wrote {artifact.path} ({artifact.size_bytes() / 1e6:.2f} MB, target {artifact.target})")
    return 0


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
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("inspect", help="summarize a model file or an artifact directory")
    p.add_argument("path")
    p.add_argument("--input-shape", action="append", metavar="NAME=DxDx..")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("targets", help="list the targets bitsmith can compile for")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_targets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
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
