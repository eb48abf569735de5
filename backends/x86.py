"""The x86 target family: bitsmith Target -> tvm Target, Relax pipeline with CPU schedules, build, export.

    emitted = emit_relax(graph)                 # backends/relax_emit.py
    executable = build(emitted, load("host"))   # tvm.compile with our Relax pipeline
    export(executable, "model.so")              # a shared library the Relax VM loads (runner.py)

What TVM 0.27 gives an llvm target by default: `tvm.compile` runs LegalizeOps and the VM lowering
only: no operator fusion and no schedules, so every op is a naive single-threaded loop nest
(MobileNetV2 196 ms vs 14 ms for ONNX Runtime). dlight's CPU rules cover only GEMV and row
reductions; MetaSchedule needs minutes of tuning per model. So the pipeline here (`relax_pipeline`):

1. `ConvertLayout`: conv2d in NHWC (output channels contiguous: the vector axis).
   `sink_transposes` (transpose_sinking.py): the transposes it leaves around table lookups cancel.
   `requantize_in_int32` (requantize.py): integer requantize epilogues in 32-bit lanes where exact.
   `byte_lookups` (x86_lookup.py, AVX-512 VBMI): byte table lookups in large tensors as byte permutes.
2. `fast_math`: float32 exp / erf / tanh / sigmoid / softmax -> TOPI's polynomial forms, which
   vectorize (LLVM calls libm per element otherwise: erf 37x, exp 11x slower); a where's scalar
   constant branch -> an immediate (a Select reading a 0-d buffer does not vectorize).
3. Legalize, fold constants, `FuseOps` + `FuseTIR` (conv + bias + activation + residual in one loop;
   `lookups_are_elementwise`: an integer graph's activation tables too).
4. `ScheduleCPU` (cpu_schedule.py): register-tiled, vectorized, parallel loop nests for conv and
   matmul, weights packed into panels; rfactor-vectorized row reductions; vectorized elementwise.
   With `--tune N`, `TuneCPU` (tuning.py) first gives the kernels it has tuned (MetaSchedule timing
   the template's tilings, a per-target database) their checked fastest schedule.
5. `SplitLayoutRewritePreproc` + `LiftTransformParams`: weight re-layout and packing move into
   `main_transform_params`, run once per weight set by the runner (Python or C++).

Measured here (2-vCPU Xeon with AVX-512, host target x86-avx512, while two other jobs kept both
cores busy, so absolute times drift), one thread each, median ms, bitsmith / ONNX Runtime 1.31:
mobilenet_v2 6.7 / 5.8, minilm_l6 24.1 / 27.0, ppocr_det 37.4 / 45.8, ppocr_cls 0.89 / 1.18,
mtcnn_rnet 0.07 / 0.08, mtcnn_onet 0.36 / 0.34, magika 4.9 / 5.7. Every output is within 6e-5
(max abs diff / max abs) of ONNX Runtime; emit + build + export takes 1-12 s per model.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax, te, topi

from bitsmith.errors import BuildError, OutputError, UsageError
from bitsmith.targets import Target, load

from . import x86_intrinsics
from .cpu_schedule import CPUShape, ScheduleCPU
from .layout_free import mark_param_derived_layout_free
from .relax_emit import EmittedModule
from .relax_rewrite import rewrite_functions
from .requantize import requantize_in_int32
from .transpose_sinking import lookups_are_elementwise, sink_transposes
from .tuning import TuneCPU, TuningOptions, TuningSummary
from .x86_lookup import byte_lookups


def tvm_target(target: Target | str) -> tvm.target.Target:
    """The TVM target of a bitsmith x86 target (a Target, a target name, or "host")."""
    if isinstance(target, str):
        target = load(target)
    if target.family != "x86":
        raise UsageError(f"target {target.name!r} is of family {target.family!r}, not x86")
    return tvm.target.Target(dict(target.tvm_target))


def cpu_shape(target: Target) -> CPUShape:
    """Vector width and register count of an x86 target (AVX-512 has 32 vector registers, AVX2 16),
    and its exact int8 dot products (x86_intrinsics.py): VNNI's vpdpbusd where the target has it (also on
    depthwise convolutions' kernel rows; with AVX-512 VL its ymm and xmm forms, for 8k- and 4k-channel outputs),
    else AVX2's vpmaddubsw for weights of at most 7 bits and vpmaddwd for the others; whether it has
    AVX-512 VBMI's byte permutes (x86_lookup.py)."""
    wide = target.vector_bits >= 512
    vnni = "avx512_vnni" in target.host_features and wide
    dots: tuple[x86_intrinsics.DotIntrinsic, ...] = ()
    if vnni:
        dots = (x86_intrinsics.DOT_16X4_VNNI, x86_intrinsics.DEPTHWISE_16X3_VNNI,
                x86_intrinsics.DEPTHWISE_16X5_VNNI)
        if "avx512vl" in target.host_features:
            dots += (x86_intrinsics.DOT_8X4_VNNI, x86_intrinsics.DOT_4X4_VNNI)
    if "avx2" in target.host_features or wide:
        dots += (x86_intrinsics.DOT_8X4_AVX2_NARROW, x86_intrinsics.DOT_8X2_AVX2_U8, x86_intrinsics.DOT_8X2_AVX2_I8)
    return CPUShape(vector_bits=target.vector_bits, vector_registers=32 if wide else 16, int8_dots=dots,
                    byte_permute=wide and "avx512vbmi" in target.host_features)


