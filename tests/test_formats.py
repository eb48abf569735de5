"""bitsmith.formats against its references: ml_dtypes' casts, ONNX Runtime's QuantizeLinear /
DequantizeLinear (opset 21), hand-computed OCP MX v1.0 and NVFP4 examples, ONNX's 4-bit packing,
and the torch twin against the numpy reference."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

from bitsmith import formats as F
from bitsmith.errors import DataError, UsageError
from bitsmith.ir import QuantSpec

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOAT_ELEMENTS = ("fp8_e4m3", "fp8_e5m2", "fp4_e2m1")
INTEGERS = ("int8", "uint8", "int16", "int4", "uint4")
ONNX_TYPE = {
    "int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int16": TensorProto.INT16,
    "int4": TensorProto.INT4, "uint4": TensorProto.UINT4,
    "fp8_e4m3": TensorProto.FLOAT8E4M3FN, "fp8_e5m2": TensorProto.FLOAT8E5M2,
}


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal values and shapes, NaN equal to NaN (float comparison: -0 equals 0)."""
    return a.shape == b.shape and np.array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64), equal_nan=True)


def wide_floats(allow_nan: bool = True, allow_infinity: bool = True):
    """float32 values covering every binade of the formats, exact halves (rounding ties) and extremes."""
    return st.one_of(
        st.floats(width=32, allow_nan=allow_nan, allow_infinity=allow_infinity),
        st.floats(-600, 600, width=32),
        st.floats(-1 / 64, 1 / 64, width=32),
        st.integers(-1200, 1200).map(lambda i: np.float32(i / 2)),
    )


def matrices(elements, max_rows: int = 4, max_cols: int = 40):
    shape = st.tuples(st.integers(1, max_rows), st.integers(1, max_cols))
    return hnp.arrays(np.float32, shape, elements=elements)


# ---------------------------------------------------------------------------------------------
# Element casts
# ---------------------------------------------------------------------------------------------
def all_grid_points_and_ties(fmt: str) -> np.ndarray:
    """Every finite value of the format, the midpoints between neighbours (ties), their float32
    neighbours, and values beyond the largest finite one."""
    dtype = F.FORMATS[fmt].code_dtype
    bits = np.arange(256 if F.FORMATS[fmt].bits == 8 else 16, dtype=np.uint8)
    values = np.unique(bits.view(dtype).astype(np.float32))
    values = values[np.isfinite(values)]
    mids = (values[:-1] + values[1:]) / 2
    probes = np.concatenate([values, mids, np.nextafter(mids, np.float32(np.inf)),
                             np.nextafter(mids, np.float32(-np.inf)), values * 1.5, [np.inf, -np.inf, np.nan]])
    return probes.astype(np.float32)


@pytest.mark.parametrize("fmt", FLOAT_ELEMENTS)
def test_element_cast_on_every_grid_point_and_tie(fmt):
    probes = all_grid_points_and_ties(fmt)
    expected = onnx.numpy_helper.saturate_cast(probes, F.FORMATS[fmt].code_dtype)  # ONNX saturate=True
    assert same(F.cast_to_element(probes, fmt), expected)
    assert same(F.round_to_element_torch(torch.from_numpy(probes), fmt).numpy(), expected)


@pytest.mark.parametrize("fmt", FLOAT_ELEMENTS)
@SETTINGS
@given(values=hnp.arrays(np.float32, st.integers(1, 64), elements=wide_floats()))
def test_element_cast_equals_ml_dtypes(fmt, values):
    dtype = F.FORMATS[fmt].code_dtype
    in_range = np.where(np.abs(values) <= F.FORMATS[fmt].max_finite, values, np.float32(0))
    assert same(F.cast_to_element(in_range, fmt), in_range.astype(dtype))
    saturated = np.clip(values, F.FORMATS[fmt].qmin, F.FORMATS[fmt].qmax).astype(dtype)
    assert same(F.cast_to_element(values, fmt), saturated)
    assert same(F.round_to_element_torch(torch.from_numpy(values), fmt).numpy(), saturated)


