"""Default CPU schedules for the PrimFuncs of a fused Relax module: no tuning, one deterministic choice.

TVM 0.27's default llvm pipeline leaves every PrimFunc as naive loop nests (one core, no vectors),
which runs convolutions ~100x slower than ONNX Runtime. `ScheduleCPU(cpu)` is a module pass that
schedules each PrimFunc with the first rule that applies:

1. **tiled reduction** (conv, matmul, pooling; one reduction block whose output's innermost axis is
   wide): the output is tiled as [outer spatial..., cols/cols_tile, rows/rows_tile] x [reduction
   loops] x [rows_tile (unrolled), cols_tile (vectorized)], where `cols` is the spatial axis indexing
   the output's innermost (contiguous) dimension and `rows` the next one. The rows_tile x cols_tile
   accumulator lives in a tile buffer (registers), the outer tile loops run in parallel, and a
   fused elementwise epilogue (bias, activation, residual add) is computed per tile. Producers that
   only copy are inlined; real pads stay a separate padded copy unless the reduction is short
   (depthwise convolution, pooling). The weights are re-laid out in the order the tile loops read
   them (`pack_weights_in_place`, a once-per-weight-set transform: see x86.py). On a CPU with an exact int8
   dot product (`CPUShape.int8_dots`: AVX-512 VNNI vpdpbusd, 16 lanes x 4 steps; AVX2 vpmaddubsw for
   weights known to fit 7 bits (`weight_code_bounds`), 8 lanes x 4 steps, else vpmaddwd, 8 lanes x 2
   steps; x86_intrinsics.py), an 8-bit x int8 -> int32 reduction (QConv, QMatMul) splits
   `depth` reduction steps under `lanes` columns and runs them as one intrinsic; the packed weights
   then hold lanes x depth byte blocks, and the tile shape is chosen for the intrinsic's costs
   (`_dot_tilings`). A depthwise convolution (each channel reads its own input channel) splits its
   kernel rows instead, under the channels as lanes (`DotIntrinsic.depthwise`); its pad is computed
   per tile into a tile buffer (`_pad_per_tile`), so the intrinsic reads whole rows without boundary tests.
2. **every block on its own** (elementwise, transposes, gathers, softmax, norms, other reductions):
   injective blocks run their outer loops in parallel and the innermost loop in vectors; a
   reduction over the innermost axis accumulates a vector of partial results (rfactor) and reduces
   it at the end; other reductions run in parallel over their leading spatial loops.

A rule that fails on some PrimFunc falls through to the next, and the last leaves it as it was
(correct, only slower): a schedule can cost speed but never correctness. Convolutions reach this
pass in NHWC layout (x86.py), where `cols` is the output channel: weights load as vectors, inputs
broadcast. Measured against ONNX Runtime on the zoo models: see the report in x86.py.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass

import tvm_ffi
from tvm import ir, relax, s_tir, sym, tirx
from tvm.ir.transform import PassContext, module_pass
from tvm.s_tir import meta_schedule

from .relax_emit import WEIGHT_CODE_BOUNDS_ATTR

log = logging.getLogger(__name__)

# Below this many output elements x reduction steps, a kernel runs on one thread (fork/join costs more).
PARALLEL_MIN_WORK = 1 << 14
# Pads are inlined into reductions this short (depthwise convolutions, pooling): a separate padded
# copy of the input costs more than the boundary tests there. Longer reductions read a padded copy.
INLINE_PAD_MAX_REDUCTION = 25
# Reductions this short (depthwise 3x3 and 5x5 convolutions, small pools) are unrolled whole.
UNROLL_REDUCTION_MAX = 25
# An injective block copied more than once by inlining (several consumers or reads) is inlined only while
# each consumer stays this small (TVMScript characters of its body as a tree, copies included):
# `_inline_producers`. Measured: at 50,000 MiniLM's FP32 kernels lose their tiled schedules (20x slower
# at 8,000), at 300,000 an FP8 rounding chain does not compile; 100,000 compiles mtcnn_rnet fp8 in ~2 min
# on 2 busy cores and keeps MiniLM FP32 at its speed.
INLINE_COPY_MAX_CHARS = 100_000
# Loops longer than this are never unrolled (code size and LLVM compile time).
MAX_UNROLL = 32
# Storage scope of per-tile buffers (accumulators, partial sums). On CPU, TVM lowers a "global" buffer
# under 1 KiB to a stack slot (LLVM keeps it in registers) but a "local" one to a workspace-pool call
# at every allocation: once per tile, inside the parallel loop (measured: 15% of MobileNetV2's time).
TILE_SCOPE = "global"
# ... and the largest tile buffer that stays a stack slot.
TILE_BUFFER_MAX_BYTES = 1024


@dataclass(frozen=True)
class DotIntrinsic:
    """A registered TVM tensor intrinsic: `lanes` int32 accumulators (a local buffer), each += the sum
    of `depth` products of an `activation_dtype` code (broadcast) and an int8 weight ([lanes, depth]).
    A `depthwise` one reads a code per lane instead (a depthwise convolution's channels): `depth`
    kernel rows of `lanes` codes and of `lanes` weights ([depth, lanes] each)."""

    name: str
    activation_dtype: str
    lanes: int
    depth: int
    broadcast_ops: int = 1  # instructions to broadcast one row's `depth` activation codes
    scratch_registers: int = 1  # vector registers it needs besides accumulators and weight vectors
    weight_code_max: int | None = None  # exact only for weights whose codes are this small (None: any int8)
    depthwise: bool = False


@dataclass(frozen=True)
class CPUShape:
    """What the schedules need to know about the CPU: vector width, vector register count, and the
    exact int8 dot-product intrinsics it has (tried in order)."""

    vector_bits: int = 256
    vector_registers: int = 16
    int8_dots: tuple[DotIntrinsic, ...] = ()
    # Accumulators a default tile keeps in flight. About a multiply-add's latency times its ports
    # (4-5 cycles x 2) hide the latency; more only crowd the registers the operands need (a depthwise
    # convolution's unrolled taps, the epilogue's constants). Measured on AVX-512 (Zen 4) by timing every
    # tile shape of PP-OCRv4 det's, MobileNetV2's and MiniLM's int8 kernels (`--tune`): tiles of 20-24
    # accumulators ran up to 2.7x slower than tiles of 10-15; on AVX2 the registers cap tiles at 12.
    max_accumulators: int = 12
    # AVX-512 VBMI: vpermi2b looks 64 bytes up in a 128-byte table (backends/x86_lookup.py)
    byte_permute: bool = False

    def lanes(self, dtype_bits: int) -> int:
        return max(self.vector_bits // dtype_bits, 1)

    @property
    def accumulator_budget(self) -> int:
        """Vector registers a tiled-reduction accumulator may occupy (the rest hold operands): the tile
        shapes tuning may try. The default tile stays within `max_accumulators` as well."""
        return max(self.vector_registers * 3 // 4, 4)

    def default_accumulators(self, register_lanes: int, full_lanes: int) -> int:
        """Accumulators of `register_lanes` lanes a default tile may keep: `max_accumulators` counts
        full-width vectors of `full_lanes`, and a narrower one holds less work in flight."""
        return self.max_accumulators * max(full_lanes // register_lanes, 1)


@module_pass(opt_level=0, name="ScheduleCPU")
class ScheduleCPU:  # pylint: disable=too-few-public-methods
    """Apply the default CPU schedule to every PrimFunc not yet scheduled."""

    def __init__(self, cpu: CPUShape) -> None:
        self.cpu = cpu

    def transform_module(self, mod: ir.IRModule, _ctx: PassContext) -> ir.IRModule:
        updates = {}
        bounds = weight_code_bounds(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not _is_scheduled(func):
                scheduled = schedule_prim_func(func, self.cpu, gvar.name_hint, bounds.get(gvar.name_hint, {}))
                if scheduled is not None:
                    updates[gvar] = scheduled.with_attr("tirx.is_scheduled", True)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod


def weight_code_bounds(mod: ir.IRModule) -> dict[str, dict[str, int]]:
    """PrimFunc name -> {buffer name: largest |code| it holds}, for int8 constants and the integer
    weights the emitter bounded (relax_emit.WEIGHT_CODE_BOUNDS_ATTR on the Relax function calling the
    PrimFunc; variables that FuseOps renamed, such as decoded int4 codes, are no longer found). A buffer
    counts only when every call passes it a bounded argument; the bound is the largest over the calls."""
    per_call: dict[ir.GlobalVar, list[dict[int, int]]] = {}
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        attrs = func.attrs if func.attrs is not None and WEIGHT_CODE_BOUNDS_ATTR in func.attrs else {}
        bounded = {str(name): int(bound) for name, bound in attrs.get(WEIGHT_CODE_BOUNDS_ATTR, {}).items()}
        counts = Counter(var.name for var in _defined_vars(func))
        unique = {name for name, count in counts.items() if count == 1}
        for call in call_tirs(func):
            args = list(call.args[1].fields) if isinstance(call.args[1], relax.Tuple) else [call.args[1]]
            per_call.setdefault(call.args[0], []).append(
                {i: bound for i, bound in enumerate(_code_bound(arg, bounded, unique) for arg in args)
                 if bound is not None})
    bounds: dict[str, dict[str, int]] = {}
    for gvar, calls in per_call.items():
        prim = mod[gvar]
        if not isinstance(prim, tirx.PrimFunc):
            continue
        common = set.intersection(*(set(call) for call in calls))
        bounds[gvar.name_hint] = {prim.params[i].name: max(call[i] for call in calls) for i in common
                                  if i < len(prim.params)}
    return bounds


def _code_bound(arg: relax.Expr, bounded: dict[str, int], unique: set[str]) -> int | None:
    """The largest |code| of an argument: an int8 constant's own, or a variable's as the emitter bounded it."""
    if isinstance(arg, relax.Var):
        return bounded[arg.name] if arg.name in bounded and arg.name in unique else None
    if isinstance(arg, ir.expr.GenericConst) and str(arg.value.dtype) == "int8":
        codes = arg.value.numpy()
        return int(abs(codes.astype("int64")).max()) if codes.size else None
    return None


def _defined_vars(func: relax.Function) -> list[relax.Var]:
    variables = list(func.params)
    for block in func.body.blocks:
        variables += [binding.var for binding in block.bindings]
    return variables


def call_tirs(func: relax.Function) -> list[relax.Call]:
    """The call_tir calls of a Relax function's top-level bindings."""
    call_tir = ir.Op.get("relax.call_tir")
    return [b.value for block in func.body.blocks for b in block.bindings
            if isinstance(b.value, relax.Call) and b.value.op.same_as(call_tir)]


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and "tirx.is_scheduled" in func.attrs and bool(func.attrs["tirx.is_scheduled"])


def schedule_prim_func(func: tirx.PrimFunc, cpu: CPUShape, name: str = "",
                       weight_bounds: dict[str, int] | None = None) -> tirx.PrimFunc | None:
    """The scheduled function, or None when no rule applies (the caller keeps the original).
    `weight_bounds`: buffer name -> largest |code| of the integer weights it holds (weight_code_bounds).

    Logs (DEBUG, logger bitsmith.backends.cpu_schedule) which rule scheduled each PrimFunc, and why
    the earlier ones did not: the first thing to read when a kernel is slow."""
    name = name or _func_name(func)
    rules = (lambda f, c: schedule_tiled_reduction(f, c, weight_bounds), schedule_loops)
    for rule_name, rule in zip(("schedule_tiled_reduction", "schedule_loops"), rules):
        try:
            scheduled = rule(func, cpu)
        except Exception as exc:  # a schedule primitive refused: try the next rule
            log.debug("%s: rule %s failed: %s", name, rule_name, str(exc).splitlines()[0] if str(exc) else exc)
            continue
        if scheduled is not None:
            log.debug("%s: scheduled by %s", name, rule_name)
            return scheduled
        log.debug("%s: rule %s does not apply", name, rule_name)
    log.debug("%s: left unscheduled", name)
    return None


def _func_name(func: tirx.PrimFunc) -> str:
    if func.attrs is not None and "global_symbol" in func.attrs:
        return str(func.attrs["global_symbol"])
    return "<primfunc>"


# ---------------------------------------------------------------------------------------------
# Block classification helpers
# ---------------------------------------------------------------------------------------------
def _blocks(sch: s_tir.Schedule) -> list[s_tir.schedule.SBlockRV]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _iter_kinds(sch: s_tir.Schedule, block) -> str:
    kinds = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kinds.get(int(iv.iter_type), "O") for iv in sch.get(block).iter_vars)


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return "R" in _iter_kinds(sch, block)


