# mypy: disable-error-code="valid-type"
# (TVMScript buffer declarations are annotations that only TVM's parser reads.)
"""Byte table lookups in large tensors as AVX-512 VBMI byte permutes: 64 lookups in four instructions.

relax_emit writes a table lookup (QLookup: an integer graph's activation function, or two composed)
as take(table, codes - qmin, mode="clip"). TVM legalizes take to a load whose index is data, and its
LLVM code generator reads such a load in a vectorized loop lane by lane: extract the index, load,
insert, three instructions per element. Fused into a convolution's epilogue that was most of the
epilogue: PP-OCRv4 det at one thread spent 3.4 of its 17.8 ms in lookups on Zen 4 (measured by
compiling it with every lookup replaced by a cast).

Where the CPU has AVX-512 VBMI (`CPUShape.byte_permute`), `ByteLookups` gives each lookup of 8-bit
codes in a table of 8-bit entries, in a tensor of at least MIN_ELEMENTS elements, a kernel of its own,
written here in vector TIR. The table is first made a function of the code's byte: entry b (0-255) is
table[clip(code(b) - qmin, 0, size - 1)], where code(b) reads b as the codes' type; a constant table
folds, a parameter's is computed once per weight set (LiftTransformParams). Then per 64 codes: two
vpermi2b look their low 7 bits up in the lower and the upper 128 entries, and the code's top bit picks
one (vpmovb2m + vpblendmb). The lookup becomes a pass over the codes of its own (one byte read and
one written per element) instead of part of its producer's epilogue; lookups in small tensors
(squeeze-excitation scales) stay there. The integers are the reference's: the same entries are read.

Measured on Zen 4 (one thread): 1.6 M lookups in 0.07 ms, against 0.7 ms inside the epilogue. A
hardware gather (vpgatherdd from the table widened to int32) was tried first: 0.74 ms for the same
1.6 M, no faster than the scalar loads (a 16-lane gather costs about 27 cycles there).
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax import op as R
from tvm.script import tirx as T

from .relax_rewrite import bound_value, is_call, rewrite_functions
from .transpose_sinking import OP_PATTERN_OPAQUE

# Lookups in tensors smaller than this stay in their producer's epilogue (a kernel call costs more).
MIN_ELEMENTS = 4096
LANES = 64  # bytes per 512-bit vector
BYTE_TYPES = ("uint8", "int8")


def _permute_lookup(table: tirx.Buffer, codes: tirx.PrimExpr) -> tirx.PrimExpr:
    """table[byte] for 64 bytes (int8x64) in a 256-entry byte table (int8 view)."""
    quarters = [tirx.reinterpret("int8x64", table[tirx.Ramp(64 * k, 1, 64)]) for k in range(4)]
    low = tirx.call_llvm_pure_intrin("int8x64", "llvm.x86.avx512.vpermi2var.qi.512", quarters[0], codes, quarters[1])
    high = tirx.call_llvm_pure_intrin("int8x64", "llvm.x86.avx512.vpermi2var.qi.512", quarters[2], codes, quarters[3])
    return tirx.Select(codes < tirx.Broadcast(tirx.const(0, "int8"), LANES), high, low)  # top bit set: upper half


def lookup_kernel(shape: tuple[int, ...], code_dtype: str, out_dtype: str) -> tirx.PrimFunc:
    """out = table[byte of code] elementwise for a 256-entry table of `out_dtype` (an 8-bit type), 64
    codes per step; the codes past the last whole vector one by one."""
    elements = math.prod(shape)
    vectors, rest = divmod(elements, LANES)

    def whole(buffer):
        return tirx.BufferRegion(buffer, [tvm.ir.Range(0, extent) for extent in buffer.shape])

    def permute(table, codes):
        return tirx.reinterpret(f"{out_dtype}x{LANES}", _permute_lookup(table, tirx.reinterpret(f"int8x{LANES}", codes)))

    def byte(code):
        return tirx.Cast("int32", tirx.reinterpret("uint8", code))

    @T.prim_func(private=True, s_tir=True)
    def lookup(codes: T.Buffer(shape, code_dtype), table: T.Buffer((256,), out_dtype), out: T.Buffer(shape, out_dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OP_PATTERN_OPAQUE})
        with T.sblock("root"):  # Relax's passes expect one, and blocks under it (opaque ones here)
            for v in T.parallel(vectors):
                with T.sblock("permute"):
                    T.reads(whole(codes), table[0:256])
                    T.writes(whole(out))
                    flat_codes = T.decl_buffer((elements,), code_dtype, data=codes.data)
                    flat_out = T.decl_buffer((elements,), out_dtype, data=out.data)
                    flat_out[T.ramp(v * LANES, 1, LANES)] = permute(table, flat_codes[T.ramp(v * LANES, 1, LANES)])
            for i in T.serial(rest):
                with T.sblock("rest"):
                    T.reads(whole(codes), table[0:256])
                    T.writes(whole(out))
                    flat_codes = T.decl_buffer((elements,), code_dtype, data=codes.data)
                    flat_out = T.decl_buffer((elements,), out_dtype, data=out.data)
                    flat_out[vectors * LANES + i] = table[byte(flat_codes[vectors * LANES + i])]

    return lookup


def byte_indices(code_dtype: str, offset: int, table_size: int) -> np.ndarray:
    """For each byte value b: the table entry a code of that byte reads, clip(code(b) - offset)."""
    codes = np.arange(256, dtype=np.uint8).view(code_dtype).astype(np.int64)
    return np.clip(codes - offset, 0, table_size - 1).astype(np.int32)


def _static_shape(tensor_type) -> tuple[int, ...] | None:
    shape = getattr(tensor_type, "shape", None)
    if not isinstance(shape, relax.ShapeExpr) or not all(isinstance(d, tirx.IntImm) for d in shape.values):
        return None
    return tuple(int(d) for d in shape.values)


@relax.expr_functor.mutator
class _ByteLookups(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not is_call(call, "relax.take") or str(call.attrs.mode) != "clip":
            return call
        table, index = call.args
        table_shape, shape = _static_shape(table.ty), _static_shape(call.ty)
        if (table_shape is None or len(table_shape) != 1 or shape is None or math.prod(shape) < MIN_ELEMENTS
                or str(call.ty.dtype) not in BYTE_TYPES):
            return call
        codes = self._codes(index)
        if codes is None:
            return call
        source, offset = codes
        code_dtype = str(source.ty.dtype)
        by_byte = R.take(table, relax.const(byte_indices(code_dtype, offset, table_shape[0])), axis=0)
        gvar = self.builder_.add_func(lookup_kernel(shape, code_dtype, str(call.ty.dtype)), "byte_lookup")
        return relax.call_tir(gvar, [source, self.builder_.emit(by_byte)], call.ty)

    def _codes(self, index: relax.Expr) -> tuple[relax.Expr, int] | None:
        """(8-bit codes, offset) when `index` is astype(codes, int32) [- offset] (relax_emit's `_centered`)."""
        value = bound_value(self, index)
        offset = 0
        if (is_call(value, "relax.subtract") and isinstance(value.args[1], tvm.ir.expr.Constant)
                and value.args[1].value.numpy().ndim == 0):
            offset = int(value.args[1].value.numpy())
            value = bound_value(self, value.args[0])
        if not is_call(value, "relax.astype") or str(value.attrs.dtype) != "int32":
            return None
        source = value.args[0]
        return (source, offset) if str(source.ty.dtype) in BYTE_TYPES else None


@tvm.transform.module_pass(opt_level=0, name="ByteLookups")
def byte_lookups(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Large lookups of 8-bit codes in 8-bit tables as byte-permute kernels (see the module docstring).
    The index bindings they replace are left dead for DeadCodeElimination."""
    return rewrite_functions(mod, _ByteLookups(mod))
