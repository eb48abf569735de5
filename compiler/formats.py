"""Every number format bitsmith quantizes to: a numpy reference and a torch twin with identical results.

Formats (names as in `ir.QUANT_FORMATS`):

- Integers INT8, UINT8, INT16, INT7, INT4, UINT4, symmetric or asymmetric, per tensor, per channel (1-D
  scale along `axis`) or per block along `axis`. Quantization is ONNX QuantizeLinear (opset 21):
  ``q = saturate(round_half_even(x / scale) + zero_point)``; dequantization is ONNX DequantizeLinear:
  ``(q - zero_point) * scale``. Division, rounding and the product are float32, as in ONNX Runtime.
  INT7 is INT8 restricted to [-64, 63] (ONNX Runtime's reduce_range for weights), stored and exported as
  int8: products of its codes with uint8 codes, summed in pairs, fit int16 (x86_intrinsics.py).
- Floats FP8 E4M3FN, FP8 E5M2 (ONNX FLOAT8E4M3FN / FLOAT8E5M2) and FP4 E2M1 (ONNX FLOAT4E2M1,
  the OCP MX element type) with float32 scales: ``q = cast(x / scale)`` with ONNX's ``saturate=True``
  (values beyond the largest finite value, infinities included, clamp to it; round half to even).
  The element types are ml_dtypes' float8_e4m3fn, float8_e5m2 and float4_e2m1fn.
- OCP Microscaling (MX) v1.0 MXFP8 (E4M3 elements) and MXFP4 (E2M1 elements): blocks of 32
  along `axis` share an E8M0 power-of-two scale ``2**(floor(log2(amax)) - emax_elem)``, clamped to
  E8M0's range [2**-127, 2**127]; the elements saturate to the element format's largest normal.
- NVFP4 (NVIDIA Blackwell): blocks of 16 E2M1 elements, one E4M3 scale per block and one FP32 scale
  per tensor: ``tensor_scale = amax / (6 * 448)``, ``block_scale = e4m3(block_amax / 6 / tensor_scale)``,
  ``x ~= e2m1 * block_scale * tensor_scale``.

Layout of `QuantSpec.scale` / `zero_point` (the ONNX QuantizeLinear layouts): per tensor a scalar;
per channel a 1-D array of ``x.shape[axis]`` entries; per block an array of x's rank whose `axis`
dimension is ``ceil(x.shape[axis] / block_size)`` (the last block may be partial). Block scales
stored in E8M0 or E4M3 are kept as the float32 values they encode (exactly representable), so
``spec.scale.astype(ml_dtypes.float8_e8m0fnu)`` gives the stored bytes losslessly.

Two rules cover inputs the specs leave open: a zero scale quantizes its elements to code zero
(``zero_point`` for integers; NVFP4 blocks whose E4M3 scale underflows), and NaN quantizes to the
zero point for integers and to 0 for FP4 (which has no NaN; ml_dtypes gives -0).

Dynamic specs (`QuantSpec.dynamic`, uint8 per tensor) are ONNX DynamicQuantizeLinear: `dynamic_spec(x)`
computes the static spec for one tensor exactly as ONNX Runtime does (float32: range widened to
include 0, scale = range / 255, or 1 for an all-zero tensor; zero point = round_half_even(-min / scale)
clipped to [0, 255]); `quantize`, `fake_quant` and `fake_quant_torch` resolve a dynamic spec from the
tensor they are given.

`fake_quant_torch` is the differentiable twin used for fake-quant simulation: it equals
`fake_quant` bit for bit, and with ``ste=True`` its gradient is the clipped straight-through
estimator (Bengio et al. 2013; as in torch.ao's fake_quantize): 1 where ``x`` lies inside the
representable range, 0 where it saturates. `fake_quant_dynamic_torch` computes MX / NVFP4 block
scales from the tensor itself (as hardware does for activations), equal to `choose_spec` + `fake_quant`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, cast

import ml_dtypes
import numpy as np
import torch

from .errors import DataError, UsageError
from .ir import QUANT_FORMATS, QuantSpec


# ---------------------------------------------------------------------------------------------
# Format table
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FormatInfo:
    """What bitsmith knows about one format.

    `qmin`/`qmax` are the code range of integer formats and ``-max_finite``/``max_finite`` of the
    element format of float formats. `min_exponent`/`max_exponent` (floats only) are the unbiased
    exponents of the smallest and largest normal numbers (the OCP MX spec calls the latter emax_elem).
    """

    name: str
    bits: int
    is_float: bool
    qmin: float
    qmax: float
    code_dtype: type
    scale_format: str = "fp32"
    block_size: int | None = None
    mantissa_bits: int = 0
    min_exponent: int = 0
    max_exponent: int = 0

    @property
    def is_block_format(self) -> bool:
        """MX and NVFP4: the scales are part of the format and always per block."""
        return self.scale_format != "fp32"

    @property
    def max_finite(self) -> float:
        return self.qmax


def _integer(name: str, bits: int, signed: bool, dtype: type) -> FormatInfo:
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return FormatInfo(name, bits, False, qmin, qmax, dtype)


def _float(name: str, bits: int, dtype: type, mantissa_bits: int, min_exponent: int, max_exponent: int,
           scale_format: str = "fp32", block_size: int | None = None) -> FormatInfo:
    max_finite = float(ml_dtypes.finfo(dtype).max)
    return FormatInfo(name, bits, True, -max_finite, max_finite, dtype, scale_format, block_size,
                      mantissa_bits, min_exponent, max_exponent)


_E4M3 = dict(dtype=ml_dtypes.float8_e4m3fn, mantissa_bits=3, min_exponent=-6, max_exponent=8)
_E5M2 = dict(dtype=ml_dtypes.float8_e5m2, mantissa_bits=2, min_exponent=-14, max_exponent=15)
_E2M1 = dict(dtype=ml_dtypes.float4_e2m1fn, mantissa_bits=1, min_exponent=0, max_exponent=2)

FORMATS: dict[str, FormatInfo] = {
    "int8": _integer("int8", 8, True, np.int8),
    "uint8": _integer("uint8", 8, False, np.uint8),
    "int16": _integer("int16", 16, True, np.int16),
    "int7": _integer("int7", 7, True, np.int8),
    "int4": _integer("int4", 4, True, np.int8),
    "uint4": _integer("uint4", 4, False, np.uint8),
    "fp8_e4m3": _float("fp8_e4m3", 8, **_E4M3),
    "fp8_e5m2": _float("fp8_e5m2", 8, **_E5M2),
    "fp4_e2m1": _float("fp4_e2m1", 4, **_E2M1),
    "mxfp8": _float("mxfp8", 8, **_E4M3, scale_format="e8m0", block_size=32),
    "mxfp4": _float("mxfp4", 4, **_E2M1, scale_format="e8m0", block_size=32),
    "nvfp4": _float("nvfp4", 4, **_E2M1, scale_format="e4m3", block_size=16),
}
assert set(FORMATS) == set(QUANT_FORMATS), "formats.FORMATS and ir.QUANT_FORMATS disagree"

E8M0_MIN_EXPONENT, E8M0_MAX_EXPONENT = -127, 127
E4M3_MAX = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)  # 448
E2M1_MAX = float(ml_dtypes.finfo(ml_dtypes.float4_e2m1fn).max)  # 6
FP4_FORMATS = ("fp4_e2m1", "mxfp4", "nvfp4")


def format_info(fmt: str) -> FormatInfo:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise UsageError(f"unknown quantization format {fmt!r}; known: {', '.join(FORMATS)}") from None


# ---------------------------------------------------------------------------------------------
# Choosing scales
# ---------------------------------------------------------------------------------------------
def choose_spec(x: np.ndarray | None, fmt: str, granularity: str | None = None, axis: int | None = None,
                block_size: int | None = None, symmetric: bool = True,
                amin: float | np.floating | np.ndarray | None = None,
                amax: float | np.floating | np.ndarray | None = None) -> QuantSpec:
    """The QuantSpec that maps the range [amin, amax] (default: x's min and max) onto `fmt`.

    `granularity` defaults to "block" for MX/NVFP4 (block along the last axis) and "tensor"
    otherwise. With "channel" the range is taken per index of `axis`; with "block" per block of
    `block_size` along `axis`. Given `amin`/`amax` must have the scale's shape (or broadcast to it);
    `x` may then be None for tensor and channel granularity. MX scales always come from `x`; NVFP4
    takes its per-tensor scale from `amax` when given, its block scales from `x`.
    """
    info = format_info(fmt)
    granularity = granularity or ("block" if info.is_block_format else "tensor")
    x = None if x is None else np.asarray(x, np.float32)
    axis = _checked_axis(x, granularity, axis, info)
    block_size = _checked_block_size(granularity, block_size, info)
    if info.is_block_format:
        if x is None:
            raise UsageError(f"choose_spec: {fmt} computes its block scales from the data; pass x")
        if not symmetric:
            raise UsageError(f"choose_spec: {fmt} is symmetric only")
        if amin is not None or (amax is not None and info.scale_format == "e8m0"):
            raise UsageError(f"choose_spec: {fmt} takes its scales from x; only nvfp4 accepts amax (its tensor scale)")
        if info.scale_format == "e8m0":
            return _mx_spec(x, info, cast(int, axis), cast(int, block_size))
        return _nvfp4_spec(x, info, cast(int, axis), cast(int, block_size), amax)
    lo, hi = _value_range(x, granularity, axis, block_size, amin, amax)
    if info.is_float:
        if not symmetric:
            raise UsageError(f"choose_spec: float format {fmt} has no zero point; use symmetric=True")
        scale, zero_point = _float_scale(lo, hi, info), np.zeros_like(lo, np.int32)
    else:
        scale, zero_point = _integer_scale(lo, hi, info, symmetric)
    return QuantSpec(fmt, info.bits, granularity, axis, block_size if granularity == "block" else None,
                     scale, zero_point, symmetric=symmetric)


def dynamic_spec(x: np.ndarray) -> QuantSpec:
    """The uint8 per-tensor spec ONNX DynamicQuantizeLinear computes for `x`, in float32 as ONNX Runtime
    does (GetQuantizationParameter): [min(x, 0), max(x, 0)] over 0..255; an empty range gets scale 1."""
    x = np.asarray(x, np.float32)
    zero = np.float32(0)
    lo = min(np.float32(x.min()), zero) if x.size else zero
    hi = max(np.float32(x.max()), zero) if x.size else zero
    scale = np.float32(1) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zero_point = np.rint(np.clip(zero - lo / scale, np.float32(0), np.float32(255)))
    return QuantSpec("uint8", 8, "tensor", scale=np.asarray(scale), zero_point=np.asarray(zero_point, np.int32), symmetric=False)


def _static(x: np.ndarray, spec: QuantSpec) -> QuantSpec:
    """`spec` itself, or for a dynamic spec the static spec of this tensor."""
    return dynamic_spec(x) if spec.dynamic else spec


def _checked_axis(x: np.ndarray | None, granularity: str, axis: int | None, info: FormatInfo) -> int | None:
    if granularity == "tensor":
        if info.is_block_format:
            raise UsageError(f"choose_spec: {info.name} is a block format; use granularity='block'")
        return None
    if axis is None:
        if granularity == "block" and info.is_block_format:
            axis = -1
        else:
            raise UsageError(f"choose_spec: granularity {granularity!r} needs an axis")
    if x is None:
        return axis
    if not -x.ndim <= axis < x.ndim:
        raise UsageError(f"choose_spec: axis {axis} is out of range for a tensor of rank {x.ndim}")
    return axis % x.ndim


def _checked_block_size(granularity: str, block_size: int | None, info: FormatInfo) -> int | None:
    if granularity != "block":
        return None
    block_size = block_size or info.block_size
    if not block_size or block_size < 1:
        raise UsageError(f"choose_spec: block granularity of {info.name} needs a positive block_size")
    return int(block_size)


def _value_range(x: np.ndarray | None, granularity: str, axis: int | None, block_size: int | None,
                 amin, amax) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) float64 arrays shaped like the scale: as given, else reduced from x."""
    if (amin is None or amax is None) and (x is None or x.size == 0):
        raise UsageError("choose_spec: pass a non-empty x, or both amin and amax")
    lo = np.asarray(amin if amin is not None else _reduce(cast(np.ndarray, x), granularity, axis, block_size, np.min), np.float64)
    hi = np.asarray(amax if amax is not None else _reduce(cast(np.ndarray, x), granularity, axis, block_size, np.max), np.float64)
    try:
        shape = param_shape(x.shape, granularity, axis, block_size) if x is not None \
            else np.broadcast_shapes(lo.shape, hi.shape)
        lo, hi = np.broadcast_to(lo, shape).copy(), np.broadcast_to(hi, shape).copy()
    except ValueError:
        raise UsageError(f"choose_spec: amin/amax of shapes {np.shape(amin)} and {np.shape(amax)} do not fit "
                         f"a {granularity} scale") from None
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise DataError("choose_spec: the range to quantize holds NaN or Inf (does the tensor?)")
    return lo, hi


def param_shape(shape: tuple[int, ...], granularity: str, axis: int | None, block_size: int | None) -> tuple[int, ...]:
    """Shape of the scale / zero point for a tensor of `shape` (the ONNX QuantizeLinear layouts)."""
    if granularity == "tensor":
        return ()
    if granularity == "channel":
        return (shape[cast(int, axis)],)
    axis, block_size = cast(int, axis), cast(int, block_size)
    return tuple(shape[:axis]) + (-(-shape[axis] // block_size),) + tuple(shape[axis + 1:])


def _reduce(x: np.ndarray, granularity: str, axis: int | None, block_size: int | None,
            reduction: Callable[..., np.ndarray]) -> np.ndarray:
    """`reduction` over the whole tensor, per channel of `axis`, or per block along `axis`."""
    if granularity == "tensor":
        return np.asarray(reduction(x))
    if granularity == "channel":
        return reduction(x, axis=tuple(d for d in range(x.ndim) if d != axis))
    return _block_reduce(x, cast(int, axis), cast(int, block_size), reduction)


def _block_reduce(x: np.ndarray, axis: int, block_size: int, reduction: Callable[..., np.ndarray]) -> np.ndarray:
    """Reduce each block of `block_size` along `axis`; a partial last block is padded with its own
    last element, which changes no min, max or max-abs."""
    n = x.shape[axis]
    blocks = -(-n // block_size)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, blocks * block_size - n)
    padded = np.pad(x, pad, mode="edge")
    split = padded.shape[:axis] + (blocks, block_size) + padded.shape[axis + 1:]
    return reduction(padded.reshape(split), axis=axis + 1)


def _usable_scale(scale: np.ndarray | np.floating) -> np.ndarray:
    """float32 scales, with 1 wherever the range was empty (zero) or degenerate (a scale below
    float32's smallest normal number, which hardware may flush to zero, or not finite)."""
    scale = np.asarray(scale, np.float32)
    usable = np.isfinite(scale) & (scale >= np.finfo(np.float32).smallest_normal)
    return np.where(usable, scale, np.float32(1)).astype(np.float32)


def _float_scale(lo: np.ndarray, hi: np.ndarray, info: FormatInfo) -> np.ndarray:
    return _usable_scale(np.maximum(np.abs(lo), np.abs(hi)) / info.max_finite)


def _integer_scale(lo: np.ndarray, hi: np.ndarray, info: FormatInfo, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric: zero maps to 0 (signed) or to 2**(bits-1) (unsigned), scale = max|x| / positive steps.
    Asymmetric (as ONNX Runtime's quantization tool): the range is widened to include 0, spread
    over all codes, and the zero point is the code of 0."""
    if symmetric:
        zero = 0 if info.qmin < 0 else (int(info.qmax) + 1) // 2
        scale = _usable_scale(np.maximum(np.abs(lo), np.abs(hi)) / (info.qmax - zero))
        return scale, np.full(scale.shape, zero, np.int32)
    rmin, rmax = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = _usable_scale((rmax - rmin) / (info.qmax - info.qmin))
    zero_point = np.clip(np.rint(info.qmin - rmin / scale.astype(np.float64)), info.qmin, info.qmax)
    return scale, zero_point.astype(np.int32)


def _floor_log2(values: np.ndarray) -> np.ndarray:
    """floor(log2(|v|)) exactly, from the float's exponent (log2 rounds near powers of two)."""
    _, exponent = np.frexp(values)
    return exponent.astype(np.int32) - 1


def _mx_spec(x: np.ndarray, info: FormatInfo, axis: int, block_size: int) -> QuantSpec:
    """OCP MX v1.0: X = 2**(floor(log2(max|V|)) - emax_elem); all-zero blocks get the smallest
    E8M0 scale, blocks holding NaN or Inf (neither element type has Inf) the NaN scale."""
    block_amax = _block_reduce(np.abs(x), axis, block_size, np.max)
    exponent = np.clip(_floor_log2(block_amax) - info.max_exponent, E8M0_MIN_EXPONENT, E8M0_MAX_EXPONENT)
    exponent = np.where(block_amax == 0, E8M0_MIN_EXPONENT, exponent)
    scale = np.ldexp(np.float32(1), exponent).astype(np.float32)
    scale = np.where(np.isfinite(block_amax), scale, np.float32(np.nan))
    return QuantSpec(info.name, info.bits, "block", axis, block_size, scale, np.zeros(scale.shape, np.int32),
                     scale_format="e8m0")


def _nvfp4_spec(x: np.ndarray, info: FormatInfo, axis: int, block_size: int, amax) -> QuantSpec:
    """NVFP4: an FP32 tensor scale amax / (6 * 448) maps the largest block scale to E4M3's max; block
    scales are E4M3 (round half to even, saturating) of block_amax / 6 / tensor_scale."""
    tensor_amax = float(np.max(np.abs(x))) if amax is None else float(np.max(np.abs(amax)))
    tensor_scale = _usable_scale(np.float32(tensor_amax) / np.float32(E2M1_MAX * E4M3_MAX))
    block_amax = _block_reduce(np.abs(x), axis, block_size, np.max)
    wanted = block_amax / np.float32(E2M1_MAX) / tensor_scale
    scale = _saturating_cast(wanted, ml_dtypes.float8_e4m3fn).astype(np.float32)
    return QuantSpec(info.name, info.bits, "block", axis, block_size, scale, np.zeros(scale.shape, np.int32),
                     scale_format="e4m3", tensor_scale=float(tensor_scale))


# ---------------------------------------------------------------------------------------------
# numpy reference: quantize / dequantize / fake_quant
# ---------------------------------------------------------------------------------------------
def _normalized_axis(spec: QuantSpec, ndim: int) -> int | None:
    if spec.granularity == "tensor":
        return None
    if spec.axis is None or not -ndim <= spec.axis < ndim:
        raise UsageError(f"QuantSpec axis {spec.axis} is out of range for a tensor of rank {ndim}")
    return spec.axis % ndim


def _check_param_shape(actual: tuple[int, ...], shape: tuple[int, ...], spec: QuantSpec, axis: int | None) -> None:
    """The ONNX layouts: scalar (tensor), (C,) (channel), x's rank with ceil(C / block) at axis (block)."""
    expected = [param_shape(shape, spec.granularity, axis, spec.block_size)]
    if spec.granularity == "tensor":
        expected.append((1,))
    if tuple(actual) not in expected:
        raise UsageError(f"QuantSpec ({spec.format}, {spec.granularity}, axis={spec.axis}) has scale/zero point "
                         f"of shape {tuple(actual)}; a tensor of shape {shape} needs {expected[0]}")


def _expand(param: np.ndarray, shape: tuple[int, ...], spec: QuantSpec) -> np.ndarray:
    """A per-tensor/channel/block parameter made broadcastable against a tensor of `shape`."""
    axis = _normalized_axis(spec, len(shape))
    _check_param_shape(param.shape, shape, spec, axis)
    if spec.granularity == "tensor":
        return param.reshape(())
    if spec.granularity == "channel":
        return param.reshape([-1 if d == axis else 1 for d in range(len(shape))])
    block_axis, block_size = cast(int, axis), cast(int, spec.block_size)
    return np.repeat(param, block_size, axis=block_axis).take(np.arange(shape[block_axis]), axis=block_axis)


def effective_scale(spec: QuantSpec) -> np.ndarray:
    """The float32 factor from a code to its real value (NVFP4: block scale times tensor scale)."""
    if spec.tensor_scale is None:
        return spec.scale
    return (spec.scale * np.float32(spec.tensor_scale)).astype(np.float32)


def _scaled(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """x / scale in float32, 0 where the scale is 0."""
    out = np.zeros(np.broadcast_shapes(x.shape, scale.shape), np.float32)
    with np.errstate(over="ignore"):  # overflow to +-inf is fine: it saturates
        return np.divide(x, scale, out=out, where=scale != 0)


def _saturating_cast(values: np.ndarray, dtype: type) -> np.ndarray:
    """ONNX Cast/QuantizeLinear with saturate=True: clamp to +-max finite, then round half to even."""
    max_finite = np.float32(ml_dtypes.finfo(dtype).max)
    return np.clip(np.asarray(values, np.float32), -max_finite, max_finite).astype(dtype)


def cast_to_element(values: np.ndarray, fmt: str) -> np.ndarray:
    """Values (already divided by their scale) as the element type of a float format."""
    info = format_info(fmt)
    if not info.is_float:
        raise UsageError(f"cast_to_element: {fmt} is not a float format")
    return _saturating_cast(values, info.code_dtype)


def _integer_codes(scaled: np.ndarray, zero_point: np.ndarray, info: FormatInfo) -> np.ndarray:
    scaled = np.where(np.isnan(scaled), np.float32(0), scaled)
    lo, hi = (info.qmin - zero_point).astype(np.float32), (info.qmax - zero_point).astype(np.float32)
    rounded = np.rint(np.clip(scaled, lo, hi)).astype(np.int32)
    return (rounded + zero_point).astype(info.code_dtype)


def quantize(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Codes of x: integer arrays (int8/uint8/int16; int4 as int8, uint4 as uint8) or ml_dtypes
    float arrays (float8_e4m3fn, float8_e5m2, float4_e2m1fn) for float and block formats."""
    info = format_info(spec.format)
    x = np.asarray(x, np.float32)
    spec = _static(x, spec)
    scaled = _scaled(x, _expand(effective_scale(spec), x.shape, spec))
    if info.is_float:
        return _saturating_cast(scaled, info.code_dtype)
    return _integer_codes(scaled, _expand(spec.zero_point, x.shape, spec), info)


def dequantize(codes: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """float32 real values of codes: (q - zero_point) * scale."""
    if spec.dynamic:
        raise UsageError("dequantize: a dynamic spec has no scale until it sees the tensor; "
                         "dequantize with formats.dynamic_spec(tensor)")
    info = format_info(spec.format)
    codes = np.asarray(codes)
    scale = _expand(effective_scale(spec), codes.shape, spec)
    if info.is_float:
        values = codes.astype(np.float32)
    else:
        values = (codes.astype(np.int32) - _expand(spec.zero_point, codes.shape, spec)).astype(np.float32)
    with np.errstate(over="ignore"):  # huge scales overflow to +-inf, as in ONNX Runtime
        return (values * scale).astype(np.float32)


def fake_quant(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """dequantize(quantize(x)): x rounded to the values `spec` can represent, float32."""
    spec = _static(np.asarray(x, np.float32), spec)
    return dequantize(quantize(x, spec), spec)


def quantization_error(x: np.ndarray, spec: QuantSpec) -> float:
    """||fake_quant(x) - x||^2 (the ||Q(W) - W||^2 term of HAWQ-V2's sensitivity), in float64."""
    x = np.asarray(x, np.float32)
    diff = fake_quant(x, spec).astype(np.float64) - x
    return float(np.sum(diff * diff))


# ---------------------------------------------------------------------------------------------
# 4-bit storage
# ---------------------------------------------------------------------------------------------
def _nibbles(codes: np.ndarray) -> np.ndarray:
    """4-bit codes (int4 in int8, uint4 in uint8, or float4_e2m1fn) as their raw bits 0..15."""
    codes = np.asarray(codes)
    if codes.dtype == ml_dtypes.float4_e2m1fn:
        return codes.view(np.uint8) & 0xF
    if codes.dtype == np.int8 and codes.size and (codes.min() < -8 or codes.max() > 7):
        raise UsageError("pack_nibbles: int8 codes outside the int4 range [-8, 7]")
    if codes.dtype == np.uint8 and codes.size and codes.max() > 15:
        raise UsageError("pack_nibbles: uint8 codes outside the uint4 range [0, 15]")
    if codes.dtype not in (np.int8, np.uint8):
        raise UsageError(f"pack_nibbles: expected int4/uint4/fp4 codes, got {codes.dtype}")
    return codes.astype(np.uint8) & 0xF


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte, flattened in C order, the first code in the low nibble (as ONNX
    stores INT4/UINT4/FLOAT4E2M1); an odd count leaves the last high nibble zero."""
    flat = _nibbles(codes).reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, shape: int | tuple[int, ...], fmt: str = "uint4") -> np.ndarray:
    """Inverse of pack_nibbles: codes of `shape` as int8 (int4), uint8 (uint4) or float4_e2m1fn
    (fp4_e2m1, mxfp4, nvfp4)."""
    packed = np.asarray(packed, np.uint8).reshape(-1)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = int(np.prod(shape, dtype=np.int64))
    if packed.size * 2 < count:
        raise UsageError(f"unpack_nibbles: {packed.size} bytes hold fewer than {count} codes")
    nibbles = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(-1)[:count].reshape(shape)
    if fmt == "int4":
        return ((nibbles.astype(np.int8) ^ 8) - 8).astype(np.int8)
    if fmt == "uint4":
        return nibbles
    if fmt in FP4_FORMATS:
        return nibbles.view(ml_dtypes.float4_e2m1fn)
    raise UsageError(f"unpack_nibbles: {fmt!r} is not a 4-bit format")


# ---------------------------------------------------------------------------------------------
# Stored weights: the bytes an artifact keeps (the operands of the IR op DequantizeWeight)
# ---------------------------------------------------------------------------------------------
SUB_BYTE_FORMATS = ("int4", "uint4", "fp4_e2m1", "mxfp4", "nvfp4")
SCALE_DTYPES = {"e8m0": ml_dtypes.float8_e8m0fnu, "e4m3": ml_dtypes.float8_e4m3fn}


@dataclass(frozen=True)
class StoredWeight:
    """A quantized weight as an artifact stores it.

    codes: uint8 [ceil(n / 2)], two codes per byte (`pack_nibbles`), for 4-bit formats; otherwise the
        codes in the weight's shape: int8 / uint8 / int16 integers, the bit patterns of FP8 elements as uint8.
    scale: FP32 scales as float32; E8M0 (MX) and E4M3 (NVFP4) block scales as their uint8 bit patterns
        (`stored_scale`), in the layout of `QuantSpec.scale`.
    zero_point: int32, shaped like scale, for integer formats; None for float formats.
    tensor_scale: NVFP4's FP32 tensor scale as a float32 scalar array; None otherwise.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None = None
    tensor_scale: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (self.codes, self.scale, self.zero_point, self.tensor_scale) if a is not None)


def stored_codes(codes: np.ndarray, fmt: str) -> np.ndarray:
    """The bytes of `quantize`'s codes: 4-bit formats packed two per byte, FP8 bit patterns as uint8,
    integer codes unchanged."""
    info = format_info(fmt)
    if fmt in SUB_BYTE_FORMATS:
        return pack_nibbles(codes)
    if info.is_float:
        return np.ascontiguousarray(np.asarray(codes, info.code_dtype)).view(np.uint8)
    return np.asarray(codes, info.code_dtype)


def stored_scale(spec: QuantSpec) -> np.ndarray:
    """The scales as stored: float32 (FP32 scales), or the uint8 bit patterns of E8M0 / E4M3 scales
    (exact: `choose_spec` keeps block scales as the float32 values those formats encode)."""
    if spec.scale_format == "fp32":
        return np.asarray(spec.scale, np.float32)
    encoded = np.asarray(spec.scale, np.float32).astype(SCALE_DTYPES[spec.scale_format])
    if not np.array_equal(encoded.astype(np.float32), np.asarray(spec.scale, np.float32), equal_nan=True):
        raise UsageError(f"stored_scale: {spec.format} scales are not all {spec.scale_format} values")
    return encoded.view(np.uint8)


def store_weight(weight: np.ndarray, spec: QuantSpec) -> StoredWeight:
    """`weight` quantized with `spec`, as the bytes an artifact stores (see StoredWeight)."""
    if spec.dynamic:
        raise UsageError("store_weight: a weight cannot have a dynamic spec")
    info = format_info(spec.format)
    codes = stored_codes(quantize(weight, spec), spec.format)
    zero_point = None if info.is_float else np.asarray(spec.zero_point, np.int32)
    tensor_scale = None if spec.tensor_scale is None else np.asarray(spec.tensor_scale, np.float32)
    return StoredWeight(codes, stored_scale(spec), zero_point, tensor_scale)


def element_table(fmt: str) -> np.ndarray:
    """float32 value of every bit pattern of a float format's element (16 for FP4, 256 for FP8)."""
    info = format_info(fmt)
    if not info.is_float:
        raise UsageError(f"element_table: {fmt} is not a float format")
    return np.arange(1 << info.bits, dtype=np.uint8).view(info.code_dtype).astype(np.float32)


def nan_code(fmt: str) -> int:
    """The bit pattern a NaN quantizes to in an FP8 format (ml_dtypes': 0x7F for E4M3, 0x7E for E5M2)."""
    return int(np.asarray(np.nan, np.float32).astype(format_info(fmt).code_dtype).view(np.uint8))


def scale_table(scale_format: str) -> np.ndarray:
    """float32 value of every byte of a stored E8M0 / E4M3 scale (E8M0: 2**(byte - 127), 255 is NaN)."""
    return np.arange(256, dtype=np.uint8).view(SCALE_DTYPES[scale_format]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# torch twin (fake quantization with a straight-through estimator)
# ---------------------------------------------------------------------------------------------
def _expand_torch(param: np.ndarray, shape: tuple[int, ...], spec: QuantSpec, device: torch.device) -> torch.Tensor:
    axis = _normalized_axis(spec, len(shape))
    _check_param_shape(param.shape, shape, spec, axis)
    tensor = torch.from_numpy(np.ascontiguousarray(param)).to(device)
    if spec.granularity == "tensor":
        return tensor.reshape(())
    if spec.granularity == "channel":
        return tensor.reshape([-1 if d == axis else 1 for d in range(len(shape))])
    block_axis = cast(int, axis)
    return _repeat_blocks_torch(tensor, block_axis, cast(int, spec.block_size), shape[block_axis])


def _repeat_blocks_torch(per_block: torch.Tensor, axis: int, block_size: int, length: int) -> torch.Tensor:
    return per_block.repeat_interleave(block_size, dim=axis).narrow(axis, 0, length)


def _powers_of_two_torch(exponent: torch.Tensor) -> torch.Tensor:
    """2**exponent as float32, exactly (built from float64 bits, so E8M0's 2**-127 works too)."""
    return ((exponent.to(torch.int64) + 1023) << 52).view(torch.float64).to(torch.float32)


def round_to_element_torch(values: torch.Tensor, fmt: str) -> torch.Tensor:
    """The torch twin of cast_to_element, kept in float32: saturate, then round half to even on
    the format's grid (step 2**(exponent - mantissa_bits), exponent at least the smallest normal's)."""
    info = format_info(fmt)
    clamped = values.clamp(info.qmin, info.qmax)
    _, frexp_exponent = torch.frexp(clamped.detach())
    exponent = torch.clamp(frexp_exponent - 1, min=info.min_exponent)
    step = _powers_of_two_torch(exponent - info.mantissa_bits)
    rounded = torch.round(clamped / step) * step
    if fmt in FP4_FORMATS:  # E2M1 has no NaN; ml_dtypes maps NaN to zero
        rounded = torch.where(torch.isnan(rounded), torch.zeros_like(rounded), rounded)
    return rounded


def _fake_quant_core_torch(x: torch.Tensor, info: FormatInfo, scale: torch.Tensor,
                           zero_point: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fake-quantized x, mask of the elements that did not saturate) for expanded float32 scales."""
    nonzero = scale != 0
    scaled = torch.where(nonzero, x / torch.where(nonzero, scale, torch.ones_like(scale)), torch.zeros_like(x))
    lo: float | torch.Tensor
    hi: float | torch.Tensor
    if info.is_float:
        lo, hi = info.qmin, info.qmax
        quantized = round_to_element_torch(scaled, info.name)
    else:
        zp = cast(torch.Tensor, zero_point)  # integer formats always carry one
        lo, hi = info.qmin - zp, info.qmax - zp
        scaled = torch.where(torch.isnan(scaled), torch.zeros_like(scaled), scaled)
        quantized = torch.round(torch.clamp(scaled, lo, hi))
    passes = (scaled >= lo) & (scaled <= hi)
    return quantized * scale, passes


def _fake_quant_spec_torch(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    info = format_info(spec.format)
    scale = _expand_torch(effective_scale(spec), tuple(x.shape), spec, x.device)
    zero_point = None if info.is_float else _expand_torch(spec.zero_point, tuple(x.shape), spec, x.device).float()
    return _fake_quant_core_torch(x, info, scale, zero_point)


def _fake_quant_dynamic_spec_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of `dynamic_spec` + fake quantization: the parameters come from x (as constants for autograd)."""
    values = x.detach()
    zero = torch.zeros((), dtype=torch.float32, device=x.device)
    lo = torch.minimum(values.min(), zero) if values.numel() else zero
    hi = torch.maximum(values.max(), zero) if values.numel() else zero
    scale = torch.where(hi == lo, torch.ones_like(hi), (hi - lo) / 255.0)  # exact in float32, as np.float32(255)
    zero_point = torch.round(torch.clamp(zero - lo / scale, 0, 255))
    return _fake_quant_core_torch(x, FORMATS["uint8"], scale, zero_point)


def _block_amax_torch(x: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    """max |x| per block along `axis`, in the numpy layout (axis dimension = number of blocks)."""
    magnitude = x.abs().movedim(axis, -1)
    length = magnitude.shape[-1]
    blocks = -(-length // block_size)
    padded = torch.nn.functional.pad(magnitude, (0, blocks * block_size - length))
    return padded.reshape(*padded.shape[:-1], blocks, block_size).amax(dim=-1).movedim(-1, axis)


def _dynamic_block_scale_torch(x: torch.Tensor, info: FormatInfo, axis: int, block_size: int) -> torch.Tensor:
    """Twin of choose_spec's MX / NVFP4 scales (`_mx_spec`, `_nvfp4_spec`), expanded to x's shape."""
    block_amax = _block_amax_torch(x, axis, block_size)
    if info.scale_format == "e8m0":
        exponent = torch.frexp(block_amax)[1] - 1 - info.max_exponent
        exponent = torch.where(block_amax == 0, E8M0_MIN_EXPONENT, exponent.clamp(E8M0_MIN_EXPONENT, E8M0_MAX_EXPONENT))
        per_block = torch.where(torch.isfinite(block_amax), _powers_of_two_torch(exponent),
                                torch.full_like(block_amax, float("nan")))
    else:
        tensor_scale = x.abs().amax() / float(E2M1_MAX * E4M3_MAX)  # 2688: exact in float32
        usable = torch.isfinite(tensor_scale) & (tensor_scale >= float(np.finfo(np.float32).smallest_normal))
        tensor_scale = torch.where(usable, tensor_scale, torch.ones_like(tensor_scale))
        per_block = round_to_element_torch(block_amax / float(E2M1_MAX) / tensor_scale, "fp8_e4m3") * tensor_scale
    return _repeat_blocks_torch(per_block, axis, block_size, x.shape[axis])


_Compute = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # x -> (fake-quantized, not clipped)


class _StraightThrough(torch.autograd.Function):
    """Forward: the exact fake-quantized value. Backward: the gradient where x was not clipped."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, compute: _Compute) -> torch.Tensor:  # type: ignore[override]
        quantized, passes = compute(x)
        ctx.save_for_backward(passes)
        return quantized

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (passes,) = ctx.saved_tensors
        return torch.where(passes, grad, torch.zeros_like(grad)), None


def _apply_torch(x: torch.Tensor, compute: _Compute, ste: bool) -> torch.Tensor:
    x32 = x.to(torch.float32)
    out = _StraightThrough.apply(x32, compute) if ste else compute(x32)[0]
    return out.to(x.dtype) if x.dtype.is_floating_point else out


def fake_quant_torch(x: torch.Tensor, spec: QuantSpec, ste: bool = True) -> torch.Tensor:
    """Torch twin of `fake_quant` (bit-identical, computed in float32, returned in x's dtype).

    ste=True: straight-through gradient (1 inside the representable range, 0 where clipped).
    ste=False: plain autograd through the rounding (zero gradient almost everywhere).
    A dynamic spec takes its scale and zero point from x (ONNX DynamicQuantizeLinear, see `dynamic_spec`).
    """
    if spec.dynamic:
        return _apply_torch(x, _fake_quant_dynamic_spec_torch, ste)
    return _apply_torch(x, lambda x32: _fake_quant_spec_torch(x32, spec), ste)


def fake_quant_dynamic_torch(x: torch.Tensor, fmt: str, axis: int = -1, block_size: int | None = None,
                             ste: bool = True) -> torch.Tensor:
    """MX / NVFP4 fake quantization with the scales computed from x itself, as hardware does for
    activations: equals ``fake_quant(x, choose_spec(x, fmt, axis=axis, block_size=block_size))``.
    The scales are treated as constants by autograd."""
    info = format_info(fmt)
    if not info.is_block_format:
        raise UsageError(f"fake_quant_dynamic_torch: {fmt} is not a block format; use choose_spec + fake_quant_torch")
    if not -x.ndim <= axis < x.ndim:
        raise UsageError(f"fake_quant_dynamic_torch: axis {axis} is out of range for a tensor of rank {x.ndim}")
    block_size = _checked_block_size("block", block_size, info)

    def compute(x32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = _dynamic_block_scale_torch(x32.detach(), info, axis % x.ndim, cast(int, block_size))
        return _fake_quant_core_torch(x32, info, scale, None)

    return _apply_torch(x, compute, ste)