def _has_if_then_else(sch: s_tir.Schedule, block) -> bool:
    return bool(tvm_ffi.get_global_func("s_tir.schedule.HasIfThenElse")(sch.get(block)))


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _inline_producers(sch: s_tir.Schedule, keep: set[str]) -> None:
    """Inline every injective block that can be inlined into its consumers, except `keep` names and
    those whose copies would grow a consumer past INLINE_COPY_MAX_CHARS.

    Inlining copies the producer's expression into every consumer, once per read, so elementwise ops
    that fan out and meet again (FP8 rounding uses |x|, its binade and its step in several ops) grow
    exponentially as a tree; TVM shares the copies in memory, but its simplifier and LLVM walk trees and
    never finish. The tree sizes are tracked here (`_ExpressionSizes`) from the blocks as first seen,
    since printing an inlined body is itself exponential."""
    sizes = _ExpressionSizes(sch)
    changed = True
    while changed:
        changed = False
        for block in _blocks(sch):
            name = sch.get(block).name_hint
            if name in keep or _is_reduction(sch, block):
                continue
            consumers = [sch.get(c).name_hint for c in sch.get_consumers(block)]
            if sizes.too_large_to_inline(name, consumers):
                continue
            try:
                sch.compute_inline(block)
            except Exception:  # an output block, or one whose consumers cannot take it
                continue
            sizes.inlined(name, consumers)
            changed = True


