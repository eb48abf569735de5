"""The reference executor: the IR runs on torch, one function per op (`KERNELS`).

It is the truth the backends are checked against, and it serves calibration, fake-quant simulation
and Hessian-vector products (torch autograd). Kernels are device-agnostic, so the frontend also
runs them on torch's "meta" device to infer shapes without computing anything.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError, UnsupportedError
from .formats import SUB_BYTE_FORMATS, element_table, format_info, nan_code, round_to_element_torch, scale_table
from .ir import Graph, Node

Tensor = torch.Tensor
Kernel = Callable[[list[Any], dict[str, Any]], list[Tensor]]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}

KERNELS: dict[str, Kernel] = {}


def kernel(*names: str) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        for name in names:
            KERNELS[name] = fn
        return fn
    return register


def _one(fn: Callable[..., Tensor]) -> Kernel:
    """Lift `fn(*inputs, **attrs) -> Tensor` to the kernel calling convention."""
    return lambda xs, attrs: [fn(*xs, **attrs)]


# -- elementwise --------------------------------------------------------------------------------
def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a: Tensor, b: Tensor) -> Tensor:
    return torch.pow(a, b.to(a.dtype) if a.dtype.is_floating_point else b)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Kernel:
    def run(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return [out]
    return run


KERNELS.update({
    "Add": _one(torch.add), "Sub": _one(torch.sub), "Mul": _one(torch.mul), "Div": _one(_div),
    "Pow": _one(_pow), "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum),
    "Equal": _one(torch.eq), "Less": _one(torch.lt), "Greater": _one(torch.gt),
    "LessOrEqual": _one(torch.le), "GreaterOrEqual": _one(torch.ge),
    "And": _one(torch.logical_and), "Or": _one(torch.logical_or), "Not": _one(torch.logical_not),
    "Where": _one(torch.where),
    "Relu": _one(torch.relu), "Sigmoid": _one(torch.sigmoid), "Tanh": _one(torch.tanh),
    "Exp": _one(torch.exp), "Log": _one(torch.log), "Sqrt": _one(torch.sqrt),
    "Reciprocal": _one(torch.reciprocal), "Neg": _one(torch.neg), "Abs": _one(torch.abs),
    "Erf": _one(torch.erf), "Floor": _one(torch.floor), "Ceil": _one(torch.ceil),
    "Round": _one(torch.round), "Sin": _one(torch.sin), "Cos": _one(torch.cos),
    "Softplus": _one(F.softplus), "MatMul": _one(torch.matmul),
})


@kernel("Clip")
def _clip(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x = xs[0]
    lo, hi = attrs["min"], attrs["max"]
    if not x.dtype.is_floating_point:
        info = torch.iinfo(x.dtype)
        lo, hi = max(lo, info.min), min(hi, info.max)
        return [torch.clamp(x, int(lo), int(hi))]
    return [torch.clamp(x, None if lo == -math.inf else lo, None if hi == math.inf else hi)]


@kernel("LeakyRelu")
def _leaky_relu(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [F.leaky_relu(xs[0], attrs["alpha"])]


@kernel("Elu")
def _elu(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [F.elu(xs[0], attrs["alpha"])]


@kernel("HardSigmoid")
def _hard_sigmoid(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [torch.clamp(xs[0] * attrs["alpha"] + attrs["beta"], 0.0, 1.0)]


@kernel("HardSwish")
def _hard_swish(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x = xs[0]
    return [x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)]


@kernel("Gelu")
def _gelu(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [F.gelu(xs[0], approximate=attrs["approximate"])]


@kernel("PRelu")
def _prelu(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x, slope = xs
    return [torch.where(x < 0, x * slope, x)]


@kernel("Cast")
def _cast(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [xs[0].to(TORCH_DTYPES[attrs["to"]])]


# -- convolution --------------------------------------------------------------------------------
def _split_pads(pads: Sequence[int]) -> tuple[list[int], list[int]]:
    half = len(pads) // 2
    return list(pads[:half]), list(pads[half:])


def _torch_pad_order(begins: list[int], ends: list[int]) -> list[int]:
    """ONNX (begins, ends) per axis -> F.pad's (last axis first) [b, e, b, e, ...], without the
    unpadded leading axes (torch's reflect/replicate modes only pad trailing axes)."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [b, e]
    while len(out) > 2 and out[-2:] == [0, 0]:
        out = out[:-2]
    return out


def _pad_input(x: Tensor, pads: Sequence[int], value: float = 0.0) -> tuple[Tensor, list[int]]:
    """Apply asymmetric padding explicitly; return (x, symmetric padding for torch)."""
    begins, ends = _split_pads(pads)
    if begins == ends:
        return x, begins
    return F.pad(x, _torch_pad_order(begins, ends), value=value), [0] * len(begins)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@kernel("Conv")
def _conv(xs: list[Any], attrs: dict[str, Any]) -> list[Tensor]:
    x, w = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    x, padding = _pad_input(x, attrs["pads"])
    conv = _CONV[x.dim() - 2]
    return [conv(x, w, bias, attrs["strides"], padding, attrs["dilations"], attrs["group"])]


@kernel("ConvTranspose")
def _conv_transpose(xs: list[Any], attrs: dict[str, Any]) -> list[Tensor]:
    x, w = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    rank = x.dim() - 2
    y = _CONV_T[rank](x, w, bias, attrs["strides"], 0, attrs["output_padding"], attrs["group"], attrs["dilations"])
    begins, ends = _split_pads(attrs["pads"])
    index = [slice(None), slice(None)] + [slice(b, y.shape[2 + i] - e) for i, (b, e) in enumerate(zip(begins, ends))]
    return [y[tuple(index)]]


# -- normalization and reductions ---------------------------------------------------------------
@kernel("BatchNormalization")
def _batch_norm(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x, scale, bias, mean, var = xs
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, attrs["epsilon"])]


