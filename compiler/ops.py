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