class _ExpressionSizes:
    """Per block: the TVMScript size of its body as a tree, and how often it loads each buffer."""

    def __init__(self, sch: s_tir.Schedule) -> None:
        self.writes: dict[str, str] = {}
        self.size: dict[str, int] = {}
        self.loads: dict[str, dict[str, int]] = {}
        blocks = [sch.get(b) for b in _blocks(sch)]
        for stmt in blocks:
            self.writes[stmt.name_hint] = stmt.writes[0].source.name if len(stmt.writes) == 1 else ""
        for stmt in blocks:
            text = str(stmt.body)
            self.size[stmt.name_hint] = len(text)
            self.loads[stmt.name_hint] = {buffer: len(re.findall(rf"(?<![\w.]){re.escape(buffer)}\[", text))
                                          for buffer in self.writes.values() if buffer}

    def too_large_to_inline(self, name: str, consumers: list[str]) -> bool:
        """Whether inlining copies the block more than once (several consumers, or several reads by one)
        and a consumer would then pass INLINE_COPY_MAX_CHARS. A single copy only adds: chains stay inlined."""
        buffer = self.writes.get(name, "")
        for consumer in consumers:
            reads = self.loads.get(consumer, {}).get(buffer, 1)
            copies = reads * len(consumers)
            if copies > 1 and self.size.get(consumer, 0) + reads * self.size.get(name, 0) > INLINE_COPY_MAX_CHARS:
                return True
        return False

    def inlined(self, name: str, consumers: list[str]) -> None:
        buffer = self.writes[name]
        for consumer in consumers:
            if consumer not in self.loads:
                continue
            reads = self.loads[consumer].pop(buffer, 1)
            self.size[consumer] += reads * self.size.get(name, 0)
            for other, count in self.loads.get(name, {}).items():
                self.loads[consumer][other] = self.loads[consumer].get(other, 0) + reads * count


# ---------------------------------------------------------------------------------------------
# Rule 1: tiled reduction with a register accumulator
# ---------------------------------------------------------------------------------------------
def _output_axis_iters(sch: s_tir.Schedule, block) -> list[tirx.Var | None]:
    """For each dimension of the block's output, the block iter var indexing it (or None)."""
    stmt = sch.get(block)
    region = stmt.writes[0].region
    iter_vars = {iv.var for iv in stmt.iter_vars}
    return [r.min if isinstance(r.min, tirx.Var) and r.min in iter_vars else None for r in region]


def _choose_cols_tile(extent: int, lanes: int) -> int:
    """Vectorized tile: two vectors or one when they divide the extent, else a divisor near that."""
    for candidate in (2 * lanes, lanes):
        if extent % candidate == 0:
            return candidate
    if extent <= 2 * lanes:
        return extent
    divisors = [d for d in range(2 * lanes, 1, -1) if extent % d == 0]
    for step in (8, 4):
        multiples = [d for d in divisors if d % step == 0]
        if multiples:
            return multiples[0]
    return divisors[0] if divisors else 1


def _choose_rows_tile(extent: int, limit: int) -> int:
    """Unrolled tile: the largest divisor of `extent` not above `limit`, or `limit` itself (the last
    tile then runs partly empty) when every divisor is below half of it (508 = 4 x 127)."""
    limit = min(extent, limit)
    divisor = max(d for d in range(1, limit + 1) if extent % d == 0)
    return divisor if 2 * divisor >= limit else limit


