"""Quantization recipes: which format each kind of tensor gets and which PTQ algorithms run.

A recipe is data. The presets name the configurations bitsmith reports on (w8a8, w7a8: int7 weights for
AVX2's byte dot product, w8_weight_only, w4a8, fp8_e4m3, and the weight-only 4-bit floats mxfp4_weights, nvfp4_weights, fp4_weights: FP4 E2M1
per output channel); a user may build any other combination.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, NamedTuple

from .errors import UsageError


class LayerFormat(NamedTuple):
    """One weight's own format, overriding the recipe's: format None keeps that weight in float."""

    format: str | None
    granularity: str = "channel"
    block_size: int | None = None


@dataclass(frozen=True)
class QuantRecipe:
    """What to quantize and how.

    weights / activations: a format name from bitsmith.formats (None: leave that kind in float).
    weight_granularity: "channel" (per output channel) or "block" (blocks along the reduction axis).
    activation_observer: how activation ranges are calibrated (minmax, percentile, mse, entropy).
    weight_clipping: "mse" searches each channel's clipping range; "max" uses the channel's max.
    algorithms: PTQ passes to run, in order (e.g. "smoothquant", "gptq", "awq", "bias_correction").
    layer_formats: per-weight overrides, weight name -> LayerFormat (or a (format, granularity,
        block_size) tuple): mixed precision (bitsmith.precision.plan_precision writes these). Weights
        not named get `weights`; with weights=None only the named ones are quantized.
    """

    name: str
    weights: str | None = "int8"
    weight_granularity: str = "channel"
    weight_block_size: int | None = None
    weight_clipping: str = "mse"
    activations: str | None = "uint8"
    activation_symmetric: bool = False
    activation_observer: str = "mse"
    algorithms: tuple[str, ...] = ()
    options: dict[str, float | str] = field(default_factory=dict)
    layer_formats: Mapping[str, LayerFormat] = field(default_factory=dict)

    def __post_init__(self) -> None:
        normalized = {str(name): LayerFormat(*spec) for name, spec in dict(self.layer_formats).items()}
        object.__setattr__(self, "layer_formats", normalized)

    def weight_format(self, name: str) -> LayerFormat:
        """The format weight `name` gets: its override, else the recipe's weights setting."""
        default = LayerFormat(self.weights, self.weight_granularity, self.weight_block_size)
        return self.layer_formats.get(name, default)

    def quantizes_weights(self) -> bool:
        """Whether the weight pass runs (with per-layer formats it does, even if all of them keep float)."""
        return self.weights is not None or bool(self.layer_formats)

    def with_(self, **changes: object) -> "QuantRecipe":
        return replace(self, **changes)  # type: ignore[arg-type]


PRESETS: dict[str, QuantRecipe] = {
    "w8a8": QuantRecipe("w8a8", algorithms=("bias_correction",)),
    # int7 weights (ONNX Runtime's reduce_range): AVX2 then multiplies bytes exactly (vpmaddubsw)
    "w7a8": QuantRecipe("w7a8", weights="int7", algorithms=("bias_correction",)),
    "w8_weight_only": QuantRecipe("w8_weight_only", activations=None, algorithms=("bias_correction",)),
    "w4a8": QuantRecipe("w4a8", weights="int4", algorithms=("gptq", "bias_correction")),
    "fp8_e4m3": QuantRecipe("fp8_e4m3", weights="fp8_e4m3", activations="fp8_e4m3", activation_symmetric=True,
                            activation_observer="minmax", weight_clipping="max"),
    "mxfp4_weights": QuantRecipe("mxfp4_weights", weights="mxfp4", weight_granularity="block",
                                 weight_block_size=32, weight_clipping="max", activations=None),
    "nvfp4_weights": QuantRecipe("nvfp4_weights", weights="nvfp4", weight_granularity="block",
                                 weight_block_size=16, weight_clipping="max", activations=None),
    "fp4_weights": QuantRecipe("fp4_weights", weights="fp4_e2m1", weight_clipping="mse", activations=None),
}


def preset(name: str) -> QuantRecipe:
    if name not in PRESETS:
        raise UsageError(f"unknown quantization recipe {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
