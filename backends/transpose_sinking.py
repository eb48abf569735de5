"""Layout transposes moved past the ops that do not care about layout, and table lookups fused as elementwise ops.

`sink_transposes` moves layout transposes past the ops that do not care about layout, so that opposite
ones meet and cancel.

ConvertLayout (x86.py) runs convolutions in NHWC and converts the ops around them that it knows. It
does not know `take` (relax_emit's table lookups: QLookup, an integer graph's activation functions),
so every lookup between two convolutions gets a transpose to NCHW before it and one back to NHWC
after it: PP-OCRv4 det's integer graph spends a fifth of its time in transposes.

A per-tensor lookup (a 1-D table) reads each element on its own, as do `astype` and `pad` (with its
widths permuted), so for those

    op(permute_dims(x, axes)) == permute_dims(op'(x), axes)

The same holds, with the axis renumbered, for a gather along one axis by 1-D indices (relax_emit's
nearest Resize: a take along H, then one along W) and for a concatenation of tensors all permuted
alike; and for an elementwise binary op whose operands are permuted alike or are scalars (a QAdd's
integer chain). Without those, PP-OCRv4 det's FPN upsampled, added and concatenated in NCHW between
NHWC convolutions (3 ms of its 25 at one thread, mostly strided transposing gathers).

`SinkTransposes` rewrites each such op to run on x and moves the permute_dims after it; a permute_dims
of a permute_dims becomes one (or none, when they are inverses). The transposes left behind are dead
and go with DeadCodeElimination. Every rewrite computes the same integers in another order of memory.

`lookups_are_elementwise`: TVM classifies a gather (the legalized take) as opaque, so FuseOps keeps
each lookup a kernel of its own, a round trip through memory after every convolution of an integer
graph with activation tables. A lookup in a 1-D table is elementwise in its index tensor (the table
is read like a constant), and is marked so after AnnotateTIROpPattern: it then fuses into the
producing convolution's epilogue.
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx
from tvm.relax import op as R

from .relax_rewrite import bound_value, is_call, rewrite_functions

PERMUTE_DIMS = "relax.permute_dims"
# op -> position of the operand whose layout the result follows
LAYOUT_FOLLOWING = {"relax.astype": 0, "relax.nn.pad": 0, "relax.take": 1}
# elementwise ops that follow their operands' layout when both are permuted alike (or one is a scalar)
ELEMENTWISE_BINARY = {f"relax.{name}" for name in ("add", "subtract", "multiply", "right_shift", "left_shift",
                                                  "maximum", "minimum", "bitwise_and", "bitwise_or")}


def _ndim(expr: relax.Expr) -> int:
    return int(getattr(expr.ty, "ndim", -1))


def _unpermuted_pad_width(pad_width: list[int], axes: list[int]) -> list[int]:
    """The widths that pad x as `pad_width` pads permute_dims(x, axes): dimension i of the permuted
    tensor is dimension axes[i] of x."""
    widths = [0] * len(pad_width)
    for i, axis in enumerate(axes):
        widths[2 * axis], widths[2 * axis + 1] = pad_width[2 * i], pad_width[2 * i + 1]
    return widths


@relax.expr_functor.mutator
class _Sinker(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
        if name == PERMUTE_DIMS:
            return self._compose(call)
        if name == "relax.take" and _ndim(call.args[0]) > 1 and _ndim(call.args[1]) == 1:
            return self._gather(call)
        if name == "relax.concat":
            return self._concat(call)
        if name in ELEMENTWISE_BINARY:
            return self._elementwise(call)
        position = LAYOUT_FOLLOWING.get(name)
        if position is None or (name == "relax.take" and (_ndim(call.args[0]) != 1 or int(call.attrs.axis) != 0)):
            return call
        permuted = self._permuted(call.args[position])
        if permuted is None:
            return call
        source, axes = permuted
        if name == "relax.nn.pad":
            inner = R.nn.pad(source, _unpermuted_pad_width([int(w) for w in call.attrs.pad_width], axes),
                             pad_mode=str(call.attrs.pad_mode), pad_value=float(call.attrs.pad_value))
        else:
            args = list(call.args)
            args[position] = source
            inner = relax.Call(call.op, args, call.attrs)
        return R.permute_dims(self.builder_.emit(inner), axes)

    def _gather(self, call: relax.Call) -> relax.Expr:
        """take(permute_dims(x, axes), indices, axis=a) with 1-D indices (nearest resize, slicing by
        index) = permute_dims(take(x, indices, axis=axes[a]), axes): the gathered axis keeps its place."""
        permuted = self._permuted(call.args[0])
        if permuted is None or call.attrs.axis is None:
            return call
        source, axes = permuted
        axis = int(call.attrs.axis) % len(axes)
        inner = R.take(source, call.args[1], axis=axes[axis], mode=str(call.attrs.mode))
        return R.permute_dims(self.builder_.emit(inner), axes)

    def _elementwise(self, call: relax.Call) -> relax.Expr:
        """op(permute_dims(x, axes), permute_dims(y, axes)) = permute_dims(op(x, y), axes), and so with a
        scalar for either operand (equal ranks broadcast alike in either layout)."""
        permuted = [None if _ndim(arg) == 0 else self._permuted(arg) for arg in call.args]
        tensors = [p for p in permuted if p is not None]
        if (not tensors or any(p is None and _ndim(arg) != 0 for p, arg in zip(permuted, call.args))
                or any(p[1] != tensors[0][1] for p in tensors)):
            return call
        args = [arg if p is None else p[0] for p, arg in zip(permuted, call.args)]
        return R.permute_dims(self.builder_.emit(relax.Call(call.op, args, call.attrs)), tensors[0][1])

    def _concat(self, call: relax.Call) -> relax.Expr:
        """concat of tensors all permuted by the same axes, along axis a = permute_dims of the concat of
        the unpermuted ones along axes[a]."""
        tensors = call.args[0]
        if isinstance(tensors, relax.Var):
            tensors = self.lookup_binding(tensors)
        if not isinstance(tensors, relax.Tuple) or call.attrs.axis is None:
            return call
        permuted = [p for p in (self._permuted(field) for field in tensors.fields) if p is not None]
        if not permuted or len(permuted) != len(tensors.fields) or any(p[1] != permuted[0][1] for p in permuted):
            return call
        axes = permuted[0][1]
        inner = R.concat([source for source, _ in permuted], axis=axes[int(call.attrs.axis) % len(axes)])
        return R.permute_dims(self.builder_.emit(inner), axes)

    def _permuted(self, expr: relax.Expr) -> tuple[relax.Expr, list[int]] | None:
        """(x, axes) when `expr` is a variable bound to permute_dims(x, axes) with explicit axes."""
        value = bound_value(self, expr)
        if is_call(value, PERMUTE_DIMS) and value.attrs.axes is not None:
            return value.args[0], [int(a) for a in value.attrs.axes]
        return None

    def _compose(self, call: relax.Call) -> relax.Expr:
        permuted = self._permuted(call.args[0])
        if permuted is None or call.attrs.axes is None:
            return call
        source, inner = permuted
        axes = [inner[int(a)] for a in call.attrs.axes]
        return source if axes == list(range(len(axes))) else R.permute_dims(source, axes)


@tvm.transform.module_pass(opt_level=0, name="SinkTransposes")
def sink_transposes(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Move permute_dims after the lookups, casts and pads that read it, cancelling inverse pairs
    (see the module docstring)."""
    return rewrite_functions(mod, _Sinker(mod))


