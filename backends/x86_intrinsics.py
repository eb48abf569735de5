# mypy: disable-error-code="valid-type"
# (TVMScript buffer declarations are annotations that only TVM's parser reads.)
"""x86 tensor intrinsics for the tiled-reduction schedule (cpu_schedule.py): exact int8 dot products.

Each replaces the innermost [lanes x depth] loops of an int32 reduction over 8-bit codes: `lanes`
int32 accumulators (one vector register), each += the sum of `depth` products of
one activation code (the same `depth` codes for every lane: a broadcast) and an int8 weight (the
weights packed [lane][depth], contiguous). Every one computes exactly what the loop nest it replaces
computes, int32 wrap-around included. The accumulators live in a tile buffer (cpu_schedule.TILE_SCOPE):

- `dot_16x4_vnni` (AVX-512 VNNI, uint8 activations): one vpdpbusd. It adds the four u8 x s8 products
  and the accumulator in int32 without saturating (vpdpbusds would saturate). `dot_8x4_vnni` and
  `dot_4x4_vnni` are its ymm and xmm forms (AVX-512 VL) for outputs of 8k or 4k channels (PP-OCR's
  24-channel convolutions, a 2 x 2 transposed convolution's 4 phases), which otherwise fall to AVX2's
  vpmaddwd (half the products per instruction) or to plain int32 multiplies.
- `depthwise_16x3_vnni`, `depthwise_16x5_vnni` (AVX-512 VNNI, a depthwise convolution's 3 or 5 kernel rows):
  the activation is not broadcast but differs per lane (each channel reads its own input channel), so
  each lane's four bytes hold one channel's codes from consecutive kernel rows (vpmovzxbd, shifts and an
  or per input row; rows 5+ in a second vpdpbusd), the weights likewise. Neighbouring outputs of a tile
  share those per-column words (the same input column under a different kernel column).
- `dot_8x4_avx2_narrow` (AVX2, uint8 activations, weight codes within +-64): the four codes broadcast
  (vpbroadcastd), one vpmaddubsw (u8 x s8 products summed in pairs into int16: |255 x 64| x 2 = 32640
  fits, so it never saturates), one vpmaddwd by ones (the pairs summed into int32) and a vpaddd.
  Only for weights whose codes the compiler knows to be that small (`weight_code_max`): int4 codes and
  the int7 format (ONNX Runtime's reduce_range).
- `dot_8x2_avx2` (AVX2, uint8 or int8 activations): the two codes zero- or sign-extended to int16
  and broadcast, the 8 x 2 weights sign-extended to int16 (vpmovsxbw), one vpmaddwd (two int16
  products summed into each int32 lane: |255 x -128| x 2 < 2^31, exact) and a vpaddd.

Why the narrow variant only: vpmaddubsw sums two u8 x s8 products into a *saturating* int16
(255 x -128 x 2 = -65280 does not fit), so it is not exact for 8-bit codes. It can be made exact
by restricting weights to [-127, 127] and shifting activations to int8 with a sign trick (vpsignb /
vpabsb: pairs stay within 2 x 128 x 127 = 32512), at one more instruction per product vector.
Measured here (AMD EPYC Zen 3, a 4 x 16 register tile, best of 2000 alternating runs, one core):
vpmaddwd with pre-widened int16 operands 67 GMAC/s, with the activations widened in the loop 54,
the vpmaddubsw sign trick 64-67, fp32 FMA 51, and the saturating (inexact) vpmaddubsw that ONNX
Runtime uses on AVX2 102. The sign trick buys nothing over vpmaddwd, so full-range int8 weights use
vpmaddwd, and weights quantized to 7 bits (or fewer) use vpmaddubsw, which is then exact.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .cpu_schedule import TILE_SCOPE, DotIntrinsic


def _dot_desc(activation: str, lanes: int, depth: int):
    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((depth,), activation, offset_factor=1),
        B: T.Buffer((lanes, depth), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=TILE_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, depth):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


# The implementations are single expressions: a TVMScript assignment becomes a "local" buffer, which
# the CPU lowering allocates from the workspace pool (a runtime call) at every use (see TILE_SCOPE).
def _dot_vnni(lanes: int):
    """vpdpbusd on `lanes` int32 accumulators: the zmm form (16 lanes), or with AVX-512 VL the ymm (8)
    and xmm (4) forms, for outputs whose channels are a multiple of 8 or 4 but not of 16."""
    intrinsic = f"llvm.x86.avx512.vpdpbusd.{lanes * 32}"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=TILE_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            # the byte operands as <4*lanes x i8>, as LLVM declares them
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(intrinsic),
                C.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), lanes),
                              dtype=f"uint8x{lanes * 4}"),  # the 4 codes in every lane
                B.vload([0, 0], dtype=f"int8x{lanes * 4}"),
                dtype=f"int32x{lanes}",
            )

    return impl


def _depthwise_desc(lanes: int, depth: int):
    """`depth` kernel rows of `lanes` channels: the input's rows (A: [row, column, channel], strided, one
    column) times the packed weights' (B: [row, channel]), as the convolution's loop nest orders them."""
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        row, column = T.int32(), T.int32()
        A = T.match_buffer(a, (depth, 1, lanes), "uint8", strides=[row, column, 1], offset_factor=1)
        B = T.match_buffer(b, (depth, lanes), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=TILE_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth, 0, 0:lanes], B[0:depth, 0:lanes])
            T.writes(C[0:lanes])
            for k in T.serial(0, depth):
                for i in T.serial(0, lanes):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk, 0, vi], "int32") * T.cast(B[vk, vi], "int32")

    return desc


def _bytes_per_lane(rows: list, lanes: int, dtype: str):
    """Up to four byte rows [lanes] interleaved: lane i holds (rows[0][i], rows[1][i], ...), zero-padded,
    as <4*lanes x dtype> (vpmovzxbd, shifts and ors; the unused bytes are zero)."""
    words = [T.shift_left(T.cast(T.reinterpret(row, dtype=f"uint8x{lanes}"), f"int32x{lanes}"),
                          T.broadcast(T.int32(8 * k), lanes)) for k, row in enumerate(rows)]
    combined = words[0]
    for word in words[1:]:
        combined = T.bitwise_or(combined, word)
    return T.reinterpret(combined, dtype=f"{dtype}x{lanes * 4}")


def _depthwise_vnni(lanes: int, depth: int):
    """vpdpbusd on `lanes` channels: each lane's kernel-row codes and weights gathered four rows at a
    time into its four bytes (the rest zero), then one exact u8 x s8 dot product per four rows."""
    intrinsic = f"llvm.x86.avx512.vpdpbusd.{lanes * 32}"

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        row, column = T.int32(), T.int32()
        A = T.match_buffer(a, (depth, 1, lanes), "uint8", strides=[row, column, 1], offset_factor=1)
        B = T.match_buffer(b, (depth, lanes), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=TILE_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth, 0, 0:lanes], B[0:depth, 0:lanes])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = _dot_rows(
                intrinsic, C.vload([0], dtype=f"int32x{lanes}"),
                [A.vload([k, 0, 0], dtype=f"uint8x{lanes}") for k in range(depth)],
                [B.vload([k, 0], dtype=f"int8x{lanes}") for k in range(depth)], lanes)

    return impl


def _dot_rows(intrinsic: str, accumulator, codes: list, weights: list, lanes: int):
    """The accumulator plus one vpdpbusd per four rows of codes and weights."""
    for start in range(0, len(codes), 4):
        accumulator = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(intrinsic), accumulator,
            _bytes_per_lane(codes[start:start + 4], lanes, "uint8"),
            _bytes_per_lane(weights[start:start + 4], lanes, "int8"),
            dtype=f"int32x{lanes}")
    return accumulator


def _dot_8x2_avx2(activation: str):
    vector = f"{activation}x2"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2,), activation, offset_factor=1),
        B: T.Buffer((8, 2), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope=TILE_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.cast(T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], vector), dtype="int16"), 8),
                                     dtype=f"{activation}x16"), "int16x16"),  # (a0, a1) widened, in every lane pair
                T.cast(B.vload([0, 0], dtype="int8x16"), "int16x16"),
                dtype="int32x8",
            )

    return impl


@T.prim_func(s_tir=True)
def _dot_8x4_avx2_narrow(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope=TILE_SCOPE),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8),
                              dtype="uint8x32"),  # the 4 codes in every lane
                B.vload([0, 0], dtype="int8x32"),
                dtype="int16x16",
            ),
            T.broadcast(T.int16(1), 16),
            dtype="int32x8",
        )


# The AVX2 pair broadcast is two instructions (vpbroadcastw, vpmovzxbw / vpmovsxbw) and needs the
# widened pair and the product in registers; VNNI broadcasts four codes with one vpbroadcastd.
DOT_16X4_VNNI = DotIntrinsic("bitsmith_dot_16x4_u8i8i32_vnni_local", "uint8", 16, 4)
DOT_8X4_VNNI = DotIntrinsic("bitsmith_dot_8x4_u8i8i32_vnni_local", "uint8", 8, 4)
DOT_4X4_VNNI = DotIntrinsic("bitsmith_dot_4x4_u8i8i32_vnni_local", "uint8", 4, 4)
# vpmaddubsw's int16 pair sums stay exact while |weight code| <= 64 (2 x 255 x 64 = 32640 < 2^15).
DOT_8X4_AVX2_NARROW = DotIntrinsic("bitsmith_dot_8x4_u8i7i32_avx2_local", "uint8", 8, 4, scratch_registers=2,
                                   weight_code_max=64)
# Depthwise 3 x 3 and 5 x 5 convolutions: their kernel rows in each lane's bytes (5 rows: two vpdpbusd).
DEPTHWISE_16X3_VNNI = DotIntrinsic("bitsmith_depthwise_16x3_u8i8i32_vnni_local", "uint8", 16, 3, broadcast_ops=6,
                                   scratch_registers=4, depthwise=True)
DEPTHWISE_16X5_VNNI = DotIntrinsic("bitsmith_depthwise_16x5_u8i8i32_vnni_local", "uint8", 16, 5, broadcast_ops=9,
                                   scratch_registers=6, depthwise=True)
DOT_8X2_AVX2_U8 = DotIntrinsic("bitsmith_dot_8x2_u8i8i32_avx2_local", "uint8", 8, 2, broadcast_ops=2,
                               scratch_registers=2)
DOT_8X2_AVX2_I8 = DotIntrinsic("bitsmith_dot_8x2_i8i8i32_avx2_local", "int8", 8, 2, broadcast_ops=2,
                               scratch_registers=2)

for _dot in (DOT_16X4_VNNI, DOT_8X4_VNNI, DOT_4X4_VNNI):
    TensorIntrin.register(_dot.name, _dot_desc("uint8", _dot.lanes, 4), _dot_vnni(_dot.lanes), override=True)
for _dot in (DEPTHWISE_16X3_VNNI, DEPTHWISE_16X5_VNNI):
    TensorIntrin.register(_dot.name, _depthwise_desc(_dot.lanes, _dot.depth), _depthwise_vnni(_dot.lanes, _dot.depth),
                          override=True)
TensorIntrin.register(DOT_8X4_AVX2_NARROW.name, _dot_desc("uint8", 8, 4), _dot_8x4_avx2_narrow, override=True)
for _dot in (DOT_8X2_AVX2_U8, DOT_8X2_AVX2_I8):
    TensorIntrin.register(_dot.name, _dot_desc(_dot.activation_dtype, 8, 2), _dot_8x2_avx2(_dot.activation_dtype),
                          override=True)