def test_saturation_of_overflow_and_infinity():
    big = np.array([1e6, -1e6, np.inf, -np.inf, 464.0], np.float32)
    assert F.cast_to_element(big, "fp8_e4m3").astype(np.float32).tolist() == [448, -448, 448, -448, 448]
    assert F.cast_to_element(big, "fp8_e5m2").astype(np.float32).tolist() == [57344, -57344, 57344, -57344, 448]
    assert F.cast_to_element(big, "fp4_e2m1").astype(np.float32).tolist() == [6, -6, 6, -6, 6]


# ---------------------------------------------------------------------------------------------
# Integer and FP8 quantization against ONNX Runtime
# ---------------------------------------------------------------------------------------------
def _onnx_param(name: str, values: np.ndarray, fmt: str) -> onnx.TensorProto:
    if fmt in ("fp8_e4m3", "fp8_e5m2"):
        return helper.make_tensor(name, ONNX_TYPE[fmt], values.shape, np.zeros(values.size, np.float32).tolist())
    return helper.make_tensor(name, ONNX_TYPE[fmt], values.shape, values.reshape(-1).tolist())


def ort_quantize_dequantize(x: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """(codes, dequantized) from an ONNX QuantizeLinear -> DequantizeLinear model run by ONNX
    Runtime; the codes leave the model through a Cast (ORT cannot return int4 / e5m2 tensors)."""
    attrs = {"axis": spec.axis if spec.axis is not None else 1}
    if spec.granularity == "block":
        attrs["block_size"] = spec.block_size
    is_float = F.FORMATS[spec.format].is_float
    code_type = TensorProto.FLOAT if is_float else TensorProto.INT32
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero_point"], ["y"], **attrs),
             helper.make_node("Cast", ["q"], ["codes"], to=code_type)]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("codes", code_type, x.shape),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
        [numpy_helper.from_array(spec.scale, "scale"), _onnx_param("zero_point", spec.zero_point, spec.format)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    codes, y = session.run(None, {"x": x})
    return codes, y


@st.composite
def specs_for(draw, x: np.ndarray, fmt: str, granularities: tuple[str, ...]):
    """A spec for x: scales from x's range, from a narrower/wider range (saturation), or powers of
    two (exact ties)."""
    granularity = draw(st.sampled_from(granularities))
    axis = draw(st.sampled_from([0, 1])) if granularity != "tensor" else None
    block_size = draw(st.sampled_from([1, 2, 3, 4, 8, 16])) if granularity == "block" else None
    symmetric = True if F.FORMATS[fmt].is_float else draw(st.booleans())
    finite = np.where(np.isfinite(x), x, np.float32(0))
    spec = F.choose_spec(finite, fmt, granularity, axis, block_size, symmetric)
    mode = draw(st.sampled_from(["data", "narrow", "power_of_two"]))
    if mode == "narrow":
        spec.scale = (spec.scale * np.float32(draw(st.sampled_from([0.25, 0.5, 0.9])))).astype(np.float32)
    elif mode == "power_of_two":
        spec.scale = np.full(spec.scale.shape, 2.0 ** draw(st.integers(-3, 3)), np.float32)
    return spec


@pytest.mark.parametrize("fmt", INTEGERS)
@SETTINGS
@given(data=st.data())
def test_integer_quantization_equals_onnxruntime(fmt, data):
    x = data.draw(matrices(wide_floats(allow_nan=False)))
    granularities = ("tensor", "channel", "block") if fmt in ("int4", "uint4") else ("tensor", "channel")
    spec = data.draw(specs_for(x, fmt, granularities))
    if fmt in ("int4", "uint4"):
        limit = np.float32(2.0 ** 27) * np.float32(np.min(spec.scale))
        x = np.clip(x, -limit, limit)  # ORT 1.31 may wrap |x / scale| >= 2**31 here (see below)
    codes, dequantized = ort_quantize_dequantize(x, spec)
    ours = F.quantize(x, spec)
    assert ours.dtype == F.FORMATS[fmt].code_dtype
    assert np.array_equal(ours.astype(np.int32), codes)
    assert same(F.dequantize(ours, spec), dequantized)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
@SETTINGS
@given(data=st.data())
def test_fp8_quantization_equals_onnxruntime(fmt, data):
    x = data.draw(matrices(wide_floats()))
    spec = data.draw(specs_for(x, fmt, ("tensor", "channel")))
    codes, dequantized = ort_quantize_dequantize(x, spec)
    ours = F.quantize(x, spec)
    assert ours.dtype == F.FORMATS[fmt].code_dtype
    assert same(ours, codes)
    assert same(F.dequantize(ours, spec), dequantized)


def test_int4_per_axis_saturates_huge_values_as_onnx_specifies():
    # ONNX Runtime 1.31's scalar INT4/UINT4 QuantizeLinear path (per-axis quantization, and the
    # elements after the last full 16-element vector of a per-tensor one) converts x / scale to
    # int32 before saturating, so 2**31, 3e9 and +inf come out as -8 (UINT4: 0). The ONNX spec
    # saturates them to the largest code, as ORT's vector path and its 8/16-bit kernels do.
    x = np.array([[2.0 ** 31, 3e9, np.inf, -np.inf]], np.float32)
    for fmt, top, bottom in (("int4", 7, -8), ("uint4", 15, 0)):
        spec = QuantSpec(fmt, 4, "channel", 1, scale=np.ones(4, np.float32), zero_point=np.zeros(4, np.int32))
        assert F.quantize(x, spec).tolist() == [[top, top, top, bottom]]


def test_rounding_is_half_to_even_and_saturating_like_onnx():
    spec = QuantSpec("int8", 8, scale=np.float32(1.0))
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 127.5, 1e9, -1e9, np.inf], np.float32)
    assert F.quantize(x, spec).tolist() == [0, 2, 2, 0, -2, 127, 127, -128, 127]