@dataclass(frozen=True)
class _Tiling:
    """How the anchor block's output is tiled: `cols` (vectorized) and `rows` (unrolled) iter vars."""

    cols_var: tirx.Var
    cols_tile: int
    rows_var: tirx.Var | None
    rows_tile: int


def schedule_tiled_reduction(func: tirx.PrimFunc, cpu: CPUShape,
                             weight_bounds: dict[str, int] | None = None) -> tirx.PrimFunc | None:
    """Rule 1 (see the module docstring); None when the function has no suitable anchor block.

    An 8-bit x int8 -> int32 reduction first tries the tiled schedule with its innermost `lanes`
    columns x `depth` reduction steps as one of the CPU's dot-product intrinsics; one exact only for
    small weight codes only where `weight_bounds` (buffer name -> largest |code|) says they are."""
    applied = _first_tiled_reduction(func, cpu, weight_bounds)
    return applied[1].mod["main"] if applied is not None else None


def tiled_reduction_dot(func: tirx.PrimFunc, cpu: CPUShape,
                        weight_bounds: dict[str, int] | None = None) -> tuple[bool, DotIntrinsic | None]:
    """(whether the tiled schedule applies to `func`, the dot-product intrinsic it then runs on or None)."""
    applied = _first_tiled_reduction(func, cpu, weight_bounds)
    return (applied is not None, applied[0] if applied is not None else None)


def _first_tiled_reduction(func: tirx.PrimFunc, cpu: CPUShape, weight_bounds: dict[str, int] | None
                           ) -> tuple[DotIntrinsic | None, s_tir.Schedule] | None:
    """The default tiled schedule on the first of the CPU's dot-product intrinsics that applies, else
    on plain vector code: (intrinsic or None, the scheduled Schedule), or None where the rule does not apply."""
    for dot in cpu.int8_dots:
        sch = s_tir.Schedule(func)
        try:
            if apply_tiled_reduction(sch, cpu, dot, weight_bounds):
                return dot, sch
        except Exception as exc:  # no match for the intrinsic: the next one, then the plain tiled schedule
            log.debug("%s not applied: %s", dot.name, str(exc).splitlines()[0] if str(exc) else exc)
    sch = s_tir.Schedule(func)
    return (None, sch) if apply_tiled_reduction(sch, cpu, None) else None


def apply_tiled_reduction(sch: s_tir.Schedule, cpu: CPUShape, dot: DotIntrinsic | None,
                          weight_bounds: dict[str, int] | None = None, choice: int = 0) -> bool:
    """Schedule `sch` (in place, every step on it: a traced schedule replays) with the tiled reduction
    and the `choice`-th tile shape of `tiling_candidates` (0: the default one). False when the rule or
    that choice does not apply (`sch` is then partly transformed: discard it)."""
    setup = _tiling_setup(sch, cpu, dot, weight_bounds)
    if setup is None:
        return False
    anchor, producers, consumers, loop_of_iter, lanes, tilings = setup
    if choice >= len(tilings):
        return False
    tiling = tilings[choice]
    work = total_work(sch, anchor)
    tile_outer, tile_inner, reduce = _tile_loops(sch, anchor, loop_of_iter, tiling)
    if dot is not None:
        # a depthwise convolution's lanes read kernel rows (the first reduction), the others the last one
        split = 0 if dot.depthwise else len(reduce) - 1
        if tiling.cols_tile % dot.lanes or (_extent(sch, reduce[split]) or 1) % dot.depth:
            return False
        reduce_outer, reduce_lane = sch.split(reduce[split], factors=[None, dot.depth])
        reduce = reduce[:split] + [reduce_outer] + reduce[split + 1:]
        cols_repeat, cols_lanes = sch.split(tile_inner[-1], factors=[None, dot.lanes])
        inner = (reduce_lane, cols_lanes) if dot.depthwise else (cols_lanes, reduce_lane)
        sch.reorder(*tile_inner[:-1], cols_repeat, *inner)
    tiled_epilogue = bool(consumers) and _same_output_shape(sch, anchor, consumers[0])
    _place_epilogue(sch, anchor, consumers[0] if tiled_epilogue else None, tile_outer, lanes)
    if tiling.rows_var is not None:
        sch.unroll(tile_inner[0])
    if _reduction_extent(sch, anchor) <= UNROLL_REDUCTION_MAX:
        for loop in reduce:  # neighbouring taps then share their loads (a sliding window)
            sch.unroll(loop)
    if dot is not None:
        sch.unroll(cols_repeat)
    else:
        _vectorize_in_registers(sch, tile_inner[-1], tiling.cols_tile, lanes)
    if dot is not None and dot.depthwise:
        producers = [b for b in producers if not _pad_per_tile(sch, b, tile_outer, lanes)]
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(sch.fuse(*tile_outer))
    if reduce:  # after parallel: a decomposed update block no longer passes the parallel check
        _vectorize_tile(sch, sch.decompose_reduction(anchor, reduce[0]), 1, lanes)
    for block in producers + ([] if tiled_epilogue else consumers):
        _parallel_vectorize(sch, block, lanes)
    update_name = sch.get(anchor).name_hint
    pack_weights_in_place(sch)
    if dot is not None:
        update = sch.get_sblock(update_name)
        sch.tensorize(sch.get_loops(update)[-2], dot.name)
    return True


def _pad_per_tile(sch: s_tir.Schedule, block, tile_outer: list, lanes: int) -> bool:
    """Compute a pad block's window of the input in each tile, into a tile buffer (a few rows of
    the tile's columns), rather than a padded copy of the whole input. False where `block` is no pad."""
    if not _has_if_then_else(sch, block):
        return False
    sch.compute_at(block, tile_outer[-1], preserve_unit_loops=True)
    sch.set_scope(block, 0, TILE_SCOPE)
    _vectorize_tile(sch, block, len(tile_outer), lanes)
    return True