# Convolutions run in NHWC: the output channel is contiguous, so the tiled-reduction schedule
# vectorizes over it (see cpu_schedule.py). Weights keep their layout here; the schedule packs them
# into panels (cpu_schedule.pack_weights_in_place). conv2d_transpose is pinned to NCHW: TOPI legalizes it in
# no other layout (and relax_emit turns most of them into convolutions anyway).
CONV_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "OIHW"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}


def _fast_sigmoid(x: te.Tensor) -> te.Tensor:
    one = tvm.tirx.const(1.0, x.dtype)
    return topi.divide(one, topi.add(one, topi.fast_exp(topi.negative(x))))


# float32 transcendental ops -> polynomial versions that vectorize. LLVM otherwise calls libm per
# element: erf is 37x slower, exp 11x (measured on 196k elements). Largest relative error measured
# against float64: fast_erf 3.3e-7, fast_exp 9.4e-8, fast_tanh 3.2e-7 (TVM's default tanh: 1.1e-2).
FAST_MATH = {
    "relax.exp": topi.fast_exp,
    "relax.erf": topi.fast_erf,
    "relax.tanh": topi.fast_tanh,
    "relax.sigmoid": _fast_sigmoid,
}


def _broadcast_read(tensor: te.Tensor, index: tuple, shape: list[int]) -> tvm.tirx.PrimExpr:
    """tensor[index] under numpy broadcasting to `shape` (trailing axes aligned, broadcast axes read at 0;
    a tensor of the full shape is read elementwise, so that FuseOps sees an elementwise op)."""
    offset = len(index) - len(tensor.shape)
    return tensor[tuple(0 if int(d) == 1 and shape[offset + k] != 1 else index[offset + k]
                        for k, d in enumerate(tensor.shape))]


def _where_with_immediate(condition: te.Tensor, other: te.Tensor, value: float | int, value_first: bool,
                          shape: list[int], dtype: str) -> te.Tensor:
    """where(condition, value, other) (or with the branches swapped) with `value` an immediate."""
    def element(*index: tvm.tirx.Var) -> tvm.tirx.PrimExpr:
        branches = [tvm.tirx.const(value, dtype), _broadcast_read(other, index, shape)]
        first, second = branches if value_first else branches[::-1]
        return tvm.tirx.Select(_broadcast_read(condition, index, shape), first, second)

    return te.compute(shape, element, name="where")


def _scalar_constant(expr: relax.Expr) -> float | int | None:
    if isinstance(expr, tvm.ir.expr.Constant) and expr.value.numpy().size == 1:
        return expr.value.numpy().reshape(-1)[0].item()
    return None


