"""The x86 backend's 32-bit requantization (backends/requantize.py) equals the int64 reference bit for bit.

The chain relax_emit writes for a requantize epilogue is rebuilt here from its parts, compiled through
the x86 pipeline (which rewrites it) and compared with `bitsmith.interpreter.requantize` on the
accumulators where a 32-bit form could go wrong: INT32_MIN, INT32_MAX, zero, +-1, and values whose
scaled result sits exactly on a rounding boundary; multipliers at both ends of [2^30, 2^31); shifts
33 (the smallest the rewrite takes) to 62. The output is int32 with the full int32 clamp, so that no
saturation hides a wrong bit. Chains the rewrite cannot prove equal (a shift of 32) keep int64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.relax import op as R

from bitsmith.backends import x86
from bitsmith.backends.relax_emit import EmittedModule
from bitsmith.backends.requantize import requantize_in_int32
from bitsmith.backends.runner import TVMRunner
from bitsmith.interpreter import requantize

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
RNG = np.random.default_rng(7)


def int64_const(value) -> relax.Expr:
    return relax.const(np.asarray(value, np.int64), "int64")


def chain_module(shape: tuple[int, ...], multiplier: np.ndarray, shift: np.ndarray, zero_point: int,
                 out_min: int, out_max: int, out_dtype: str) -> tvm.IRModule:
    """main(acc int32) = the requantize chain of relax_emit, multiplier / shift broadcast along the last axis."""
    rounding = np.left_shift(np.int64(1), shift.astype(np.int64) - 1)
    acc = relax.Var("acc", relax.TensorType(list(shape), "int32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [acc], attrs={"num_input": 1}):
        with builder.dataflow():
            value = R.multiply(R.astype(acc, "int64"), int64_const(multiplier))
            value = R.right_shift(R.add(value, int64_const(rounding)), int64_const(shift))
            if zero_point:
                value = R.add(value, int64_const(zero_point))
            value = R.minimum(R.maximum(value, int64_const(out_min)), int64_const(out_max))
            output = builder.emit_output(R.astype(value, out_dtype))
        builder.emit_func_output(output)
    return builder.get()


def run_chain(tmp_path, acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, zero_point: int = 0,
              out_min: int = INT32_MIN, out_max: int = INT32_MAX, out_dtype: str = "int32") -> np.ndarray:
    mod = chain_module(acc.shape, multiplier, shift, zero_point, out_min, out_max, out_dtype)
    emitted = EmittedModule(mod, "requantize_chain", ["acc"], [], ["y"])
    library = x86.export(x86.build(emitted, "host"), tmp_path / "chain.so")
    (result,) = TVMRunner(str(library)).run([acc])
    return result


def reference(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, zero_point: int = 0,
              out_min: int = INT32_MIN, out_max: int = INT32_MAX) -> np.ndarray:
    out = requantize(torch.from_numpy(acc), torch.from_numpy(multiplier.astype(np.int64)),
                     torch.from_numpy(shift.astype(np.int64)), zero_point, out_min, out_max)
    return out.numpy()


def hard_accumulators(multiplier: np.ndarray, shift: np.ndarray, rows: int) -> np.ndarray:
    """[rows, channels] int32: the extremes, then values whose exact result is k + 1/2 (a rounding tie)
    or just beside it, then random ones."""
    channels = multiplier.size
    acc = RNG.integers(INT32_MIN, INT32_MAX, (rows, channels), dtype=np.int64)
    acc[:5] = np.array([INT32_MIN, INT32_MAX, 0, 1, -1])[:, None]
    for row in range(5, min(rows, 25)):
        k = int(RNG.integers(-1000, 1000))
        # acc * M = (k + 1/2) * 2^s rounded to the nearest multiple of M, then nudged by -1, 0 or +1
        target = ((2 * k + 1) << (shift.astype(np.int64) - 1)) // multiplier.astype(np.int64)
        acc[row] = np.clip(target + (row % 3) - 1, INT32_MIN, INT32_MAX)
    return acc.astype(np.int32)


def test_per_channel_32_bit_form_equals_the_int64_reference_at_the_edges(tmp_path):
    multiplier = np.array([1 << 30, INT32_MAX, 1 << 30, INT32_MAX, *RNG.integers(1 << 30, 1 << 31, 12)], np.int64)
    shift = np.array([33, 33, 62, 62, *RNG.integers(33, 63, 12)], np.int64)
    acc = hard_accumulators(multiplier, shift, 64)
    np.testing.assert_array_equal(run_chain(tmp_path, acc, multiplier, shift), reference(acc, multiplier, shift))


def test_per_tensor_32_bit_form_with_zero_point_and_uint8_clamp(tmp_path):
    multiplier, shift = np.array([1_518_500_250], np.int64), np.array([38], np.int64)
    acc = hard_accumulators(np.repeat(multiplier, 24), np.repeat(shift, 24), 40)
    got = run_chain(tmp_path, acc, multiplier, shift, zero_point=128, out_min=0, out_max=255, out_dtype="uint8")
    expected = reference(acc, multiplier, shift, 128, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)


def rewritten(mod: tvm.IRModule) -> bool:
    after = tvm.transform.Sequential([requantize_in_int32, relax.transform.DeadCodeElimination()])(mod)
    return any("requantize_int32" in gv.name_hint for gv, _ in after.functions_items())


@pytest.mark.parametrize("shift,expected", [(33, True), (62, True), (32, False), (20, False)])
def test_the_rewrite_takes_only_the_shifts_where_it_is_exact(shift, expected):
    multiplier = np.full(8, 1 << 30, np.int64)
    mod = chain_module((4, 8), multiplier, np.full(8, shift, np.int64), 3, 0, 255, "uint8")
    assert rewritten(mod) is expected


def test_a_shift_of_32_keeps_the_int64_form_and_stays_exact(tmp_path):
    multiplier, shift = np.full(8, INT32_MAX, np.int64), np.array([32, 33, 40, 32, 50, 62, 33, 32], np.int64)
    acc = hard_accumulators(multiplier, shift, 32)
    np.testing.assert_array_equal(run_chain(tmp_path, acc, multiplier, shift), reference(acc, multiplier, shift))