def _tiling_setup(sch: s_tir.Schedule, cpu: CPUShape, dot: DotIntrinsic | None,
                  weight_bounds: dict[str, int] | None):
    """(anchor, producers, consumers, loop of each iter var, lanes, tiling candidates) of the tiled
    reduction on `sch` (producers inlined), or None where the rule or `dot` does not apply."""
    parts = _anchor_with_neighbours(sch, keep_pads=dot is not None and dot.depthwise)
    if parts is None:
        return None
    anchor, producers, consumers = parts
    if dot is not None and not _is_int8_dot(sch, anchor, dot, weight_bounds):
        return None
    loop_of_iter = _loop_of_iter(sch, anchor, sch.get_loops(anchor))
    if loop_of_iter is None:
        return None
    lanes = cpu.lanes(sch.get(anchor).writes[0].source.dtype.bits)
    tilings = tiling_candidates(sch, anchor, loop_of_iter, cpu, dot, lanes)
    return anchor, producers, consumers, loop_of_iter, lanes, tilings


def _is_int8_dot(sch: s_tir.Schedule, block, dot: DotIntrinsic, weight_bounds: dict[str, int] | None) -> bool:
    """Whether the block accumulates int32 products of a `dot.activation_dtype` and an int8 operand (QConv /
    QMatMul; for int8 x int8 the first read is the activation) whose codes are small enough for `dot`."""
    stmt = sch.get(block)
    reads = [r.source for r in stmt.reads if r.source.name != stmt.writes[0].source.name]
    dtypes = [str(buffer.dtype) for buffer in reads]
    if not (str(stmt.writes[0].source.dtype) == "int32" and len(dtypes) == 2 and dtypes[0] == dot.activation_dtype
            and dtypes[1] == "int8"):
        return False
    if dot.depthwise != _reads_a_code_per_output_channel(sch, block):
        return False
    if dot.depthwise and dot.depth > 4 and _column_stride(sch, block) != 1:
        # measured: a 5 x 5 kernel at stride 2 (two vpdpbusd per step, few shared columns) ran slower
        return False
    if dot.weight_code_max is None:
        return True
    return (weight_bounds or {}).get(reads[1].name, dot.weight_code_max + 1) <= dot.weight_code_max


def _reads_a_code_per_output_channel(sch: s_tir.Schedule, block) -> bool:
    """Whether the activation's innermost index follows the output's innermost one (a depthwise
    convolution: each channel reads its own input channel) rather than a reduction."""
    channel = _output_axis_iters(sch, block)[-1]
    activation = _activation_read(sch.get(block))
    used = tirx.analysis.undefined_vars(activation.region[-1].min)
    return channel is not None and any(var.same_as(channel) for var in used)


def _column_stride(sch: s_tir.Schedule, block) -> int | None:
    """How far the activation's column (its next-to-innermost index) moves per output column."""
    axis_iters = _output_axis_iters(sch, block)
    if len(axis_iters) < 2 or axis_iters[-2] is None:
        return None
    coefficients = sym.detect_linear_equation(_activation_read(sch.get(block)).region[-2].min, [axis_iters[-2]])
    return int(coefficients[0]) if len(coefficients) and isinstance(coefficients[0], tirx.IntImm) else None


def _activation_read(stmt: s_tir.SBlock) -> tirx.stmt.BufferRegion:
    """A reduction block's first operand (the activation: QConv / QMatMul read it before the weights)."""
    return next(r for r in stmt.reads if r.source.name != stmt.writes[0].source.name)


def _anchor_with_neighbours(sch: s_tir.Schedule, keep_pads: bool = False):
    """(anchor, producers, consumers) after inlining copies, or None unless there is exactly one
    reduction block with at most one consumer. Pads stay separate for long reductions, or where
    `keep_pads` (an intrinsic reads the input's rows whole: no boundary tests)."""
    reductions = [b for b in _blocks(sch) if _is_reduction(sch, b)]
    if len(reductions) != 1:
        return None
    anchor_name = sch.get(reductions[0]).name_hint
    keep = {anchor_name, *_output_block_names(sch)}
    if keep_pads or _reduction_extent(sch, reductions[0]) > INLINE_PAD_MAX_REDUCTION:
        keep |= {sch.get(b).name_hint for b in _producers(sch, anchor_name) if _has_if_then_else(sch, b)}
    _inline_producers(sch, keep)
    blocks = _blocks(sch)
    position = [sch.get(b).name_hint for b in blocks].index(anchor_name)
    anchor = sch.get_sblock(anchor_name)
    kinds = _iter_kinds(sch, anchor)
    if len(blocks) - position > 2 or "O" in kinds or len(sch.get_loops(anchor)) != len(kinds):
        return None
    return anchor, blocks[:position], blocks[position + 1:]


def _producers(sch: s_tir.Schedule, anchor_name: str) -> list:
    """The blocks before the anchor (pads, casts, zero-point subtractions of its inputs). A select in
    an epilogue block (a quantize's NaN guard) is no pad: it is inlined into the tile like the rest."""
    blocks = _blocks(sch)
    return blocks[:[sch.get(b).name_hint for b in blocks].index(anchor_name)]


# At most this many tile shapes per kernel are offered to tuning (backends/tuning.py).
MAX_TILINGS = 16
# Bump when `tiling_candidates` changes its list (the default above all): tuning records name a shape by
# its position, so each version keeps a database of its own.
TILINGS_VERSION = 4