@kernel("LayerNormalization")
def _layer_norm(xs: list[Any], attrs: dict[str, Any]) -> list[Tensor]:
    x, scale = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    shape = tuple(x.shape[attrs["axis"]:])
    return [F.layer_norm(x, shape, scale.expand(shape), None if bias is None else bias.expand(shape), attrs["epsilon"])]


@kernel("Softmax")
def _softmax(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [torch.softmax(xs[0], attrs["axis"])]


@kernel("LogSoftmax")
def _log_softmax(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [torch.log_softmax(xs[0], attrs["axis"])]


def _reduce(fn: Callable[..., Tensor]) -> Kernel:
    def run(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
        return [fn(xs[0], dim=tuple(attrs["axes"]), keepdim=bool(attrs["keepdims"]))]
    return run


KERNELS.update({
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax), "ReduceMin": _reduce(torch.amin),
})


@kernel("ArgMax")
def _argmax(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [torch.argmax(xs[0], dim=attrs["axis"], keepdim=bool(attrs["keepdims"]))]


# -- pooling ------------------------------------------------------------------------------------
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@kernel("MaxPool")
def _max_pool(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    source = xs[0]
    # integer codes (the integer path pools codes; padding never wins) pool exactly in float64
    x = source if source.dtype.is_floating_point else source.to(torch.float64)
    x, padding = _pad_input(x, attrs["pads"], value=-math.inf)
    pool = _MAXPOOL[x.dim() - 2]
    y = pool(x, attrs["kernel_shape"], attrs["strides"], padding, attrs["dilations"], bool(attrs["ceil_mode"]))
    return [y.to(source.dtype)]


@kernel("AveragePool")
def _avg_pool(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x = xs[0]
    begins, ends = _split_pads(attrs["pads"])
    if begins != ends and not attrs["count_include_pad"]:
        raise UnsupportedError("AveragePool with asymmetric pads and count_include_pad=0 is not supported")
    x, padding = _pad_input(x, attrs["pads"])
    pool = _AVGPOOL[x.dim() - 2]
    return [pool(x, attrs["kernel_shape"], attrs["strides"], padding, bool(attrs["ceil_mode"]),
                 bool(attrs["count_include_pad"]))]


@kernel("GlobalAveragePool")
def _global_avg_pool(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x = xs[0]
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


@kernel("GlobalMaxPool")
def _global_max_pool(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x = xs[0]
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


# -- Resize (ONNX coordinate transforms, separable per axis) ------------------------------------
def _source_coords(out_len: int, in_len: int, scale: float, mode: str, device: torch.device) -> Tensor:
    x = torch.arange(out_len, dtype=torch.float64, device=device)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros_like(x)
    if mode == "align_corners":
        return x * (in_len - 1) / (out_len - 1) if out_len > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise UnsupportedError(f"Resize coordinate_transformation_mode {mode!r} is not supported")


def _nearest_index(coords: Tensor, rounding: str, in_len: int) -> Tensor:
    if rounding == "round_prefer_floor":
        idx = torch.ceil(coords - 0.5)
    elif rounding == "round_prefer_ceil":
        idx = torch.floor(coords + 0.5)
    elif rounding == "floor":
        idx = torch.floor(coords)
    elif rounding == "ceil":
        idx = torch.ceil(coords)
    else:
        raise UnsupportedError(f"Resize nearest_mode {rounding!r} is not supported")
    return idx.clamp(0, in_len - 1).long()


def _resize_axis(x: Tensor, axis: int, out_len: int, scale: float, attrs: dict[str, Any]) -> Tensor:
    in_len = x.shape[axis]
    coords = _source_coords(out_len, in_len, scale, attrs["coordinate_transformation_mode"], x.device)
    if attrs["mode"] == "nearest":
        return x.index_select(axis, _nearest_index(coords, attrs["nearest_mode"], in_len))
    coords = coords.clamp(0, in_len - 1)
    lo = torch.floor(coords).long()
    hi = (lo + 1).clamp(max=in_len - 1)
    frac_shape = [1] * x.dim()
    frac_shape[axis] = out_len
    frac = (coords - lo.to(coords.dtype)).to(x.dtype).reshape(frac_shape)
    a, b = x.index_select(axis, lo), x.index_select(axis, hi)
    return a + (b - a) * frac


@kernel("Resize")
def _resize(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    if attrs["mode"] not in ("nearest", "linear"):
        raise UnsupportedError(f"Resize mode {attrs['mode']!r} is not supported (nearest, linear are)")
    x = xs[0]
    for axis, (out_len, scale) in enumerate(zip(attrs["sizes"], attrs["scales"])):
        if out_len != x.shape[axis] or scale != 1.0:
            x = _resize_axis(x, axis, out_len, scale, attrs)
    return [x]


# -- data movement ------------------------------------------------------------------------------
@kernel("Reshape")
def _reshape(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [xs[0].reshape(attrs["shape"])]


@kernel("Transpose")
def _transpose(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [xs[0].permute(attrs["perm"])]


@kernel("Concat")
def _concat(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [torch.cat(xs, dim=attrs["axis"])]


@kernel("Split")
def _split(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return list(torch.split(xs[0], attrs["split"], dim=attrs["axis"]))


@kernel("Slice")
def _slice(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x = xs[0]
    for start, end, axis, step in zip(attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]):
        if step > 0:
            x = x.narrow(axis, start, max(0, end - start))[(slice(None),) * axis + (slice(None, None, step),)]
        else:
            index = torch.arange(start, end, step, device=x.device)
            x = x.index_select(axis, index)
    return [x]


@kernel("Squeeze")
def _squeeze(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x = xs[0]
    shape = [d for i, d in enumerate(x.shape) if i not in attrs["axes"]]
    return [x.reshape(shape)]


@kernel("Unsqueeze")
def _unsqueeze(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x = xs[0]
    for axis in sorted(attrs["axes"]):
        x = x.unsqueeze(axis)
    return [x]


@kernel("Expand")
def _expand(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [xs[0].expand(attrs["shape"])]


@kernel("Gather")
def _gather(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    data, indices = xs
    axis = attrs["axis"]
    size = data.shape[axis]
    flat = indices.reshape(-1).long()
    flat = torch.where(flat < 0, flat + size, flat)
    out = data.index_select(axis, flat)
    return [out.reshape(tuple(data.shape[:axis]) + tuple(indices.shape) + tuple(data.shape[axis + 1:]))]


@kernel("Pad")
def _pad(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    begins, ends = _split_pads(attrs["pads"])
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[attrs["mode"]]
    order = _torch_pad_order(begins, ends)
    if mode == "constant":
        return [F.pad(xs[0], order, value=attrs["value"])]
    return [F.pad(xs[0], order, mode=mode)]


@kernel("Tile")
def _tile(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    return [xs[0].repeat(attrs["repeats"])]


@kernel("DepthToSpace")
def _depth_to_space(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x, b = xs[0], attrs["blocksize"]
    n, c, h, w = x.shape
    if attrs["mode"] == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


# -- quantized (integer) ops: exact arithmetic only (ops.QUANTIZED_OPS, docs/design/integer_lowering.md) ----
# Products of codes accumulate in float64, exact while |acc| < 2^53 (any K < 2^37 for 8-bit codes), then
# become int64; requantization is int64 multiply, add and arithmetic shift. The TVM emitters compute the
# same integers with int32 accumulation, so both agree bit for bit.
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def _along(param: Tensor, rank: int, axis: int) -> Tensor:
    """A scalar or per-channel (1-D) parameter shaped to broadcast along `axis` of a rank-`rank` tensor."""
    if param.numel() == 1:
        return param.reshape(())
    return param.reshape([-1 if d == axis else 1 for d in range(rank)])


def requantize(acc: Tensor, multiplier: Tensor | int, shift: Tensor | int, zero_point: int,
               out_min: int, out_max: int) -> Tensor:
    """clamp(((acc * M + 2^(s-1)) >> s) + zero_point, out_min, out_max) in int64 (`>>` rounds down)."""
    multiplier = torch.as_tensor(multiplier, dtype=torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64)
    rounding = torch.bitwise_left_shift(torch.ones_like(shift), shift - 1)
    scaled = torch.bitwise_right_shift(acc.to(torch.int64) * multiplier + rounding, shift)
    return (scaled + int(zero_point)).clamp(int(out_min), int(out_max))


def _checked_int32(acc: Tensor, where: str) -> Tensor:
    if acc.numel() and (int(acc.min()) < INT32_MIN or int(acc.max()) > INT32_MAX):
        raise UnsupportedError(f"{where}: the accumulator leaves the int32 range")
    return acc


def _epilogue(acc: Tensor, params: list[Tensor], attrs: dict[str, Any], axis: int, where: str) -> Tensor:
    """The requantize or float epilogue of QConv / QMatMul on an int64 accumulator."""
    acc = _checked_int32(acc, where)
    rank = acc.dim()
    if attrs["epilogue"] == "float":
        (out_scale,) = params
        return acc.to(torch.float32) * _along(out_scale.to(torch.float32), rank, axis)
    multiplier, shift = (_along(p.to(torch.int64), rank, axis) for p in params)
    out = requantize(acc, multiplier, shift, attrs["out_zero_point"], attrs["out_min"], attrs["out_max"])
    return out.to(TORCH_DTYPES[attrs["out_dtype"]])


@kernel("QuantizeLinear")
def _quantize_linear(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x, scale, zero_point = xs
    rank = x.dim()
    scale = _along(scale.to(torch.float32), rank, attrs["axis"])
    zero_point = _along(zero_point.to(torch.int32), rank, attrs["axis"])
    scaled = x.to(torch.float32) / scale
    scaled = torch.where(torch.isnan(scaled), torch.zeros_like(scaled), scaled)
    low, high = (attrs["qmin"] - zero_point).to(torch.float32), (attrs["qmax"] - zero_point).to(torch.float32)
    codes = torch.round(torch.minimum(torch.maximum(scaled, low), high)).to(torch.int32) + zero_point
    return [codes.to(TORCH_DTYPES[attrs["dtype"]])]


@kernel("DequantizeLinear")
def _dequantize_linear(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    q, scale, zero_point = xs
    rank = q.dim()
    centered = q.to(torch.int32) - _along(zero_point.to(torch.int32), rank, attrs["axis"])
    return [centered.to(torch.float32) * _along(scale.to(torch.float32), rank, attrs["axis"])]


@kernel("QConv")
def _qconv(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x, w, w_zero_point, bias, *params = xs
    rank = x.dim()
    centered = x.to(torch.float64) - float(attrs["x_zero_point"])
    weights = w.to(torch.float64) - _along(w_zero_point.to(torch.float64), rank, 0)
    centered, padding = _pad_input(centered, attrs["pads"])
    conv = _CONV[rank - 2]
    acc = conv(centered, weights, None, attrs["strides"], padding, attrs["dilations"], attrs["group"])
    acc = acc.to(torch.int64) + _along(bias.to(torch.int64), rank, 1)
    return [_epilogue(acc, params, attrs, 1, "QConv")]


def _per_output_channel_transpose_weights(w: Tensor, zero_point: Tensor, group: int) -> Tensor:
    """ConvTranspose weight codes [C_in, C_out / group, k...] minus zero points given per output channel
    (output channel g * (C_out / group) + j reads w[group g's inputs, j]) or as a scalar, in float64."""
    weights, zero_point = w.to(torch.float64), zero_point.to(torch.float64).reshape(-1)
    if zero_point.numel() == 1:
        return weights - zero_point.reshape(())
    c_in, per_group, *kernel = w.shape
    split = weights.reshape(group, c_in // group, per_group, *kernel)
    return (split - zero_point.reshape(group, 1, per_group, *[1] * len(kernel))).reshape(w.shape)


@kernel("QConvTranspose")
def _qconv_transpose(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x, w, w_zero_point, bias, *params = xs
    rank = x.dim()
    centered = x.to(torch.float64) - float(attrs["x_zero_point"])
    weights = _per_output_channel_transpose_weights(w, w_zero_point, attrs["group"])
    (acc,) = _conv_transpose([centered, weights], attrs)  # float64 sums of integers: exact
    acc = acc.to(torch.int64) + _along(bias.to(torch.int64), rank, 1)
    return [_epilogue(acc, params, attrs, 1, "QConvTranspose")]


@kernel("QMatMul")
def _qmatmul(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    a, b, b_zero_point, bias, *params = xs
    left = a.to(torch.float64) - float(attrs["a_zero_point"])
    right = b.to(torch.float64) - _along(b_zero_point.to(torch.float64), b.dim(), b.dim() - 1)
    acc = torch.matmul(left, right).to(torch.int64) + bias.to(torch.int64)
    return [_epilogue(acc, params, attrs, acc.dim() - 1, "QMatMul")]


@kernel("QAdd")
def _qadd(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    a, b = (x.to(torch.int64) for x in xs)
    total = (a - attrs["a_zero_point"]) * attrs["a_multiplier"] + (b - attrs["b_zero_point"]) * attrs["b_multiplier"]
    out = requantize(total, 1, attrs["shift"], attrs["out_zero_point"], attrs["out_min"], attrs["out_max"])
    return [out.to(TORCH_DTYPES[attrs["out_dtype"]])]


@kernel("QMul")
def _qmul(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    a, b = (x.to(torch.int64) for x in xs)
    product = (a - attrs["a_zero_point"]) * (b - attrs["b_zero_point"])
    out = requantize(product, attrs["multiplier"], attrs["shift"], attrs["out_zero_point"], attrs["out_min"],
                     attrs["out_max"])
    return [out.to(TORCH_DTYPES[attrs["out_dtype"]])]


@kernel("QLookup")
def _qlookup(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    q, table = xs
    index = q.to(torch.int64) - attrs["qmin"]
    if table.dim() == 1:
        return [table[index]]
    axis, width = attrs["axis"], table.shape[1]
    channel = _along(torch.arange(table.shape[0], dtype=torch.int64, device=q.device), q.dim(), axis)
    return [table.reshape(-1)[channel * width + index]]


@kernel("QGlobalAveragePool")
def _qglobal_average_pool(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x = xs[0].to(torch.int64) - attrs["x_zero_point"]
    total = x.sum(dim=tuple(range(2, x.dim())), keepdim=True)
    out = requantize(total, attrs["multiplier"], attrs["shift"], attrs["out_zero_point"], attrs["out_min"],
                     attrs["out_max"])
    return [out.to(TORCH_DTYPES[attrs["out_dtype"]])]


@kernel("QAveragePool")
def _qaverage_pool(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    centered = xs[0].to(torch.float64) - attrs["x_zero_point"]
    centered, padding = _pad_input(centered, attrs["pads"])
    pool = _AVGPOOL[centered.dim() - 2]
    extra = {} if centered.dim() == 3 else {"divisor_override": 1}
    total = pool(centered, attrs["kernel_shape"], attrs["strides"], padding, bool(attrs["ceil_mode"]), True, **extra)
    if centered.dim() == 3:  # avg_pool1d has no divisor_override
        total = total * int(np.prod(attrs["kernel_shape"]))
    out = requantize(total.round().to(torch.int64), attrs["multiplier"], attrs["shift"], attrs["out_zero_point"],
                     attrs["out_min"], attrs["out_max"])
    return [out.to(TORCH_DTYPES[attrs["out_dtype"]])]


@kernel("QSoftmax")
def _qsoftmax(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    q, table = xs[0].to(torch.int64), xs[1].to(torch.int64)
    axis = attrs["axis"]
    if len(xs) > 2:
        return [_masked_qsoftmax(q, table, xs[2].to(torch.bool), attrs)]
    exps = table[(q.amax(dim=axis, keepdim=True) - q).clamp(max=table.numel() - 1)]
    return [_softmax_probabilities(exps, exps.sum(dim=axis, keepdim=True), attrs)]


MASKED_CODE = -(1 << 16)  # below every code: what masked positions hold while a row's maximum is taken
SOFTMAX_OUT_BITS = {"uint8": 8, "int8": 8, "int16": 15}  # QSoftmax's output scale is 2^-bits
SOFTMAX_RECIPROCAL_BITS = 62  # QSoftmax divides 2^62 by each row's sum once


def _masked_qsoftmax(q: Tensor, table: Tensor, keep: Tensor, attrs: dict[str, Any]) -> Tensor:
    """QSoftmax with a `keep` mask (ops.QUANTIZED_OPS): masked positions get exp = 0."""
    axis = attrs["axis"]
    top = torch.where(keep, q, MASKED_CODE).amax(dim=axis, keepdim=True)
    steps = torch.where(keep, top - q, 0).clamp(max=table.numel() - 1)
    exps = torch.where(keep, table[steps], 0)
    return _softmax_probabilities(exps, exps.sum(dim=axis, keepdim=True), attrs)


def _softmax_probabilities(exps: Tensor, total: Tensor, attrs: dict[str, Any]) -> Tensor:
    """QSoftmax's output codes: one division per row, inv = 2^62 // max(total, 1), then
    p = (e * inv + 2^(61 - B)) >> (62 - B) (e <= total, so e * inv <= 2^62)."""
    shift = SOFTMAX_RECIPROCAL_BITS - SOFTMAX_OUT_BITS[attrs["out_dtype"]]
    inverse = torch.div(torch.full_like(total, 1 << SOFTMAX_RECIPROCAL_BITS), total.clamp(min=1),
                        rounding_mode="floor")
    probs = torch.bitwise_right_shift(exps * inverse + (1 << (shift - 1)), shift)
    out = (probs + attrs["out_zero_point"]).clamp(attrs["out_min"], attrs["out_max"])
    return out.to(TORCH_DTYPES[attrs["out_dtype"]])


def isqrt(v: Tensor) -> Tensor:
    """floor(sqrt(v)) of int64 v in [0, 2^62), exactly: float64's correctly rounded square root of the
    (rounded) value is within 2^-21 of the true root, so its floor is off by at most one, which two
    integer comparisons correct."""
    root = torch.sqrt(v.to(torch.float64)).floor().to(torch.int64)
    root = root - (root * root > v).to(torch.int64)
    return root + ((root + 1) * (root + 1) <= v).to(torch.int64)


@kernel("QLayerNorm")
def _qlayer_norm(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x, multiplier, bias = xs
    axes = tuple(range(attrs["axis"], x.dim()))
    count = int(np.prod(x.shape[attrs["axis"]:]))
    centered = x.to(torch.int64) - attrs["x_zero_point"]
    s1 = centered.sum(dim=axes, keepdim=True)
    s2 = (centered * centered).sum(dim=axes, keepdim=True)
    variance = count * s2 - s1 * s1 + attrs["epsilon"]
    root = isqrt(torch.bitwise_left_shift(variance, 2 * attrs["sqrt_shift"])).clamp(min=1)
    inverse = torch.div(torch.full_like(root, 1 << attrs["inv_shift"]), root, rounding_mode="floor")
    norm_shift = attrs["norm_shift"]
    deviation = count * centered - s1
    normalized = torch.bitwise_right_shift(deviation * inverse + (1 << (norm_shift - 1)), norm_shift)
    affine = normalized * multiplier.to(torch.int64) + bias.to(torch.int64)
    out = requantize(affine, 1, attrs["shift"], attrs["out_zero_point"], attrs["out_min"], attrs["out_max"])
    return [out.to(TORCH_DTYPES[attrs["out_dtype"]])]


# -- low-precision formats (ops.LOW_PRECISION_OPS): stored bytes <-> values ----------------------------
# Float elements and E8M0 / E4M3 scales are decoded by tables of ml_dtypes' values (formats.element_table,
# formats.scale_table); the TVM emitters cast instead, so the two are independent and tested on all codes.
_TORCH_FLOAT8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _nibble_fields(packed: Tensor, shape: Sequence[int]) -> Tensor:
    """The 4-bit fields (0..15, int64) of codes of `shape` stored two per byte, low nibble first."""
    count = int(np.prod(shape, dtype=np.int64))
    flat = packed.reshape(-1).to(torch.int64)
    return torch.stack([flat & 15, flat >> 4], dim=-1).reshape(-1)[:count].reshape(tuple(shape))


def _integer_fields(fields: Tensor, fmt: str) -> Tensor:
    """int4 fields as signed codes ((n ^ 8) - 8), any other integer codes unchanged (int64)."""
    return torch.bitwise_xor(fields, 8) - 8 if fmt == "int4" else fields.to(torch.int64)


def _expand_scale(scale: Tensor, shape: tuple[int, ...], attrs: dict[str, Any]) -> Tensor:
    """A tensor / channel / block scale broadcast to `shape` (block scales repeated over their block)."""
    axis = int(attrs["axis"])
    if attrs["granularity"] == "tensor":
        return scale.reshape(())
    if attrs["granularity"] == "channel":
        return _along(scale, len(shape), axis)
    return scale.repeat_interleave(int(attrs["block_size"]), dim=axis).narrow(axis, 0, shape[axis])


@kernel("DequantizeWeight")
def _dequantize_weight(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    codes, scale, *extra = xs
    fmt, shape = attrs["format"], tuple(attrs["shape"])
    info = format_info(fmt)
    fields = _nibble_fields(codes, shape) if fmt in SUB_BYTE_FORMATS else codes.reshape(shape)
    if info.is_float:
        values = torch.from_numpy(element_table(fmt))[fields.to(torch.int64)]
    else:
        zero_point = _expand_scale(extra[0].to(torch.int32), shape, attrs)
        values = (_integer_fields(fields, fmt).to(torch.int32) - zero_point).to(torch.float32)
    if info.scale_format != "fp32":
        scale = torch.from_numpy(scale_table(info.scale_format))[scale.to(torch.int64)]
    if fmt == "nvfp4":
        scale = scale * extra[0].to(torch.float32)
    return [values * _expand_scale(scale.to(torch.float32), shape, attrs)]


@kernel("UnpackCodes")
def _unpack_codes(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    fields = _nibble_fields(xs[0], attrs["shape"])
    return [_integer_fields(fields, attrs["format"]).to(torch.int8 if attrs["format"] == "int4" else torch.uint8)]


@kernel("QuantizeFloat")
def _quantize_float(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    x, scale = xs[0].to(torch.float32), xs[1].to(torch.float32).reshape(())
    rounded = round_to_element_torch(x / scale, attrs["format"])  # exactly an element value (or NaN)
    bits = rounded.to(_TORCH_FLOAT8[attrs["format"]]).view(torch.uint8)
    return [torch.where(torch.isnan(rounded), torch.tensor(nan_code(attrs["format"]), dtype=torch.uint8), bits)]


@kernel("DequantizeFloat")
def _dequantize_float(xs: list[Tensor], attrs: dict[str, Any]) -> list[Tensor]:
    q, scale = xs
    values = torch.from_numpy(element_table(attrs["format"]))[q.to(torch.int64)]
    return [values * scale.to(torch.float32).reshape(())]


# -- running graphs -----------------------------------------------------------------------------
def run_node(node: Node, inputs: list[Tensor | None]) -> list[Tensor]:
    fn = KERNELS.get(node.op)
    if fn is None:
        raise UnsupportedError(f"node {node.name!r}: op {node.op!r} has no reference kernel")
    return fn([x for x in inputs if x is not None], node.attrs)


def execute(graph: Graph, env: dict[str, Tensor], keep: set[str] | None = None,
            on_value: Callable[[str, Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Run the graph on torch tensors (autograd-friendly). `env` holds the graph inputs; constants
    are added from the graph unless already present (so callers may substitute, e.g., fake-quantized
    weights). `on_value(name, tensor)`, if given, transforms every graph input and node output as it
    is produced (fake quantization hooks in here). Intermediate values are freed once no longer
    needed unless listed in `keep`."""
    env = dict(env)
    if on_value is not None:
        for name in graph.inputs:
            env[name] = on_value(name, env[name])
    for name, array in graph.constants.items():
        if name not in env:
            env[name] = torch.from_numpy(np.array(array))
    remaining = use_counts(graph)
    keep = set(graph.outputs) | (keep or set())
    for node in graph.nodes:
        outs = run_node(node, [env[i] if i else None for i in node.inputs])
        for name, value in zip(node.outputs, outs):
            env[name] = value if on_value is None else on_value(name, value)
        for name in node.inputs:
            if name and name in remaining:
                remaining[name] -= 1
                if remaining[name] == 0 and name not in keep and name not in graph.constants:
                    env.pop(name, None)
    return env


def use_counts(graph: Graph) -> dict[str, int]:
    """How many node inputs read each value (for freeing intermediates once consumed)."""
    counts: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            if name:
                counts[name] = counts.get(name, 0) + 1
    return counts


def check_feeds(graph: Graph, feeds: dict[str, np.ndarray]) -> None:
    """Raise DataError unless feeds has exactly the graph's inputs with their shapes and dtypes."""
    missing = [n for n in graph.inputs if n not in feeds]
    extra = [n for n in feeds if n not in graph.inputs]
    if missing or extra:
        raise DataError(f"model {graph.name!r} takes inputs {graph.inputs}; missing {missing}, unexpected {extra}")
    for name in graph.inputs:
        value, array = graph.values[name], np.asarray(feeds[name])
        if tuple(array.shape) != value.shape or array.dtype.name != value.dtype:
            raise DataError(f"input {name!r} of model {graph.name!r} must be {value.type_str()}, "
                            f"got {array.dtype.name}{list(array.shape)}")


def run_graph(graph: Graph, feeds: dict[str, np.ndarray], keep: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Run on numpy inputs; return the graph outputs (and any values named in `keep`) as numpy."""
    check_feeds(graph, feeds)
    with torch.no_grad():
        env = execute(graph, {k: torch.from_numpy(np.array(v)) for k, v in feeds.items()}, set(keep))
    return {name: env[name].numpy() for name in [*graph.outputs, *keep]}