# ---------------------------------------------------------------------------------------------
# choose_spec
# ---------------------------------------------------------------------------------------------
def test_symmetric_and_asymmetric_integer_scales():
    x = np.array([-1.0, 0.25, 2.54], np.float32)
    spec = F.choose_spec(x, "int8")
    assert spec.scale == np.float32(2.54 / 127) and spec.zero_point == 0
    uspec = F.choose_spec(x, "uint8")
    assert uspec.zero_point == 128 and uspec.scale == spec.scale
    aspec = F.choose_spec(x, "uint8", symmetric=False)
    assert aspec.scale == np.float32(3.54 / 255) and aspec.zero_point == round(1.0 / (3.54 / 255))
    for s in (spec, uspec, aspec):  # zero is exactly representable
        assert F.fake_quant(np.zeros(1, np.float32), s)[0] == 0


def test_channel_and_block_ranges_are_their_own():
    x = np.array([[1.0, -2.0, 0.5, 0.25], [10.0, 0.0, -40.0, 20.0]], np.float32)
    assert np.allclose(F.choose_spec(x, "int8", "channel", axis=0).scale * 127, [2.0, 40.0])
    assert np.allclose(F.choose_spec(x, "int8", "channel", axis=1).scale * 127, [10, 2, 40, 20])
    block = F.choose_spec(x, "int8", "block", axis=1, block_size=3)
    assert block.scale.shape == (2, 2)
    assert np.allclose(block.scale * 127, [[2.0, 0.25], [40.0, 20.0]])
    ranged = F.choose_spec(None, "int8", "channel", axis=0, amin=np.array([-1.0, -2.0]), amax=np.array([1.0, 4.0]))
    assert np.allclose(ranged.scale * 127, [1.0, 4.0])


def test_degenerate_ranges_get_unit_scale():
    spec = F.choose_spec(np.zeros((2, 3), np.float32), "int8", "channel", axis=0)
    assert np.array_equal(spec.scale, [1.0, 1.0])
    assert np.array_equal(F.fake_quant(np.zeros((2, 3), np.float32), spec), np.zeros((2, 3)))


