"""The x86 target family: bitsmith Target -> tvm Target, Relax pipeline with CPU schedules, build, export.

    emitted = emit_relax(graph)                 # backends/relax_emit.py
    executable = build(emitted, load("host"))   # tvm.compile with our Relax pipeline
    export(executable, "model.so")              # a shared library the Relax VM loads (runner.py)
"""

from __future__ import annotations

import time
from pathlib import Path

import tvm
from tvm import relax

from bitsmith.errors import BuildError, OutputError, UsageError
from bitsmith.targets import Target, load

from .cpu_schedule import CPUShape, ScheduleCPU
from .relax_emit import EmittedModule


def tvm_target(target: Target | str) -> tvm.target.Target:
    """The TVM target of a bitsmith x86 target (a Target, a target name, or "host")."""
    if isinstance(target, str):
        target = load(target)
    if target.family != "x86":
        raise UsageError(f"target {target.name!r} is of family {target.family!r}, not x86")
    return tvm.target.Target(dict(target.tvm_target))


def cpu_shape(target: Target) -> CPUShape:
    """Vector width and register count of an x86 target (AVX-512 has 32 vector registers, AVX2 16)."""
    return CPUShape(vector_bits=target.vector_bits, vector_registers=32 if target.vector_bits >= 512 else 16)


# Convolutions run in NHWC with HWIO weights: the output channel is contiguous in the output and
# in the weights, so the tiled-reduction schedule vectorizes over it (see cpu_schedule.py).
# conv2d_transpose is pinned to NCHW: TOPI legalizes it in no other layout.
CONV_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}


def relax_pipeline(target: tvm.target.Target, cpu: CPUShape) -> tvm.transform.Pass:
    """Re-layout, lift weight transforms, legalize, fuse, schedule and lower a Relax module."""
    passes = [
        relax.transform.ConvertLayout(CONV_LAYOUTS),
        relax.transform.LiftTransformParams(),  # weight re-layouts run once: main_transform_params
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
        ScheduleCPU(cpu),
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        *relax.backend.cpu_generic.finalize_passes(target),
    ]
    return tvm.transform.Sequential(passes, name="bitsmith_x86")


def build(emitted: EmittedModule, target: Target | str = "host") -> tvm.runtime.Executable:
    """Compile an emitted Relax module for an x86 target; returns a TVM Executable."""
    if isinstance(target, str):
        target = load(target)
    tvm_tgt = tvm_target(target)
    try:
        with tvm_tgt:
            return tvm.compile(emitted.mod, tvm_tgt, relax_pipeline=relax_pipeline(tvm_tgt, cpu_shape(target)))
    except Exception as exc:
        raise BuildError(f"building {emitted.graph_name!r} for {tvm_tgt} failed: {exc}") from exc


def export(executable: tvm.runtime.Executable, path: str | Path) -> Path:
    """Write the executable as a shared library loadable by `runner.TVMRunner` (or the C++ runtime)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        executable.export_library(str(path))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc
    return path