def tile_shapes(func: tirx.PrimFunc, cpu: CPUShape,
                weight_bounds: dict[str, int] | None = None) -> list[tuple[int, int]]:
    """(rows_tile, cols_tile) of each tiling candidate of `func` (the default first), on the dot-product
    intrinsic its default schedule uses; [] where the tiled reduction does not apply."""
    applies, dot = tiled_reduction_dot(func, cpu, weight_bounds)
    setup = _tiling_setup(s_tir.Schedule(func), cpu, dot, weight_bounds) if applies else None
    return [] if setup is None else [(t.rows_tile, t.cols_tile) for t in setup[-1]]


def tiling_candidates(sch: s_tir.Schedule, anchor, loop_of_iter: dict, cpu: CPUShape, dot: DotIntrinsic | None,
                      lanes: int) -> list[_Tiling]:
    """The tile shapes the tiled reduction may use, the default (the cost heuristic's choice) first."""
    if dot is None:
        return _plain_tilings(sch, anchor, loop_of_iter, cpu, lanes)[:MAX_TILINGS]
    return _dot_tilings(sch, anchor, loop_of_iter, cpu, dot)[:MAX_TILINGS]


def _plain_tilings(sch: s_tir.Schedule, anchor, loop_of_iter: dict, cpu: CPUShape, lanes: int) -> list[_Tiling]:
    """cols = the iter var of the output's innermost axis, rows = the next wide one. Default: the column
    tile of `_choose_cols_tile` and the most rows whose rows_tile x cols_tile accumulator fits in
    `cpu.max_accumulators` full-width vector registers; then every column tile of 1-4 vectors dividing the
    columns with each row tile within `cpu.accumulator_budget`, largest accumulators first."""
    def extent(var):
        return _extent(sch, loop_of_iter[var])

    axis_iters = [v for v in _output_axis_iters(sch, anchor) if v is not None]
    if not axis_iters or (extent(axis_iters[-1]) or 0) < min(lanes, 4):
        return []
    cols_var, cols = axis_iters[-1], extent(axis_iters[-1])
    rows = [v for v in axis_iters[:-1] if extent(v) not in (None, 1)]
    default_cols = _choose_cols_tile(cols, lanes)
    cols_tiles = [default_cols] + [v * lanes for v in range(1, 5) if cols % (v * lanes) == 0 and v * lanes != default_cols]
    if not rows:
        return [_Tiling(cols_var, c, None, 1) for c in cols_tiles]
    row_extent = extent(rows[-1])

    def row_tiles(cols_tile: int, default: bool) -> list[int]:
        width = _register_vector_width(cols_tile, lanes)
        registers = cpu.accumulator_budget
        if default:
            registers = min(registers, max(cpu.default_accumulators(width, lanes), 4))
        limit = max(registers // (cols_tile // width), 1)
        return sorted({_choose_rows_tile(row_extent, r) for r in range(1, limit + 1)}, reverse=True)

    default = _Tiling(cols_var, default_cols, rows[-1], row_tiles(default_cols, True)[0])
    others = [_Tiling(cols_var, c, rows[-1], r) for c in cols_tiles for r in row_tiles(c, False)]
    others = [t for t in others if (t.cols_tile, t.rows_tile) != (default.cols_tile, default.rows_tile)]
    return [default] + sorted(others, key=lambda t: -t.rows_tile * t.cols_tile)


# The widest column tile a dot-product schedule considers, in full-width vectors (int32 lanes): 4 vectors
# of a 16-lane intrinsic, 16 of a 4-lane one (which then amortize each broadcast over as many columns).
MAX_DOT_VECTORS = 4


def _dot_tilings(sch: s_tir.Schedule, anchor, loop_of_iter: dict, cpu: CPUShape,
                 dot: DotIntrinsic) -> list[_Tiling]:
    """Tiles for a dot-product intrinsic: R rows x V vectors of `dot.lanes` columns, R dividing the rows
    exactly (a partial tile's predicate defeats tensorize), within the vector registers (R x V
    accumulators, V weight vectors, the intrinsic's scratch). Per `depth` reduction steps the tile costs
    R broadcasts (`broadcast_ops` each), V weight loads and R x V intrinsics: ordered by the overhead
    per product, broadcast_ops / V + 1 / R, least first, among the tiles of at most
    `cpu.max_accumulators` full-width accumulators (the first is the default), then the larger ones;
    ties: the larger tile first. A depthwise intrinsic's per-lane activations are no broadcast that more
    vectors share: its overhead is (broadcast_ops + 1) / R, and its tiles keep their padded input window
    (`_window_bytes`) within a stack-slot tile buffer."""
    def extent(var):
        return _extent(sch, loop_of_iter[var])

    axis_iters = [v for v in _output_axis_iters(sch, anchor) if v is not None]
    if not axis_iters or (extent(axis_iters[-1]) or 0) % dot.lanes:
        return []
    cols_var, col_vectors = axis_iters[-1], extent(axis_iters[-1]) // dot.lanes
    rows = [v for v in axis_iters[:-1] if extent(v) not in (None, 1)]
    row_extent = extent(rows[-1]) if rows else 1
    most = cpu.default_accumulators(dot.lanes, cpu.lanes(32))  # int32 accumulators; AVX2's 8 lanes on AVX-512
    widest = MAX_DOT_VECTORS * max(cpu.lanes(32) // dot.lanes, 1)
    shapes = []
    for vectors in (v for v in range(1, widest + 1) if col_vectors % v == 0):
        for rows_tile in (d for d in range(1, row_extent + 1) if row_extent % d == 0):
            if rows_tile * vectors + vectors + dot.scratch_registers > cpu.vector_registers:
                break
            if dot.depthwise and rows and (_window_bytes(sch, anchor, rows[-1], rows_tile, dot.lanes)
                                           > TILE_BUFFER_MAX_BYTES):
                break
            # a depthwise lane's activations serve only its own channel: wider tiles share nothing
            overhead = ((dot.broadcast_ops + 1) / rows_tile if dot.depthwise
                        else dot.broadcast_ops / vectors + 1 / rows_tile)
            shapes.append(((rows_tile * vectors > most, overhead, -rows_tile * vectors), rows_tile, vectors))
    return [_Tiling(cols_var, vectors * dot.lanes, rows[-1] if rows else None, rows_tile)
            for _, rows_tile, vectors in sorted(shapes, key=lambda shape: shape[0])]


def _window_bytes(sch: s_tir.Schedule, anchor, rows_var: tirx.Var, rows_tile: int, lanes: int) -> int:
    """Bytes of the activation one tile of `rows_tile` rows x `lanes` channels reads (all its taps): the
    padded window `_pad_per_tile` computes per tile."""
    stmt = sch.get(anchor)
    channel = _output_axis_iters(sch, anchor)[-1]
    ranges = {}
    for iv in stmt.iter_vars:
        if int(iv.iter_type) == tirx.IterVar.CommReduce:
            ranges[iv.var] = sym.IntervalSet(0, iv.dom.extent - 1)
        else:
            span = rows_tile if iv.var.same_as(rows_var) else lanes if iv.var.same_as(channel) else 1
            ranges[iv.var] = sym.IntervalSet(0, span - 1)
    activation = _activation_read(stmt)
    analyzer = sym.Analyzer()
    size = activation.source.dtype.bits // 8
    for dim in activation.region:
        bounds = analyzer.int_set(dim.min, ranges)
        size *= int(bounds.max_value) - int(bounds.min_value) + 1
    return size


def _tile_loops(sch: s_tir.Schedule, anchor, loop_of_iter: dict, tiling: _Tiling):
    """Split and reorder the anchor's loops to [outer..., cols_o, rows_o] [reduction...] [rows_i, cols_i]."""
    kinds = _iter_kinds(sch, anchor)
    iter_vars = [iv.var for iv in sch.get(anchor).iter_vars]
    tiled = {tiling.cols_var} | ({tiling.rows_var} if tiling.rows_var is not None else set())
    outer = [loop_of_iter[v] for v, k in zip(iter_vars, kinds) if k == "S" and v not in tiled]
    reduce = [loop_of_iter[v] for v, k in zip(iter_vars, kinds) if k == "R"]
    cols_outer, cols_inner = sch.split(loop_of_iter[tiling.cols_var], factors=[None, tiling.cols_tile])
    tile_outer, tile_inner = outer + [cols_outer], [cols_inner]  # cols outside rows: a weight panel serves all rows
    if tiling.rows_var is not None:
        rows_outer, rows_inner = sch.split(loop_of_iter[tiling.rows_var], factors=[None, tiling.rows_tile])
        tile_outer, tile_inner = tile_outer + [rows_outer], [rows_inner, cols_inner]
    sch.reorder(*tile_outer, *reduce, *tile_inner)
    return tile_outer, tile_inner, reduce


def _place_epilogue(sch: s_tir.Schedule, anchor, epilogue, tile_outer: list, lanes: int) -> None:
    """Accumulate in a tile-sized local buffer; the epilogue (or a plain write-back) runs per tile.

    An epilogue whose output is larger than the anchor's (a broadcast: squeeze-excitation) is not
    passed here; it runs on its own and the anchor writes back its tiles."""
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, tile_outer[-1], preserve_unit_loops=True)
        sch.set_scope(anchor, 0, TILE_SCOPE)
    else:
        epilogue = sch.cache_write(anchor, 0, TILE_SCOPE)
        sch.reverse_compute_at(epilogue, tile_outer[-1], preserve_unit_loops=True)
    _vectorize_tile(sch, epilogue, len(tile_outer), lanes)


def pack_weights_in_place(sch: s_tir.Schedule) -> None:
    """Re-lay the weights (the PrimFunc's "layout_free_buffers") in the order the loops read them.

    MetaSchedule's RewriteLayout derives the packed layout from the loop nest: for the tiled
    reduction that is [cols tiles, reduction..., cols tile], so each tile's weights are one
    contiguous panel. The repacking is a separate block that SplitLayoutRewritePreproc and
    LiftTransformParams (x86.py) move into main_transform_params: it runs once, not per inference.
    Packing is an optimization: where it fails (tried on a copy first) the weights keep their layout.
    """
    func = sch.mod["main"]
    if func.attrs is None or "layout_free_buffers" not in func.attrs or not list(func.attrs["layout_free_buffers"]):
        return
    try:
        packs = meta_schedule.postproc.RewriteLayout().apply(sch.copy())
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("weight packing failed: %s", exc)
        return
    if packs:
        meta_schedule.postproc.RewriteLayout().apply(sch)


def _reduction_extent(sch: s_tir.Schedule, block) -> int:
    """Multiply-adds per output element: the product of the block's reduction extents."""
    total = 1
    for iv in sch.get(block).iter_vars:
        if int(iv.iter_type) == tirx.IterVar.CommReduce:
            total *= int(iv.dom.extent) if isinstance(iv.dom.extent, tirx.IntImm) else 1 << 20
    return total


def _same_output_shape(sch: s_tir.Schedule, block, other) -> bool:
    def shape(b):
        return [int(d) for d in sch.get(b).writes[0].source.shape]
    return shape(block) == shape(other)


def _output_block_names(sch: s_tir.Schedule) -> list[str]:
    return [sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))]


