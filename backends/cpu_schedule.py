"""Default CPU schedules for the PrimFuncs of a fused Relax module: no tuning, one deterministic choice.

TVM 0.27's default llvm pipeline leaves every PrimFunc as naive loop nests (one core, no vectors),
which runs convolutions ~100x slower than ONNX Runtime. `ScheduleCPU(vector_bits, registers)` is a
module pass that schedules each PrimFunc with the first rule that applies:

1. **tiled reduction** (conv, matmul, pooling, reductions whose output's innermost axis is wide):
   the output is tiled as [outer spatial..., rows/rows_tile, cols/cols_tile] x [reduction loops] x
   [rows_tile (unrolled), cols_tile (vectorized)], where `cols` is the spatial axis indexing the
   output's innermost (contiguous) dimension and `rows` the next one. The rows_tile x cols_tile
   accumulator lives in a local buffer (registers), the outer tile loops run in parallel, and the
   fused elementwise epilogue (bias, activation, residual add) is computed per tile.
   Producers that only copy (a pad that pads nothing, a reshape) are inlined; real pads stay
   separate (materialized once, in parallel) so the inner loop has no boundary tests.
2. **row reductions** (softmax, layer norm): dlight's CPU `Reduction` rule (parallel rows,
   vectorized elementwise parts).
3. **everything else** (elementwise, broadcast, transpose, gather, small reductions): each block's
   spatial loops are fused, split into a parallel outer loop and a vectorized inner loop when the
   innermost extent allows.

A rule that fails on some PrimFunc leaves that function as it was (correct, only slower), so a
schedule can cost speed but never correctness. Convolutions reach this pass in NHWC layout (see
x86.py), where `cols` is the output channel: weights load as vectors, inputs broadcast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tvm_ffi
from tvm import ir, s_tir, tirx
from tvm.ir.transform import PassContext, module_pass
from tvm.s_tir import dlight
from tvm.target import Target

log = logging.getLogger(__name__)

# Below this many output elements x reduction steps, a kernel runs on one thread (fork/join costs more).
PARALLEL_MIN_WORK = 1 << 14


@dataclass(frozen=True)
class CPUShape:
    """What the schedules need to know about the CPU: vector width and vector register count."""

    vector_bits: int = 256
    vector_registers: int = 16

    def lanes(self, dtype_bits: int) -> int:
        return max(self.vector_bits // dtype_bits, 1)

    @property
    def accumulator_budget(self) -> int:
        """Vector registers the tiled-reduction accumulator may occupy (the rest hold operands)."""
        return max(self.vector_registers * 3 // 4, 4)


@module_pass(opt_level=0, name="ScheduleCPU")
class ScheduleCPU:  # pylint: disable=too-few-public-methods
    """Apply the default CPU schedule to every PrimFunc not yet scheduled."""

    def __init__(self, cpu: CPUShape) -> None:
        self.cpu = cpu

    def transform_module(self, mod: ir.IRModule, _ctx: PassContext) -> ir.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not _is_scheduled(func):
                scheduled = schedule_prim_func(func, self.cpu)
                if scheduled is not None:
                    updates[gvar] = scheduled.with_attr("tirx.is_scheduled", True)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and "tirx.is_scheduled" in func.attrs and bool(func.attrs["tirx.is_scheduled"])


def schedule_prim_func(func: tirx.PrimFunc, cpu: CPUShape) -> tirx.PrimFunc | None:
    """The scheduled function, or None when no rule applies (the caller keeps the original)."""
    for rule in (schedule_tiled_reduction, schedule_row_reduction, schedule_loops):
        try:
            scheduled = rule(func, cpu)
        except Exception as exc:  # a schedule primitive refused: try the next rule
            log.debug("rule %s failed: %s", rule.__name__, exc)
            continue
        if scheduled is not None:
            return scheduled
    return None


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
    """Inline every injective block that can be inlined into its consumers, except `keep` names."""
    changed = True
    while changed:
        changed = False
        for block in _blocks(sch):
            name = sch.get(block).name_hint
            if name in keep or _is_reduction(sch, block):
                continue
            try:
                sch.compute_inline(block)
                changed = True
            except Exception:  # an output block, or one whose consumers cannot take it
                continue


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
    """Unrolled tile: the largest divisor of `extent` not above `limit`."""
    return max(d for d in range(1, min(extent, limit) + 1) if extent % d == 0)


def schedule_tiled_reduction(func: tirx.PrimFunc, cpu: CPUShape) -> tirx.PrimFunc | None:
    sch = s_tir.Schedule(func)
    reductions = [b for b in _blocks(sch) if _is_reduction(sch, b)]
    if len(reductions) != 1:
        return None
    anchor = reductions[0]
    anchor_name = sch.get(anchor).name_hint
    padding_blocks = {sch.get(b).name_hint for b in _blocks(sch)
                      if b != anchor and _has_if_then_else(sch, b) and not _is_reduction(sch, b)}
    _inline_producers(sch, keep={anchor_name} | padding_blocks | set(_output_block_names(sch)))
    blocks = _blocks(sch)
    anchor = sch.get_sblock(anchor_name)
    position = [sch.get(b).name_hint for b in blocks].index(anchor_name)
    producers, consumers = blocks[:position], blocks[position + 1:]
    if len(consumers) > 1:
        return None

    stmt = sch.get(anchor)
    kinds = _iter_kinds(sch, anchor)
    loops = sch.get_loops(anchor)
    if len(loops) != len(kinds) or "O" in kinds:
        return None
    loop_of_iter = _loop_of_iter(sch, anchor, loops)
    if loop_of_iter is None:
        return None
    axis_iters = [v for v in _output_axis_iters(sch, anchor) if v is not None]
    wide = [v for v in axis_iters if _extent(sch, loop_of_iter[v]) not in (None, 1)]
    if not wide:
        return None
    cols_var = axis_iters[-1]
    cols_extent = _extent(sch, loop_of_iter[cols_var])
    dtype_bits = stmt.writes[0].source.dtype.bits
    lanes = cpu.lanes(dtype_bits)
    if cols_extent is None or cols_extent < min(lanes, 4):
        return None
    rows_candidates = [v for v in axis_iters[:-1] if _extent(sch, loop_of_iter[v]) not in (None, 1)]
    rows_var = rows_candidates[-1] if rows_candidates else None

    cols_tile = _choose_cols_tile(cols_extent, lanes)
    vectors_per_row = -(-cols_tile // lanes)
    rows_tile = 1
    if rows_var is not None:
        rows_tile = _choose_rows_tile(_extent(sch, loop_of_iter[rows_var]), max(cpu.accumulator_budget // vectors_per_row, 1))

    spatial = [loop_of_iter[iv.var] for iv, k in zip(stmt.iter_vars, kinds) if k == "S"]
    reduce = [loop_of_iter[iv.var] for iv, k in zip(stmt.iter_vars, kinds) if k == "R"]
    cols_outer, cols_inner = sch.split(loop_of_iter[cols_var], factors=[None, cols_tile])
    if rows_var is not None:
        rows_outer, rows_inner = sch.split(loop_of_iter[rows_var], factors=[None, rows_tile])
    outer = [l for l in spatial if not (l.same_as(loop_of_iter[cols_var]) or
                                        (rows_var is not None and l.same_as(loop_of_iter[rows_var])))]
    tile_outer = outer + ([rows_outer] if rows_var is not None else []) + [cols_outer]
    tile_inner = ([rows_inner] if rows_var is not None else []) + [cols_inner]
    sch.reorder(*tile_outer, *reduce, *tile_inner)
    tile_loop = tile_outer[-1]

    work = _total_work(sch, anchor)
    if consumers:
        sch.reverse_compute_at(consumers[0], tile_loop, preserve_unit_loops=True)
        sch.set_scope(anchor, 0, "local")
        epilogue = consumers[0]
    else:
        epilogue = sch.cache_write(anchor, 0, "local")
        sch.reverse_compute_at(epilogue, tile_loop, preserve_unit_loops=True)
    _vectorize_tile(sch, epilogue, len(tile_outer))
    if rows_var is not None:
        sch.unroll(rows_inner)
    _vectorize_in_registers(sch, cols_inner, cols_tile, lanes)
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(sch.fuse(*tile_outer))
    if reduce:  # after parallel: a decomposed update block no longer passes the parallel check
        init = sch.decompose_reduction(anchor, reduce[0])
        _vectorize_tile(sch, init, 1)
    for block in producers:
        _parallel_vectorize(sch, block, lanes)
    return sch.mod["main"]


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


def _total_work(sch: s_tir.Schedule, block) -> int:
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


def _vectorize_tile(sch: s_tir.Schedule, block, skip: int) -> None:
    """Vectorize the innermost loop of a block computed inside the tile (first `skip` loops are shared)."""
    loops = sch.get_loops(block)[skip:]
    if not loops:
        return
    inner = loops[-1]
    extent = _extent(sch, inner)
    if extent is not None and extent > 1:
        sch.vectorize(inner)
    for loop in loops[:-1]:
        if (_extent(sch, loop) or 0) > 1:
            sch.unroll(loop)


# ---------------------------------------------------------------------------------------------
# Rule 2: row reductions (softmax, layer norm)
# ---------------------------------------------------------------------------------------------
def schedule_row_reduction(func: tirx.PrimFunc, cpu: CPUShape) -> tirx.PrimFunc | None:
    scheduled = dlight.cpu.Reduction().apply(func, Target.current(allow_none=False), False)
    return None if scheduled is None else scheduled.mod["main"]


# ---------------------------------------------------------------------------------------------
# Rule 3: loops (elementwise and everything else)
# ---------------------------------------------------------------------------------------------
def schedule_loops(func: tirx.PrimFunc, cpu: CPUShape) -> tirx.PrimFunc | None:
    sch = s_tir.Schedule(func)
    _inline_producers(sch, keep=set(_output_block_names(sch)))
    for block in _blocks(sch):
        if _is_reduction(sch, block):
            _parallel_outer_spatial(sch, block)
        else:
            _parallel_vectorize(sch, block, cpu.lanes(32))
    return sch.mod["main"]


def _parallel_vectorize(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Fuse an injective block's loops, run the outer part in parallel and the inner part in vectors."""
    loops = sch.get_loops(block)
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = _extent(sch, fused)
    if extent is None or extent < 2:
        return
    if extent % lanes == 0 and extent >= lanes:
        outer, inner = sch.split(fused, factors=[None, lanes])
        sch.vectorize(inner)
    else:
        outer = fused
    if extent >= PARALLEL_MIN_WORK:
        sch.parallel(outer)


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
    if _total_work(sch, block) >= PARALLEL_MIN_WORK and (_extent(sch, fused) or 0) > 1:
        sch.parallel(fused)
