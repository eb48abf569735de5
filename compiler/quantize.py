"""The quantization driver: a recipe and calibration data turn a float graph into an annotated one.

    graph = quantize(graph, preset("w8a8"), calibration)      # QuantSpecs on weights and activations

Order: fold BatchNorm, canonicalize exporters' spellings (passes/canonicalize.py) -> algorithms that
rescale weights and activations (SmoothQuant, AWQ, depthwise equalization) -> weight specs -> algorithms
that rewrite weights on a fixed grid or refine weight specs (GPTQ, FP format search) -> activation
calibration -> algorithms that refine activation specs or biases (FP format search, bias correction).
Each step is a pass in bitsmith.passes; the recipe says which run.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np

from .errors import UsageError
from .ir import Graph
from .passes.awq import AWQ
from .passes.base import Pass
from .passes.bias_correction import BiasCorrection
from .passes.calibrate import Calibrate, check_calibration_feeds
from .passes.canonicalize import Canonicalize
from .passes.channel_shift import ChannelShift
from .passes.depthwise_equalization import DepthwiseEqualization
from .passes.fold_batchnorm import FoldBatchNorm
from .passes.fp_search import FPSearchActivations, FPSearchWeights, parse_formats
from .passes.gptq import GPTQ
from .passes.quant_points import check_ties
from .passes.quantize_weights import QuantizeWeights
from .passes.smoothquant import SmoothQuant
from .recipes import QuantRecipe

Feeds = list[Mapping[str, np.ndarray]]


def _sample_mask(recipe: QuantRecipe) -> str | None:
    mask = recipe.options.get("calibration_mask")
    return None if mask is None else str(mask)


def _smoothquant(recipe: QuantRecipe, feeds: Feeds) -> Pass:
    return SmoothQuant(feeds, alpha=float(recipe.options.get("smoothquant_alpha", 0.5)),
                       sample_mask=_sample_mask(recipe))


def _awq(recipe: QuantRecipe, feeds: Feeds) -> Pass:
    if recipe.weights is None:
        raise UsageError(f"recipe {recipe.name!r} runs AWQ but quantizes no weights; set recipe.weights")
    return AWQ(feeds, recipe.weights, recipe.weight_granularity, recipe.weight_block_size)


def _gptq(recipe: QuantRecipe, feeds: Feeds) -> Pass:
    max_bits = recipe.options.get("gptq_max_bits")
    return GPTQ(feeds, act_order=bool(recipe.options.get("gptq_act_order", 0)), sample_mask=_sample_mask(recipe),
                max_bits=None if max_bits is None else int(max_bits))


def _fp_search_weights(recipe: QuantRecipe, feeds: Feeds) -> Pass:
    return FPSearchWeights(feeds, parse_formats(recipe.options.get("fp_search_formats")))


def _fp_search_activations(recipe: QuantRecipe, feeds: Feeds) -> Pass:
    return FPSearchActivations(feeds, parse_formats(recipe.options.get("fp_search_formats")))


# name -> (stage, factory(recipe, calibration feeds) -> Pass). Recipe options they read:
# smoothquant_alpha (0.5), gptq_act_order (0), gptq_max_bits (none: GPTQ rewrites weights of at most
# that many bits, e.g. 4 for the low-bit layers of a mixed-precision plan), fp_search_formats (comma-separated format names;
# default: the FP formats of each tensor's bit width), calibration_mask (a graph input marking the
# positions that count, e.g. "attention_mask"; Calibrate reads it too: passes/calibrate.py).
ALGORITHMS: dict[str, tuple[str, Callable[[QuantRecipe, Feeds], Pass]]] = {
    "channel_shift": ("before_weights", lambda recipe, feeds: ChannelShift(feeds, _sample_mask(recipe))),
    "smoothquant": ("before_weights", _smoothquant),
    "depthwise_equalization": ("before_weights", lambda recipe, feeds: DepthwiseEqualization(feeds)),
    "awq": ("before_weights", _awq),
    "gptq": ("after_weights", _gptq),
    "fp_search_weights": ("after_weights", _fp_search_weights),
    "fp_search_activations": ("after_calibration", _fp_search_activations),
    "bias_correction": ("after_calibration",
                        lambda recipe, feeds: BiasCorrection(feeds, sample_mask=_sample_mask(recipe))),
}
STAGES = ("before_weights", "after_weights", "after_calibration")


def register_algorithm(name: str, stage: str, factory: Callable[[QuantRecipe, Feeds], Pass]) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    ALGORITHMS[name] = (stage, factory)


def _algorithms(recipe: QuantRecipe, stage: str, feeds: Feeds) -> list[Pass]:
    unknown = [a for a in recipe.algorithms if a not in ALGORITHMS]
    if unknown:
        raise UsageError(f"recipe {recipe.name!r} names unknown algorithms {unknown}; known: {sorted(ALGORITHMS)}")
    return [ALGORITHMS[a][1](recipe, feeds) for a in recipe.algorithms if ALGORITHMS[a][0] == stage]


def quantize(graph: Graph, recipe: QuantRecipe, calibration: Iterable[Mapping[str, np.ndarray]],
             quiet: bool = True) -> Graph:
    """A quantized copy of `graph` (QuantSpec annotations; constants possibly rewritten)."""
    feeds: Feeds = list(calibration)
    graph = Canonicalize()(FoldBatchNorm()(graph.copy()))
    if recipe.activations is not None or recipe.algorithms:
        check_calibration_feeds(graph, feeds)
    for p in _algorithms(recipe, "before_weights", feeds):
        graph = p(graph)
    if recipe.quantizes_weights():
        graph = QuantizeWeights(recipe.weights, recipe.weight_granularity, recipe.weight_block_size,
                                recipe.weight_clipping, overrides=recipe.layer_formats)(graph)
    for p in _algorithms(recipe, "after_weights", feeds):
        graph = p(graph)
    if recipe.activations is not None:
        graph = Calibrate(feeds, recipe.activations, recipe.activation_symmetric, recipe.activation_observer,
                          quiet=quiet, sample_mask=_sample_mask(recipe))(graph)
    for p in _algorithms(recipe, "after_calibration", feeds):
        graph = p(graph)
    check_ties(graph)
    graph.metadata["recipe"] = recipe.name
    return graph
