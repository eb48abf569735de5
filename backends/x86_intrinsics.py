# mypy: disable-error-code="valid-type"
# (TVMScript buffer declarations are annotations that only TVM's parser reads.)
"""x86 tensor intrinsics for the tiled-reduction schedule (cpu_schedule.py): the int8 dot product.

`DOT_16X4_VNNI`: 16 int32 accumulators, each += the sum of 4 uint8 x int8 products, as one AVX-512
VNNI vpdpbusd. The instruction adds the four products and the accumulator in int32 without
saturating (vpdpbusds would saturate), so it computes exactly what the loop nest it replaces
computes (int32 wraps alike). TVM ships the same instruction for accumulators in global memory; the
tiled schedule keeps its accumulator tile in a local buffer (registers), hence this registration.
AVX2 has no exact equivalent: pmaddubsw saturates the int16 sum of two products (255 x -128 x 2).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

DOT_16X4_VNNI = "bitsmith_dot_16x4_u8i8i32_vnni_local"


@T.prim_func(s_tir=True)
def _dot_16x4_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dot_16x4_vnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_u8x64 = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")  # the 4 codes in every lane
        b_i8x64 = B.vload([0, 0], dtype="int8x64")
        c_i32x16 = C.vload([0], dtype="int32x16")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(  # byte operands as <64 x i8>, as LLVM declares them
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            c_i32x16,
            a_u8x64,
            b_i8x64,
            dtype="int32x16",
        )


TensorIntrin.register(DOT_16X4_VNNI, _dot_16x4_desc, _dot_16x4_vnni, override=True)