@relax.expr_functor.mutator
class _FastMathRewriter(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
        if name == "relax.where":
            return self._where(call)
        if not call.args or str(getattr(call.args[0].ty, "dtype", "")) != "float32":
            return call
        if name in FAST_MATH:
            return self.builder_.call_te(FAST_MATH[name], call.args[0])
        if name == "relax.nn.softmax":
            return self.builder_.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis))
        return call

    def _where(self, call: relax.Call) -> relax.Expr:
        """A where with a scalar constant branch (quantize's NaN guard) takes the constant as an
        immediate: as a 0-d buffer operand of a Select, it makes TVM's vectorizer fall back to scalar
        code for the whole fused loop (measured: MiniLM's softmax + quantize 5x slower)."""
        condition, first, second = call.args
        for value, other, value_first in ((_scalar_constant(first), second, True),
                                          (_scalar_constant(second), first, False)):
            if value is not None and _scalar_constant(other) is None:
                shape = [int(d) for d in call.ty.shape.values]
                return self.builder_.call_te(_where_with_immediate, condition, other, value, value_first, shape,
                                             str(call.ty.dtype), primfunc_name_hint="where")
        return call


@tvm.transform.module_pass(opt_level=0, name="BitsmithFastMath")
def fast_math(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Replace float32 exp / erf / tanh / sigmoid / softmax by their vectorizable TOPI forms, and the
    scalar constant branch of a where by an immediate."""
    return rewrite_functions(mod, _FastMathRewriter(mod))


def scheduling_passes(cpu: CPUShape, tuning: TuneCPU | None = None) -> list[tvm.transform.Pass]:
    """Relax -> fused, scheduled TIR with weights packed (still a dataflow Relax module; inspectable,
    timeable per kernel). Everything computed from the weights alone (re-layouts, packing, folded
    batch-norm factors) is lifted into `main_transform_params`, which runs once per weight set.
    `tuning` (tuning.py) schedules the kernels it has tuned before ScheduleCPU schedules the rest."""
    return [
        relax.transform.ConvertLayout(CONV_LAYOUTS),
        relax.transform.FoldConstant(),  # the layout conversion's permuted constants, for the next pass
        sink_transposes,
        requantize_in_int32,
        *([byte_lookups] if cpu.byte_permute else []),
        relax.transform.DeadCodeElimination(),
        fast_math,
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        lookups_are_elementwise,
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.AttachAttrLayoutFreeBuffers(),  # weights may be re-laid out by the schedules
        mark_param_derived_layout_free,  # and so may weights decoded from low-precision bytes
        *([tuning] if tuning is not None else []),
        ScheduleCPU(cpu),
        relax.transform.SplitLayoutRewritePreproc(),
        relax.transform.LiftTransformParams(),
    ]


def lowering_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Dataflow Relax -> VM-ready Relax (memory planning, shape lowering), as TVM's default pipeline."""
    return [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        *relax.backend.cpu_generic.finalize_passes(target),
    ]


def relax_pipeline(target: tvm.target.Target, cpu: CPUShape, tuning: TuneCPU | None = None) -> tvm.transform.Pass:
    """Re-layout, lift weight transforms, legalize, fuse, schedule and lower a Relax module."""
    return tvm.transform.Sequential(scheduling_passes(cpu, tuning) + lowering_passes(target), name="bitsmith_x86")


def build(emitted: EmittedModule, target: Target | str = "host", tuning: TuningOptions | None = None,
          summary: TuningSummary | None = None) -> tvm.runtime.Executable:
    """Compile an emitted Relax module for an x86 target; returns a TVM Executable. With `tuning`
    (tuning.py), MetaSchedule tunes the kernels its database lacks and the best schedules are used;
    `summary` is filled with what it did."""
    if isinstance(target, str):
        target = load(target)
    tvm_tgt = tvm_target(target)
    cpu = cpu_shape(target)
    tuner = None
    if tuning is not None:
        tuner = TuneCPU(tvm_tgt, target.name, cpu, tuning, summary if summary is not None else TuningSummary())
    try:
        with tvm_tgt:
            return tvm.compile(emitted.mod, tvm_tgt, relax_pipeline=relax_pipeline(tvm_tgt, cpu, tuner))
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