@pytest.mark.parametrize("kwargs", [
    dict(fmt="int9"), dict(fmt="int8", granularity="channel"), dict(fmt="int8", granularity="block", axis=0),
    dict(fmt="fp8_e4m3", symmetric=False), dict(fmt="mxfp4", granularity="tensor"),
    dict(fmt="int8", granularity="channel", axis=5), dict(fmt="mxfp8", amax=3.0),
    dict(fmt="int8", granularity="channel", axis=0, amax=np.ones(3)),
])
def test_choose_spec_rejects_bad_arguments(kwargs):
    with pytest.raises(UsageError):
        F.choose_spec(np.ones((2, 4), np.float32), **kwargs)


def test_non_finite_ranges_are_data_errors():
    with pytest.raises(DataError):
        F.choose_spec(np.array([1.0, np.nan], np.float32), "int8")


def test_mismatched_scale_shape_is_reported():
    spec = F.choose_spec(np.ones((2, 4), np.float32), "int8", "channel", axis=0)
    with pytest.raises(UsageError, match="needs"):
        F.quantize(np.ones((3, 4), np.float32), spec)


# ---------------------------------------------------------------------------------------------
# OCP MX v1.0 and NVFP4, hand-computed
# ---------------------------------------------------------------------------------------------
def one_block(values: list[float], size: int = 32) -> np.ndarray:
    block = np.zeros((1, size), np.float32)
    block[0, :len(values)] = values
    return block


def test_mxfp8_shared_exponent_and_elements():
    # amax 3: floor(log2 3) = 1, emax(E4M3) = 8, so X = 2**-7 and V / X = 128 V.
    x = one_block([3.0, 1.0, -0.5, 0.1])
    spec = F.choose_spec(x, "mxfp8")
    assert spec.scale_format == "e8m0" and spec.block_size == 32 and spec.axis == 1
    assert spec.scale.tolist() == [[2.0 ** -7]]
    codes = F.quantize(x, spec)
    # 12.8 lies in [8, 16), where E4M3's step is 1: 13.
    assert codes.astype(np.float32)[0, :4].tolist() == [384.0, 128.0, -64.0, 13.0]
    assert F.fake_quant(x, spec)[0, 3] == np.float32(13 / 128)


def test_mxfp4_rounds_ties_to_even_and_saturates():
    # amax 7: floor(log2 7) = 2 = emax(E2M1), X = 1; 7 saturates to 6, ties 5 -> 4, 2.5 -> 2, 0.75 -> 1, 0.25 -> 0.
    x = one_block([7.0, 5.0, 2.5, 0.75, 0.25, -3.2])
    spec = F.choose_spec(x, "mxfp4")
    assert spec.scale.tolist() == [[1.0]]
    assert F.fake_quant(x, spec)[0, :6].tolist() == [6.0, 4.0, 2.0, 1.0, 0.0, -3.0]


def test_mxfp4_amax_just_below_a_power_of_two_saturates():
    # amax = 4 - ulp: floor(log2) = 1, X = 0.5, V / X ~ 8 saturates to 6: the block's largest value becomes 3.
    x = one_block([np.nextafter(np.float32(4), np.float32(0)), 1.0])
    spec = F.choose_spec(x, "mxfp4")
    assert spec.scale.tolist() == [[0.5]]
    assert F.fake_quant(x, spec)[0, :2].tolist() == [3.0, 1.0]


def test_mx_scales_clamp_to_e8m0_range_and_handle_zero_and_nan_blocks():
    x = np.concatenate([one_block([1e-40]), one_block([0.0]), one_block([np.nan, 1.0])], axis=1)
    spec = F.choose_spec(x, "mxfp4")
    scale = spec.scale[0]
    assert scale[0] == np.float32(2.0 ** -127) and scale[1] == np.float32(2.0 ** -127) and np.isnan(scale[2])
    e8m0 = spec.scale.astype(ml_dtypes.float8_e8m0fnu)
    assert e8m0.view(np.uint8).tolist() == [[0, 0, 255]]
    assert np.all(F.fake_quant(x, spec)[0, 32:64] == 0)


