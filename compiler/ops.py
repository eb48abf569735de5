"""The IR's op catalogue: every op bitsmith's IR may contain, with its normalized attributes.

Semantics are ONNX's (https://onnx.ai/onnx/operators/), with these normalizations done once by the
frontend so that passes and backends never see ONNX's defaults or version differences:
- every attribute listed below is present, with a concrete value;
- operands that ONNX passes as tensors but that must be static (Reshape's shape, Slice's starts/ends,
  Clip's min/max, Resize's sizes, reduction axes, Pad's pads, Expand's shape...) are attributes;
- negative axes are made non-negative; Reshape's 0 / -1 are resolved to the final shape;
- Gemm and Flatten do not exist: the frontend emits MatMul + Add and Reshape instead;
- Identity, Shape, Constant, ConstantOfShape and anything computed from constants alone are folded
  away at import.

Spatial ops (Conv, ConvTranspose, MaxPool, AveragePool) take NC + 1 or 2 spatial dims; `pads` is in
ONNX order (begin of every spatial axis, then end of every spatial axis). Optional inputs are only
ever trailing: an op's `inputs` list never has a hole.
"""

from __future__ import annotations

# op -> the attributes it always carries (documentation and a check in tests).
OPS: dict[str, tuple[str, ...]] = {
    # elementwise, numpy broadcasting
    "Add": (), "Sub": (), "Mul": (), "Div": (), "Pow": (), "Max": (), "Min": (),
    "Equal": (), "Less": (), "Greater": (), "LessOrEqual": (), "GreaterOrEqual": (), "Where": (), "And": (), "Or": (), "Not": (),
    "Relu": (), "Sigmoid": (), "Tanh": (), "Exp": (), "Log": (), "Sqrt": (), "Reciprocal": (),
    "Neg": (), "Abs": (), "Erf": (), "Floor": (), "Ceil": (), "Round": (), "Sin": (), "Cos": (),
    "Softplus": (),
    "Clip": ("min", "max"),                    # floats, may be -inf / inf
    "LeakyRelu": ("alpha",),
    "Elu": ("alpha",),
    "HardSigmoid": ("alpha", "beta"),          # max(0, min(1, alpha*x + beta))
    "HardSwish": (),
    "Gelu": ("approximate",),                  # "none" | "tanh"
    "PRelu": (),                               # inputs: x, slope (broadcast as ONNX)
    "Cast": ("to",),                           # numpy dtype name
    # linear algebra and convolution
    "MatMul": (),                              # numpy matmul semantics, batched
    "Conv": ("strides", "pads", "dilations", "group"),          # inputs: x, w, [bias]
    "ConvTranspose": ("strides", "pads", "dilations", "group", "output_padding"),
    # normalization and reductions
    "BatchNormalization": ("epsilon",),        # inference form; inputs: x, scale, bias, mean, var
    "LayerNormalization": ("axis", "epsilon"), # inputs: x, scale, [bias]; normalizes axes >= axis
    "Softmax": ("axis",),                      # opset-13 semantics (one axis)
    "LogSoftmax": ("axis",),
    "ReduceMean": ("axes", "keepdims"), "ReduceSum": ("axes", "keepdims"),
    "ReduceMax": ("axes", "keepdims"), "ReduceMin": ("axes", "keepdims"),
    "ArgMax": ("axis", "keepdims"),
    # pooling and resizing
    "MaxPool": ("kernel_shape", "strides", "pads", "dilations", "ceil_mode"),
    "AveragePool": ("kernel_shape", "strides", "pads", "ceil_mode", "count_include_pad"),
    "GlobalAveragePool": (), "GlobalMaxPool": (),
    # sizes: output shape; scales: per-axis scale ONNX's coordinate formulas use (given, or sizes/in)
    "Resize": ("sizes", "scales", "mode", "coordinate_transformation_mode", "nearest_mode"),
    # data movement
    "Reshape": ("shape",),                     # the final shape, no 0 / -1
    "Transpose": ("perm",),
    "Concat": ("axis",),
    "Split": ("axis", "split"),                # split: sizes along axis, one per output
    "Slice": ("starts", "ends", "axes", "steps"),   # clamped, non-negative starts/ends
    "Squeeze": ("axes",), "Unsqueeze": ("axes",),
    "Expand": ("shape",),                      # the final broadcast shape
    "Gather": ("axis",),                       # inputs: data, indices (negative indices allowed)
    "Pad": ("pads", "mode", "value"),          # mode: constant | reflect | edge
    "Tile": ("repeats",),
    "DepthToSpace": ("blocksize", "mode"),
}