OP_PATTERN_ELEMWISE, OP_PATTERN_OPAQUE = 0, 8  # TVM's relay/relax OpPatternKind values


def _is_table_lookup(func: tirx.PrimFunc) -> bool:
    """One block storing out[i...] = table[f(x[i...])] for a 1-D table: a lookup, elementwise in x."""
    sch = s_tir.Schedule(func)
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    if len(blocks) != 1:
        return False
    stmt = sch.get(blocks[0])
    store = stmt.body
    if not isinstance(store, tirx.stmt.BufferStore) or not isinstance(store.value, tvm.ir.expr.TensorLoad):
        return False
    iter_vars = [iv.var for iv in stmt.iter_vars]
    return (len(store.value.source.shape) == 1 and len(store.indices) == len(iter_vars)
            and all(index.same_as(var) for index, var in zip(store.indices, iter_vars)))


@tvm.transform.module_pass(opt_level=0, name="LookupsAreElementwise")
def lookups_are_elementwise(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Mark opaque PrimFuncs that are 1-D table lookups as elementwise (see the module docstring)."""
    updates = {}
    for gvar, func in mod.functions_items():
        if (isinstance(func, tirx.PrimFunc) and func.attrs is not None and "op_pattern" in func.attrs
                and int(func.attrs["op_pattern"]) == OP_PATTERN_OPAQUE and "tirx.is_scheduled" not in func.attrs
                and _is_table_lookup(func)):
            updates[gvar] = func.with_attr("op_pattern", OP_PATTERN_ELEMWISE)
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