def test_mx_partial_blocks_and_axis():
    x = np.arange(1, 41, dtype=np.float32).reshape(40, 1)  # two blocks along axis 0: amax 32 and 40
    spec = F.choose_spec(x, "mxfp8", axis=0)
    assert spec.scale.shape == (2, 1)
    assert spec.scale.ravel().tolist() == [2.0 ** (5 - 8), 2.0 ** (5 - 8)]
    out = F.fake_quant(x, spec).ravel()
    assert np.array_equal(out[:16], x[:16, 0])  # 8 * v < 128: E4M3 steps of at most 8
    assert out[16:20].tolist() == [16, 18, 20, 20]  # 8 * v in [128, 256): steps of 16, ties to even
    assert out[32:].tolist() == [32, 32, 36, 36, 36, 40, 40, 40]  # [256, 512): steps of 32


def test_nvfp4_block_and_tensor_scales():
    # Tensor amax 2688 = 6 * 448 gives tensor_scale 1. Block 0: amax 2688 -> scale 448.
    # Block 1: 65 / 6 = 10.83 -> E4M3 11; elements 65/11 -> 6, 25/11 = 2.27 -> 2, -7/11 -> -0.5.
    # Block 2: 1e-3 / 6 underflows E4M3 -> scale 0 -> the whole block is 0.
    x = np.zeros((1, 48), np.float32)
    x[0, 0] = 2688.0
    x[0, 16:19] = [65.0, 25.0, -7.0]
    x[0, 32] = 1e-3
    spec = F.choose_spec(x, "nvfp4")
    assert spec.scale_format == "e4m3" and spec.block_size == 16 and spec.tensor_scale == 1.0
    assert spec.scale.tolist() == [[448.0, 11.0, 0.0]]
    out = F.fake_quant(x, spec)
    assert out[0, 0] == 2688.0
    assert out[0, 16:19].tolist() == [66.0, 22.0, -5.5]
    assert np.all(out[0, 32:] == 0)
    assert np.array_equal(F.fake_quant_torch(torch.from_numpy(x), spec).numpy(), out)


def test_nvfp4_tensor_scale_from_a_calibrated_amax():
    x = one_block([1.0, -0.5], size=16)
    spec = F.choose_spec(x, "nvfp4", amax=4.0)
    assert spec.tensor_scale == float(np.float32(4.0 / 2688))
    assert spec.scale.tolist() == [[F.cast_to_element(np.float32(1.0 / 6) / np.float32(4.0 / 2688), "fp8_e4m3")
                                    .astype(np.float32).item()]]


# ---------------------------------------------------------------------------------------------
# 4-bit packing
# ---------------------------------------------------------------------------------------------
FOUR_BIT = {"int4": (np.int8, -8, 7), "uint4": (np.uint8, 0, 15)}


@pytest.mark.parametrize("fmt", ["int4", "uint4", "fp4_e2m1"])
@SETTINGS
@given(data=st.data())
def test_pack_unpack_round_trip_and_onnx_layout(fmt, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=7))
    if fmt == "fp4_e2m1":
        codes = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 15))).view(ml_dtypes.float4_e2m1fn)
        onnx_dtype = ml_dtypes.float4_e2m1fn
    else:
        dtype, lo, hi = FOUR_BIT[fmt]
        codes = data.draw(hnp.arrays(dtype, shape, elements=st.integers(lo, hi)))
        onnx_dtype = ml_dtypes.int4 if fmt == "int4" else ml_dtypes.uint4
    packed = F.pack_nibbles(codes)
    assert packed.dtype == np.uint8 and packed.size == (codes.size + 1) // 2
    unpacked = F.unpack_nibbles(packed, codes.shape, fmt)
    assert unpacked.dtype == codes.dtype and np.array_equal(unpacked.view(np.uint8), codes.view(np.uint8))
    assert packed.tobytes() == numpy_helper.from_array(codes.astype(onnx_dtype)).raw_data