def _loop_of_iter(sch: s_tir.Schedule, block, loops) -> dict | None:
    """Map each block iter var to the loop it is bound to (None unless every binding is a bare loop var)."""
    realize = _sblock_realize(sch, block)
    loop_vars = {sch.get(l).loop_var: l for l in loops}
    mapping = {}
    for iv, value in zip(sch.get(block).iter_vars, realize.iter_values):
        if not isinstance(value, tirx.Var) or value not in loop_vars:
            return None
        mapping[iv.var] = loop_vars[value]
    return mapping


def _sblock_realize(sch: s_tir.Schedule, block):
    return tvm_ffi.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, block)


def total_work(sch: s_tir.Schedule, block) -> int:
    """Iterations of the loops around `block`."""
    total = 1
    for loop in sch.get_loops(block):
        total *= _extent(sch, loop) or 1
    return total


def _register_vector_width(extent: int, lanes: int) -> int:
    """The widest power-of-two vector (at most `lanes`) dividing `extent`; LLVM handles odd widths badly."""
    width = lanes
    while width > 1 and extent % width:
        width //= 2
    return width


def _vectorize_in_registers(sch: s_tir.Schedule, loop, extent: int, lanes: int) -> None:
    """Vectorize `loop` as whole machine vectors: split into an unrolled loop of power-of-two vectors."""
    width = _register_vector_width(extent, lanes)
    if width == extent:
        sch.vectorize(loop)
        return
    repeats, vector = sch.split(loop, factors=[None, width])
    sch.unroll(repeats)
    if width > 1:
        sch.vectorize(vector)


