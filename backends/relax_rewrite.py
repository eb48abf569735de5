"""Helpers shared by bitsmith's Relax rewriting passes (fast math, requantize, transpose sinking)."""

from __future__ import annotations

import tvm
from tvm import relax


def is_call(expr: relax.Expr, op_name: str) -> bool:
    """Whether `expr` is a call of the Relax operator `op_name` (e.g. "relax.permute_dims")."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name


def rewrite_functions(mod: tvm.IRModule, mutator: relax.PyExprMutator) -> tvm.IRModule:
    """`mutator` (constructed on `mod`) applied to every Relax function of `mod`; PrimFuncs it emits join them."""
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