def test_pack_layout_low_nibble_first():
    assert F.pack_nibbles(np.array([1, 2, 3], np.uint8)).tolist() == [0x21, 0x03]
    assert F.pack_nibbles(np.array([-1, -8], np.int8)).tolist() == [0x8F]
    with pytest.raises(UsageError):
        F.pack_nibbles(np.array([8], np.int8))


# ---------------------------------------------------------------------------------------------
# torch twin
# ---------------------------------------------------------------------------------------------
@st.composite
def any_spec_and_tensor(draw):
    fmt = draw(st.sampled_from(sorted(F.FORMATS)))
    info = F.FORMATS[fmt]
    x = draw(matrices(wide_floats(), max_cols=70))
    finite = np.where(np.isfinite(x), x, np.float32(0))
    if info.is_block_format:
        spec = F.choose_spec(finite, fmt, axis=draw(st.sampled_from([0, 1])),
                             block_size=draw(st.sampled_from([None, 4])))
    else:
        granularity = draw(st.sampled_from(["tensor", "channel", "block"]))
        axis = None if granularity == "tensor" else draw(st.sampled_from([0, 1]))
        symmetric = info.is_float or draw(st.booleans())
        spec = F.choose_spec(finite, fmt, granularity, axis, 3 if granularity == "block" else None, symmetric)
    return x, spec


@SETTINGS
@given(case=any_spec_and_tensor())
def test_torch_twin_equals_numpy(case):
    x, spec = case
    assert same(F.fake_quant_torch(torch.from_numpy(x), spec).numpy(), F.fake_quant(x, spec))
    assert same(F.fake_quant_torch(torch.from_numpy(x), spec, ste=False).numpy(), F.fake_quant(x, spec))


@pytest.mark.parametrize("fmt", ["mxfp8", "mxfp4", "nvfp4"])
@SETTINGS
@given(data=st.data())
def test_dynamic_block_scales_in_torch_equal_choose_spec(fmt, data):
    x = data.draw(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40), elements=wide_floats()))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    block_size = data.draw(st.sampled_from([None, 5, 16]))
    expected = F.fake_quant(x, F.choose_spec(x, fmt, axis=axis, block_size=block_size))
    assert same(F.fake_quant_dynamic_torch(torch.from_numpy(x), fmt, axis, block_size).numpy(), expected)


@pytest.mark.parametrize("fmt", ["int8", "uint4", "fp8_e4m3", "fp4_e2m1"])
def test_straight_through_gradient_is_clipped_identity(fmt):
    spec = F.choose_spec(None, fmt, amin=-1.0, amax=1.0)
    x = torch.tensor([-3.0, -0.7, 0.0, 0.33, 0.9, 2.0], requires_grad=True)
    F.fake_quant_torch(x, spec).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    y = torch.tensor([0.33], requires_grad=True)
    F.fake_quant_torch(y, spec, ste=False).sum().backward()
    assert y.grad.tolist() == [0.0]


def test_dynamic_straight_through_gradient():
    x = torch.tensor([[7.0, 5.0, 0.3, -1.0]], requires_grad=True)
    out = F.fake_quant_dynamic_torch(x, "mxfp4", block_size=4)  # X = 1: 7 saturates to 6
    assert out.tolist() == [[6.0, 4.0, 0.5, -1.0]]
    out.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 1.0]]


def test_torch_twin_keeps_dtype_and_runs_on_half_inputs():
    spec = F.choose_spec(None, "int8", amin=-1.0, amax=1.0)
    x = torch.linspace(-1, 1, 9, dtype=torch.float16)
    out = F.fake_quant_torch(x, spec)
    assert out.dtype == torch.float16
    expected = F.fake_quant(x.float().numpy(), spec).astype(np.float16)
    assert np.array_equal(out.numpy(), expected)


def test_quantization_error_is_squared_norm():
    x = np.array([0.1, 0.26, -1.0], np.float32)
    spec = F.choose_spec(x, "int4")
    assert F.quantization_error(x, spec) == pytest.approx(float(np.sum((F.fake_quant(x, spec) - x) ** 2.0)))
    assert F.quantization_error(x, F.choose_spec(x, "int16")) < F.quantization_error(x, spec)

