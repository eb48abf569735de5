"""Mark weights computed from parameters "layout free", as TVM does for the parameters themselves.

TVM's AttachAttrLayoutFreeBuffers tells a PrimFunc which of its buffers are weights (Relax function
parameters after "num_input", or constants), so that schedules may re-lay them out (x86's
`cpu_schedule.pack_weights_in_place`) and LiftTransformParams moves the re-layout into main_transform_params.
A weight stored in a low-precision format reaches its convolution through decoding ops
(DequantizeWeight, UnpackCodes: backends/relax_emit.py), so it is an intermediate value, not a
parameter, and would stay unpacked. `MarkParamDerivedLayoutFree` (run after AttachAttrLayoutFreeBuffers)
adds every call_tir argument computed from parameters and constants alone to its PrimFunc's
"layout_free_buffers", when every call of that PrimFunc agrees; LiftTransformParams then lifts the
decoding and the packing together, so both run once, when the weights are loaded.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx

CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def _param_derived_arguments(func: relax.Function) -> dict[tvm.ir.GlobalVar, list[set[int]]]:
    """For each PrimFunc called by `func`: per call, the argument positions computed from weights only."""
    num_input = int(func.attrs["num_input"])
    derived = set(func.params[num_input:])
    calls: dict[tvm.ir.GlobalVar, list[set[int]]] = {}

    def is_weight(expr: relax.Expr) -> bool:
        return isinstance(expr, tvm.ir.expr.GenericConst) or expr in derived

    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op.same_as(CALL_TIR):
                args = list(value.args[1].fields) if isinstance(value.args[1], relax.Tuple) else [value.args[1]]
                calls.setdefault(value.args[0], []).append({i for i, arg in enumerate(args) if is_weight(arg)})
            if all(var in derived for var in relax.analysis.free_vars(value)):
                derived.add(binding.var)
    return calls


@tvm.transform.module_pass(opt_level=0, name="MarkParamDerivedLayoutFree")
def mark_param_derived_layout_free(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Add call_tir arguments computed from parameters alone to their PrimFunc's "layout_free_buffers"."""
    calls: dict[tvm.ir.GlobalVar, list[set[int]]] = {}
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function) and func.attrs is not None and "num_input" in func.attrs:
            for gvar, positions in _param_derived_arguments(func).items():
                calls.setdefault(gvar, []).extend(positions)
    for gvar, positions in calls.items():
        func = mod[gvar]
        if not isinstance(func, tirx.PrimFunc):
            continue
        common = set.intersection(*positions)
        current = {int(i) for i in func.attrs["layout_free_buffers"]} if (
            func.attrs is not None and "layout_free_buffers" in func.attrs) else set()
        if common - current:
            mod[gvar] = func.with_attr("layout_free_buffers", sorted(common | current))
    return mod
