"""Requantization of an int32 accumulator in 32-bit vector lanes, bit for bit the int64 reference.

relax_emit writes the requantize epilogue of QConv / QMatMul / QGlobalAveragePool as the reference
computes it (`bitsmith.interpreter.requantize`), per output channel c:

    clamp(((int64(acc) * M[c] + 2^(s[c]-1)) >> s[c]) + zero_point, out_min, out_max)

with dyadic multipliers M in [2^30, 2^31) and shifts s in [1, 62] (passes/lower_integer.py). In
int64 lanes a CPU does four at a time, and AVX2 has neither a 64-bit multiply nor a 64-bit
arithmetic shift: LLVM emulates both (measured: the epilogue then costs more than the
convolution's multiply-adds in MobileNetV2's 1x1 layers).

When every shift is at least 33 (a real factor below 2^-1, the usual case) the same integers come
from 32-bit lanes. With P = acc * M (exact in 64 bits) and s = 32 + t, t >= 1, the rounding term
2^(s-1) = 2^(t-1) * 2^32 is a multiple of 2^32, so nested floor division gives

    (P + 2^(s-1)) >> s  ==  ((P >> 32) + 2^(t-1)) >> t

where P >> 32 is the high half of a signed 32 x 32 -> 64-bit product (LLVM's `mulhs`: two vpmuldq
for eight lanes on AVX2) and the rest is int32 arithmetic: |P >> 32| <= 2^30 and 2^(t-1) <= 2^29,
so nothing overflows, and the zero point and clamp stay in int32.

`RequantizeInInt32` is the Relax pass that finds that chain (astype int64, multiply, add, right
shift, [add zero point], maximum, minimum, astype) after the layout conversion, checks its constants
(the rounding term must be 2^(s-1)), and replaces it with one TE function that FuseOps fuses into
the producing convolution or matmul as its epilogue. A chain it cannot prove equal (a shift of 32
or less, a multiplier outside int32) is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax, te, tirx

from .relax_rewrite import is_call, rewrite_functions

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
MIN_HIGH_HALF_SHIFT = 33  # s = 32 + t with t >= 1: the rounding term is a multiple of 2^32
MAX_SHIFT = 62


@dataclass
class Requantize:
    """The operands of one matched requantize chain (arrays broadcast against the accumulator)."""

    acc: relax.Expr
    multiplier: np.ndarray
    shift: np.ndarray
    zero_point: int
    out_min: int
    out_max: int
    out_dtype: str


def uses_high_half(multiplier: np.ndarray, shift: np.ndarray) -> bool:
    """Whether the 32-bit form is exact: multipliers in [0, 2^31), shifts in [33, 62]."""
    return (bool(np.all(multiplier >= 0)) and bool(np.all(multiplier <= INT32_MAX))
            and bool(np.all(shift >= MIN_HIGH_HALF_SHIFT)) and bool(np.all(shift <= MAX_SHIFT)))


def _constant(expr: relax.Expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def _dtype(expr: relax.Expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


def match_requantize(final: relax.Call, bound: Callable[[relax.Expr], relax.Expr]) -> Requantize | None:
    """The requantize chain ending in `final` (an astype), walking back through `bound` (a var's value)."""
    if not is_call(final, "relax.astype"):
        return None
    steps: dict[str, np.ndarray] = {}
    expr = bound(final.args[0])
    for name, key in (("relax.minimum", "out_max"), ("relax.maximum", "out_min"), ("relax.add", "zero_point"),
                      ("relax.right_shift", "shift"), ("relax.add", "rounding"), ("relax.multiply", "multiplier")):
        if key == "zero_point" and is_call(expr, "relax.right_shift"):
            steps[key] = np.zeros((), np.int64)  # no zero point: the chain goes straight to the shift
            continue
        value = _constant(expr.args[1]) if is_call(expr, name) else None
        if value is None or value.dtype != np.int64 or _dtype(expr) != "int64":
            return None
        steps[key] = value
        expr = bound(expr.args[0])
    if not is_call(expr, "relax.astype") or _dtype(expr) != "int64" or _dtype(expr.args[0]) != "int32":
        return None
    scalars = [steps[k] for k in ("out_max", "out_min", "zero_point")]
    if any(v.size != 1 for v in scalars):
        return None
    shift, rounding = np.broadcast_arrays(steps["shift"], steps["rounding"])
    if np.any(shift < 1) or np.any(shift > MAX_SHIFT) or np.any(rounding != np.left_shift(np.int64(1), shift - 1)):
        return None
    out_max, out_min, zero_point = (int(v.reshape(-1)[0]) for v in scalars)
    if out_min < INT32_MIN or out_max > INT32_MAX or not INT32_MIN <= zero_point <= INT32_MAX:
        return None
    return Requantize(expr.args[0], steps["multiplier"], steps["shift"], zero_point, out_min, out_max,
                      str(final.attrs.dtype))


def _requantize_int32(acc: te.Tensor, *channel_tensors: te.Tensor, scalars: tuple[int, int, int] | None,
                      zero_point: int, out_min: int, out_max: int, out_dtype: str) -> te.Tensor:
    """The 32-bit form; (multiplier, shift - 32, rounding) are `scalars`, or three `channel_tensors` of
    a shape broadcasting against the accumulator."""
    def operands(idx: tuple) -> list[tirx.PrimExpr]:
        if scalars is not None:
            return [tirx.const(v, "int32") for v in scalars]
        return [t[tuple(i if int(d) != 1 else 0 for i, d in zip(idx, t.shape))] for t in channel_tensors]

    def element(*idx: tirx.Var) -> tirx.PrimExpr:
        multiplier, shift, rounding = operands(idx)
        # the bitcast pair keeps TIR's simplifier from widening the accumulator's own sum (bias) to int64,
        # which would hide the 32 x 32-bit product from LLVM (it then multiplies in 64 bits)
        opaque = tirx.reinterpret("int32", tirx.reinterpret("float32", acc[idx]))
        product = tirx.Cast("int64", opaque) * tirx.Cast("int64", multiplier)
        high = tirx.Cast("int32", product >> tirx.const(32, "int64"))
        value = ((high + rounding) >> shift) + tirx.const(zero_point, "int32")
        value = tirx.max(tirx.min(value, tirx.const(out_max, "int32")), tirx.const(out_min, "int32"))
        return tirx.Cast(out_dtype, value)

    return te.compute(acc.shape, element, name="requantize")


def emit_int32_requantize(builder: relax.BlockBuilder, chain: Requantize) -> relax.Expr:
    """A call_tir of the 32-bit form of `chain` (which must satisfy `uses_high_half`)."""
    rank = len(chain.acc.ty.shape)  # type: ignore[attr-defined]
    multiplier, shift = np.broadcast_arrays(chain.multiplier, chain.shift)
    t = (shift - 32).astype(np.int32)
    arrays = [multiplier.astype(np.int32), t, np.left_shift(np.int32(1), t - 1).astype(np.int32)]
    operands: list[relax.Expr] = [chain.acc]
    scalars = None
    if multiplier.size == 1:
        scalars = tuple(int(a.reshape(-1)[0]) for a in arrays)
    else:
        shape = (1,) * (rank - multiplier.ndim) + multiplier.shape
        operands += [relax.const(np.ascontiguousarray(a).reshape(shape), "int32") for a in arrays]
    return builder.call_te(_requantize_int32, *operands, scalars=scalars, zero_point=chain.zero_point,
                           out_min=chain.out_min, out_max=chain.out_max, out_dtype=chain.out_dtype,
                           primfunc_name_hint="requantize_int32")


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        chain = match_requantize(call, self._bound)
        if chain is None or not uses_high_half(chain.multiplier, chain.shift):
            return call
        return emit_int32_requantize(self.builder_, chain)

    def _bound(self, expr: relax.Expr) -> relax.Expr:
        if isinstance(expr, relax.Var):
            value = self.lookup_binding(expr)
            return value if value is not None else expr
        return expr


@tvm.transform.module_pass(opt_level=0, name="RequantizeInInt32")
def requantize_in_int32(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Replace each provably equal int64 requantize chain by its 32-bit form (see the module docstring).
    The chain's int64 bindings are left dead for DeadCodeElimination."""
    return rewrite_functions(mod, _Rewriter(mod))