def _vectorize_tile(sch: s_tir.Schedule, block, skip: int, lanes: int) -> None:
    """Vectorize the innermost loop of a block computed inside the tile (first `skip` loops are shared)."""
    loops = sch.get_loops(block)[skip:]
    if not loops:
        return
    inner = loops[-1]
    extent = _extent(sch, inner)
    if extent is not None and extent > 1:
        _vectorize_in_registers(sch, inner, extent, lanes)
    for loop in loops[:-1]:
        if 1 < (_extent(sch, loop) or 0) <= MAX_UNROLL:
            sch.unroll(loop)


# ---------------------------------------------------------------------------------------------
# Rule 2: every block on its own (elementwise, row reductions, everything else)
# ---------------------------------------------------------------------------------------------
def schedule_loops(func: tirx.PrimFunc, cpu: CPUShape) -> tirx.PrimFunc | None:
    """Every block on its own: injective blocks parallel + vectorized, reductions over the innermost
    (contiguous) axis vectorized through a vector of partial results (rfactor), other reductions
    parallel over their leading spatial loops."""
    sch = s_tir.Schedule(func)
    _inline_producers(sch, keep=set(_output_block_names(sch)))
    lanes = cpu.lanes(32)
    for block in _blocks(sch):
        if not _is_reduction(sch, block):
            _parallel_vectorize(sch, block, lanes)
        elif not _vectorize_inner_reduction(sch, block, lanes):
            _parallel_outer_spatial(sch, block)
    return sch.mod["main"]


def _vectorize_inner_reduction(sch: s_tir.Schedule, block, lanes: int) -> bool:
    """Reduce the innermost axis `width` elements at a time into a register vector of partial results,
    then reduce that vector: rfactor -> the partials block runs per output element, vectorized."""
    kinds = _iter_kinds(sch, block)
    loops = sch.get_loops(block)
    spatial_count = len(kinds) - len(kinds.lstrip("S"))
    if len(loops) != len(kinds) or not kinds.endswith("R") or "S" in kinds[spatial_count:] or spatial_count == 0:
        return False
    reduce = loops[spatial_count:]
    merged = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
    extent = _extent(sch, merged) or 0
    width = _register_vector_width(extent, lanes)
    if width < 4 or extent < 2 * width:
        return False
    work = total_work(sch, block)
    _, lane_loop = sch.split(merged, factors=[None, width])
    partials = sch.rfactor(lane_loop, factor_axis=len(sch.get(block).writes[0].region))
    outer = sch.get_loops(block)[:spatial_count]
    row = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.compute_at(partials, row, preserve_unit_loops=True)
    sch.set_scope(partials, 0, TILE_SCOPE)
    if work >= PARALLEL_MIN_WORK and (_extent(sch, row) or 0) > 1:
        sch.parallel(row)
    inner = sch.get_loops(partials)[1:]  # [lanes, unit loops..., chunks]: put the lanes innermost
    sch.reorder(inner[-1], inner[0])
    inner = sch.get_loops(partials)[1:]
    sch.vectorize(inner[-1])
    sch.decompose_reduction(partials, inner[0])
    return True


def _parallel_vectorize(sch: s_tir.Schedule, block, lanes: int) -> None:
    """An injective block: outer loops fused and run in parallel, the innermost loop in vectors.

    The innermost loop stays separate so that index arithmetic (div/mod from reshapes and
    transposes) is computed per row, not per element.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    work = total_work(sch, block)
    inner = loops[-1]
    inner_extent = _extent(sch, inner) or 1
    if len(loops) > 1 and inner_extent < 4:  # too short to vectorize alone: merge with its parent
        inner = sch.fuse(loops[-2], loops[-1])
        loops = sch.get_loops(block)
        inner_extent = _extent(sch, inner) or 1
    width = _register_vector_width(inner_extent, lanes)
    if width >= 4:
        if width < inner_extent:
            _, vector = sch.split(inner, factors=[None, width])
            sch.vectorize(vector)
        else:
            sch.vectorize(inner)
    outer = loops[:-1]
    if not outer:
        return
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if work >= PARALLEL_MIN_WORK and (_extent(sch, fused) or 0) > 1:
        sch.parallel(fused)


def _parallel_outer_spatial(sch: s_tir.Schedule, block) -> None:
    kinds = _iter_kinds(sch, block)
    loops = sch.get_loops(block)
    if len(loops) != len(kinds):
        return
    leading = []
    for loop, kind in zip(loops, kinds):
        if kind != "S":
            break
        leading.append(loop)
    if not leading:
        return
    fused = sch.fuse(*leading) if len(leading) > 1 else leading[0]
    if total_work(sch, block) >= PARALLEL_MIN_WORK and (_extent(sch, fused) or 0) > 1:
        sch.parallel(fused)
