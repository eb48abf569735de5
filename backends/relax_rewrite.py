"""Helpers shared by bitsmith's Relax rewriting passes (fast math, requantize, transpose sinking, byte lookups)."""

from __future__ import annotations

import tvm
from tvm import relax


def is_call(expr: relax.Expr, op_name: str) -> bool:
    """Whether `expr` is a call of the Relax operator `op_name` (e.g. "relax.permute_dims")."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name


def bound_value(mutator: relax.PyExprMutator, expr: relax.Expr) -> relax.Expr:
    """The value `expr` is bound to, through aliases (y = x: a value named after its ONNX tensor); a
    variable bound to nothing (a function parameter) is returned as it is."""
    while isinstance(expr, relax.Var):
        value = mutator.lookup_binding(expr)
        if value is None:
            return expr
        expr = value
    return expr


def rewrite_functions(mod: tvm.IRModule, mutator: relax.PyExprMutator) -> tvm.IRModule:
    """`mutator` (constructed on `mod`) applied to every Relax function of `mod`; PrimFuncs it emits join them."""
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