# ---------------------------------------------------------------------------------------------
# Quantized (integer) ops: what passes/lower_integer.py produces (docs/design/integer_lowering.md)
# ---------------------------------------------------------------------------------------------
# Semantics use only exact arithmetic: integer add / subtract / multiply / arithmetic shift / division
# (int64), and correctly rounded float32 elementwise operations (x / scale, q * scale). Activations are
# quantized per tensor, so their zero points are scalar attributes; per-channel data (weights, weight
# zero points, biases, multipliers, shifts, tables) are constant inputs. Ops that compute codes name
# their output's code type `out_dtype` (uint8 / int8, or float32 for a float epilogue) and code range
# `out_min` / `out_max` (the format's range, narrowed by a fused Relu / Clip).
#
# requant(v, M, s, zo) = clamp(((v * M + 2^(s-1)) >> s) + zo, out_min, out_max), all int64; M in
# [2^30, 2^31) and s in [1, 62] per output channel or per tensor (dyadic multiplier, M / 2^s ~ the real
# rescale factor). `>>` is the arithmetic shift (floor), so ties round toward +infinity.
QUANTIZED_OPS: dict[str, tuple[str, ...]] = {
    # inputs: x float32, scale float32 (scalar or [C] along axis), zero_point int32 (same shape).
    # clamp(rne(x / scale) + zero_point, qmin, qmax) with a float32 division; NaN -> zero_point.
    # `dtype` is the code type (uint8 / int8); `axis` is ignored for a scalar scale.
    "QuantizeLinear": ("axis", "dtype", "qmin", "qmax"),
    # inputs: q (codes), scale, zero_point as above; float32(q - zero_point) * scale.
    "DequantizeLinear": ("axis",),
    # inputs: x codes, w codes (constant), w_zero_point int32 (scalar or [Cout]), bias int32 [Cout],
    # then multiplier int64 and shift int64 (scalar or [Cout]) for epilogue "requantize", or out_scale
    # float32 (scalar or [Cout]) for epilogue "float".
    # acc = sum((x - x_zero_point) * (w - w_zero_point)) + bias (the padding pads x - x_zero_point with 0);
    # "requantize": requant(acc, multiplier, shift, out_zero_point) as `out_dtype` codes;
    # "float": float32(acc) * out_scale (float32 output; out_zero_point / out_min / out_max unused).
    "QConv": ("strides", "pads", "dilations", "group", "x_zero_point", "epilogue", "out_zero_point",
              "out_min", "out_max", "out_dtype"),
    # ConvTranspose on codes: inputs as QConv, w codes [C_in, C_out / group, k...] (ONNX's layout) and the
    # per-output-channel operands of length C_out; acc = conv_transpose(x - x_zero_point, w - w_zero_point)
    # (ONNX's pads crop, output_padding extends with sums of nothing: 0) + bias, then QConv's epilogue.
    "QConvTranspose": ("strides", "pads", "dilations", "group", "output_padding", "x_zero_point", "epilogue",
                       "out_zero_point", "out_min", "out_max", "out_dtype"),
    # inputs: a codes [..., K], b codes [K, N] (or [..., K, N]), b_zero_point int32 (scalar or [N]),
    # bias int32 [N], then the epilogue operands as QConv (per output column N).
    "QMatMul": ("a_zero_point", "epilogue", "out_zero_point", "out_min", "out_max", "out_dtype"),
    # inputs: a, b codes (numpy broadcasting);
    # clamp((((a - a_zp) * a_multiplier + (b - b_zp) * b_multiplier + 2^(shift-1)) >> shift) + out_zp, ...)
    "QAdd": ("a_zero_point", "b_zero_point", "a_multiplier", "b_multiplier", "shift", "out_zero_point",
             "out_min", "out_max", "out_dtype"),
    # inputs: a, b codes (numpy broadcasting); requant((a - a_zp) * (b - b_zp), multiplier, shift, out_zp)
    "QMul": ("a_zero_point", "b_zero_point", "multiplier", "shift", "out_zero_point", "out_min", "out_max",
             "out_dtype"),
    # inputs: q codes, table (the output codes): [2^bits] or [C, 2^bits] (one table per index of `axis`).
    # table[q - qmin] (or table[c, q - qmin]); the output dtype is the table's (float32 values for a float
    # output computed from codes, e.g. a final Sigmoid).
    "QLookup": ("qmin", "axis"),
    # input: x codes [N, C, spatial...]; requant(sum over spatial of (x - x_zero_point)), the 1 / count
    # of the mean folded into the multiplier.
    "QGlobalAveragePool": ("x_zero_point", "multiplier", "shift", "out_zero_point", "out_min", "out_max",
                           "out_dtype"),
    # input: x codes; AveragePool whose every window counts `kernel_shape` elements (no padding, or
    # count_include_pad=1, padding x - x_zero_point with 0); requant(window sum of (x - x_zero_point)).
    "QAveragePool": ("kernel_shape", "strides", "pads", "ceil_mode", "x_zero_point", "multiplier", "shift",
                     "out_zero_point", "out_min", "out_max", "out_dtype"),
    # inputs: q codes, exp_table int64 [L]: exp_table[d] = rne(2^30 * exp(-d * x_scale)) (L = 256 for 8-bit
    # codes; for int16 codes the table ends after its first 0, and larger d read that last entry), then
    # optionally keep (bool, broadcasting to q): the positions that take part (an attention mask).
    # Along `axis`: e = exp_table[min(max(q) - q, L - 1)], total = sum(e) (int64), one division per row
    # inv = 2^62 // max(total, 1), p = (e * inv + 2^(61 - B)) >> (62 - B) (e * 2^B / total rounded, but for
    # ties within 2^-17 of a step), output clamp(p + out_zero_point, out_min, out_max): scale 2^-B, with
    # B = 8 for 8-bit output codes (1/256) and 15 for int16 ones.
    # With keep: the maximum runs over the kept positions and e = 0 where keep is false: a row with no
    # kept position is all zeros (p = 0; float softmax would give 1/n there).
    "QSoftmax": ("axis", "out_zero_point", "out_min", "out_max", "out_dtype"),
}
QUANTIZED_OPS.update({
    # inputs: x codes [..., normalized dims], multiplier int64 and bias int64 (the normalized dims' shape,
    # or broadcasting to it: gamma and beta folded). Normalizes the axes >= `axis` (C elements per row), in
    # int64 (I-BERT's integer LayerNorm, with an exact square root):
    #   xc = x - x_zero_point;  S1 = sum(xc);  S2 = sum(xc^2)
    #   V = C * S2 - S1^2 + epsilon                 (= C^2 (var + eps) / x_scale^2; epsilon is an integer)
    #   R = max(1, isqrt(V << 2 * sqrt_shift))      (isqrt(v) = floor(sqrt(v)), exact)
    #   inv = (1 << inv_shift) // R                 (one division per row)
    #   N = ((C * xc - S1) * inv + 2^(norm_shift-1)) >> norm_shift   ((x - mean) / std with F fractional bits,
    #                                                F = inv_shift - sqrt_shift - norm_shift)
    #   out = clamp(((N * multiplier + bias + 2^(shift-1)) >> shift) + out_zero_point, out_min, out_max)
    # multiplier = rne(gamma / out_scale * 2^(shift - F)), bias = rne(beta / out_scale * 2^shift). The
    # lowering chooses the shifts so that nothing leaves int64 (and V << 2 sqrt_shift < 2^62).
    "QLayerNorm": ("axis", "x_zero_point", "epsilon", "sqrt_shift", "inv_shift", "norm_shift", "shift",
                   "out_zero_point", "out_min", "out_max", "out_dtype"),
})

# ---------------------------------------------------------------------------------------------
# Low-precision formats (docs/design/integer_lowering.md, "Low-precision formats")
# ---------------------------------------------------------------------------------------------
# Weights are stored as bytes (formats.store_weight): 4-bit formats (int4, uint4, fp4_e2m1, mxfp4,
# nvfp4) two codes per uint8, flattened in C order, the first code in the low nibble; 8-bit formats one
# code per element in the weight's shape (int8 / uint8 integers, FP8 bit patterns as uint8). FP8
# activations are rounded through casts and carried as their uint8 bit patterns between float ops.
LOW_PRECISION_OPS: dict[str, tuple[str, ...]] = {
    # inputs: codes (as above), scale, then zero_point int32 shaped like scale (integer formats) or
    # tensor_scale float32 scalar (nvfp4). scale: float32 scalar ("tensor"), [C] along `axis` ("channel"),
    # or per block ("block": the weight's shape with ceil(shape[axis] / block_size) at `axis`) as float32,
    # or as uint8 bytes for mxfp4 / mxfp8 (E8M0: 2^(byte - 127), 255 = NaN) and nvfp4 (E4M3 bit patterns).
    # out[i] = element(code[i]) * s[i], float32 of `shape`: element = float32(code - zero_point) for
    # integers, the element's exact value for floats; s = the scale of i's channel / block, for nvfp4
    # float32(block scale * tensor_scale) first. Equals formats.dequantize(quantize(w, spec), spec) bit for
    # bit. `axis` and `block_size` are 0 where the granularity has none.
    "DequantizeWeight": ("format", "shape", "granularity", "axis", "block_size"),
    # input: uint8 [ceil(n / 2)] two int4 / uint4 codes per byte; output the codes of `shape` as int8
    # (int4: low nibble n -> (n ^ 8) - 8) or uint8 (uint4), the weight operand of QConv / QMatMul.
    "UnpackCodes": ("format", "shape"),
    # inputs: x float32, scale float32 scalar. Output uint8: the bit pattern of the `format` (fp8_e4m3,
    # fp8_e5m2) element nearest to x / scale (float32 division; clamped to +-max finite first, since a
    # cast of a larger value gives NaN; ties to even). NaN stays NaN.
    "QuantizeFloat": ("format",),
    # inputs: q uint8 bit patterns, scale float32 scalar; float32(element(q)) * scale.
    "DequantizeFloat": ("format",),
}
QUANTIZED_OPS.update(LOW_PRECISION_OPS)
OPS.update(QUANTIZED_OPS)
