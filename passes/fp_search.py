"""Floating-point format and clipping search, after LLM-FP4 (Liu et al., "LLM-FP4: 4-Bit
Floating-Point Quantized Transformers", EMNLP 2023).

A float format's exponent / mantissa split (E4M3 vs E5M2) and the real value mapped to its largest
finite number (the clipping range, i.e. the scale) decide its error; the best choice depends on
each tensor's distribution. For every tensor quantized to FP8 / FP4 (fp8_e4m3, fp8_e5m2, fp4_e2m1,
per tensor or per channel), this module searches

    format in the candidates  x  maximum in {r * max|x| : r in RATIOS}  (and the current spec)

minimizing the output error of the linear layer the tensor feeds, on calibration data:

- `FPSearchWeights` ("fp_search_weights", after the weight specs): ||X (W - Q(W))^T||^2 with the
  layer's float inputs X; the error splits over output channels, so per-channel specs get the best
  maximum of each channel and one format per tensor;
- `FPSearchActivations` ("fp_search_activations", after calibration): per tied group of activations,
  || (Q(X) - X) Q(W)^T ||^2 summed over the layers reading the group (||Q(X) - X||^2 where no linear
  layer reads it), with one per-tensor spec for the whole group.

Candidates: the FP formats of the tensor's own bit width (FP8: E4M3 and E5M2; FP4: E2M1), or the
comma-separated list in recipe option "fp_search_formats". The current spec is always a candidate,
so the search never increases the error on the calibration data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, cast

import numpy as np
import torch

from ..formats import choose_spec, fake_quant_torch, format_info
from ..ir import Graph, QuantSpec
from ..simulate import fake_quant_activation
from .base import Pass
from .linear_layers import LinearLayer, float_inputs, linear_layers, sample_rows, sampled_rows, single_thread
from .quant_points import tied_groups

log = logging.getLogger("bitsmith.passes.fp_search")

FP_FORMATS = ("fp8_e4m3", "fp8_e5m2", "fp4_e2m1")
RATIOS = np.linspace(0.4, 1.0, 13)


def candidate_formats(fmt: str, allowed: Sequence[str] | None = None) -> list[str]:
    """The formats to try for a tensor now in `fmt`: `allowed`, else the FP formats of its width."""
    if allowed:
        unknown = [f for f in allowed if f not in FP_FORMATS]
        if unknown:
            raise ValueError(f"fp_search: {unknown} are not searchable float formats; use {FP_FORMATS}")
        return list(allowed)
    return [f for f in FP_FORMATS if format_info(f).bits == format_info(fmt).bits]


def parse_formats(option: object) -> list[str] | None:
    """Recipe option "fp_search_formats": a comma-separated string or a sequence of names."""
    if option is None:
        return None
    names = option.split(",") if isinstance(option, str) else list(cast(Iterable[str], option))
    return [name.strip() for name in names if name.strip()]


def searchable(spec: QuantSpec | None) -> bool:
    return spec is not None and spec.format in FP_FORMATS and spec.granularity in ("tensor", "channel")


class _FPSearch(Pass):
    """What both searches take: calibration feeds, candidate formats, clipping ratios, rows sampled."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], formats: Sequence[str] | None = None,
                 ratios: Sequence[float] = tuple(RATIOS), max_rows: int = 256) -> None:
        self.feeds = list(feeds)
        self.formats = formats
        self.ratios = ratios
        self.max_rows = max_rows


# -- weights --------------------------------------------------------------------------------------
class FPSearchWeights(_FPSearch):
    name = "fp_search_weights"
    requires = ("weights_quantized",)

    def run(self, graph: Graph) -> Graph:
        layers = [layer for layer in linear_layers(graph) if _searchable_weight(graph, layer)]
        if not layers:
            return graph
        chosen: dict[str, int] = {}
        for layer, rows in zip(layers, sampled_rows(graph, self.feeds, layers, self.max_rows)):
            spec = cast(QuantSpec, graph.values[layer.weight].quant)  # _searchable_weight checked it
            with single_thread():
                best = search_weight_spec(graph.constants[layer.weight], spec, layer, rows,
                                          candidate_formats(spec.format, self.formats), self.ratios)
            graph.values[layer.weight].quant = best
            chosen[best.format] = chosen.get(best.format, 0) + 1
        log.info("FP search chose weight formats %s", chosen)
        return graph


def _searchable_weight(graph: Graph, layer: LinearLayer) -> bool:
    """An FP spec per tensor or per output channel (the error splits over output channels)."""
    spec = graph.values[layer.weight].quant
    if not searchable(spec):
        return False
    spec = cast(QuantSpec, spec)
    return spec.granularity == "tensor" or cast(int, spec.axis) % graph.constants[layer.weight].ndim == layer.output_axis


def search_weight_spec(weight: np.ndarray, spec: QuantSpec, layer: LinearLayer, rows: torch.Tensor,
                       formats: Sequence[str], ratios: Sequence[float]) -> QuantSpec:
    """The spec minimizing the layer's output error on `rows`: one format for the tensor, the best
    maximum per output channel (or for the tensor, when `spec` is per tensor)."""
    w = torch.from_numpy(np.array(weight, np.float32))
    amax = _absmax(weight, spec)
    best_error, best_spec = np.inf, spec
    for fmt in formats:
        candidates = [choose_spec(None, fmt, spec.granularity, axis=spec.axis, amin=-r * amax, amax=r * amax)
                      for r in ratios] + ([spec] if fmt == spec.format else [])
        errors = torch.stack([_weight_errors(w, c, layer, rows) for c in candidates])  # (candidates, channels)
        total = float(errors.min(dim=0).values.sum())
        if total < best_error:
            best_error, best_spec = total, _combine(candidates, errors.argmin(dim=0).numpy())
    return best_spec


def _absmax(weight: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """max |w| over the tensor, or per channel of the spec's axis."""
    magnitude = np.abs(weight.astype(np.float32))
    if spec.granularity == "tensor":
        return magnitude.max()
    axis = cast(int, spec.axis) % weight.ndim
    return magnitude.max(axis=tuple(d for d in range(weight.ndim) if d != axis))


def _weight_errors(w: torch.Tensor, spec: QuantSpec, layer: LinearLayer, rows: torch.Tensor) -> torch.Tensor:
    """Per output channel (one entry for a per-tensor spec), the squared output error on `rows`."""
    difference = layer.matrix(w - fake_quant_torch(w, spec, ste=False))
    per_channel = ((rows @ difference.transpose(1, 2)) ** 2).sum(dim=1).reshape(-1).double()
    return per_channel.sum(dim=0, keepdim=True) if spec.granularity == "tensor" else per_channel


def _combine(candidates: list[QuantSpec], choice: np.ndarray) -> QuantSpec:
    """One spec taking, per channel, the scale of the candidate chosen for that channel."""
    first = candidates[0]
    if first.granularity == "tensor":
        return candidates[int(choice[0])]
    scales = np.stack([c.scale for c in candidates])[choice, np.arange(len(choice))]
    return QuantSpec(first.format, first.bits, "channel", first.axis, scale=scales,
                     zero_point=np.zeros(len(choice), np.int32), symmetric=True)


# -- activations ----------------------------------------------------------------------------------
@dataclass
class _Probe:
    """Calibration samples of an activation as one reader sees it: a linear layer's input rows with
    the layer's deployed weight (the error is measured on the layer's output), or raw values."""

    samples: torch.Tensor
    weight: torch.Tensor | None = None  # (groups, outputs, inputs) of the reading layer

    def error(self, spec: QuantSpec) -> float:
        difference = fake_quant_activation(self.samples, spec) - self.samples
        if self.weight is not None:
            difference = difference @ self.weight.transpose(1, 2)
        return float((difference.double() ** 2).sum())


class FPSearchActivations(_FPSearch):
    name = "fp_search_activations"
    requires = ("activations_calibrated",)

    def run(self, graph: Graph) -> Graph:
        groups = [group for group in tied_groups(graph) if _searchable_activations(graph, group)]
        if not groups:
            return graph
        probes, maxima = _collect_probes(graph, self.feeds, groups, self.max_rows)
        chosen: dict[str, int] = {}
        for group, group_probes, amax in zip(groups, probes, maxima):
            with single_thread():
                best = self.search(cast(QuantSpec, graph.values[group[0]].quant), group_probes, amax)
            for name in group:
                graph.values[name].quant = best
            chosen[best.format] = chosen.get(best.format, 0) + 1
        log.info("FP search chose activation formats %s for %d tied groups", chosen, len(groups))
        return graph

    def search(self, spec: QuantSpec, probes: list[_Probe], amax: float) -> QuantSpec:
        """The per-tensor spec (format, maximum) with the least error summed over the probes."""
        best_error, best_spec = np.inf, spec
        for fmt in candidate_formats(spec.format, self.formats):
            candidates = [choose_spec(None, fmt, amin=-r * amax, amax=r * amax) for r in self.ratios]
            for candidate in candidates + ([spec] if fmt == spec.format else []):
                error = sum(probe.error(candidate) for probe in probes)
                if error < best_error:
                    best_error, best_spec = error, candidate
        return best_spec


def _searchable_activations(graph: Graph, group: list[str]) -> bool:
    specs = [graph.values[name].quant for name in group]
    return all(searchable(spec) and cast(QuantSpec, spec).granularity == "tensor" for spec in specs)


def _collect_probes(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]], groups: list[list[str]],
                    max_rows: int) -> tuple[list[list[_Probe]], list[float]]:
    """Per tied group: its probes (the rows every linear layer reading a member sees; the members'
    values where no linear layer reads the group) and max |x| over its members, from the model with
    quantized weights and float activations."""
    readers: dict[str, list[LinearLayer]] = {}
    for linear in linear_layers(graph):
        readers.setdefault(linear.input, []).append(linear)
    plans = [_probe_plan(group, readers) for group in groups]
    names = sorted({name for group in groups for name in group})
    per_batch = max(1, max_rows // max(1, len(feeds)))
    parts: list[list[list[torch.Tensor]]] = [[[] for _ in plan] for plan in plans]
    maxima = [0.0] * len(groups)
    for index, values in enumerate(float_inputs(graph, feeds, names, quantized_weights=True)):
        for k, (group, plan) in enumerate(zip(groups, plans)):
            maxima[k] = max([maxima[k]] + [float(values[name].abs().max()) for name in group])
            for (name, layer), part in zip(plan, parts[k]):
                x = values[name].to(torch.float32)
                rows = layer.rows(x) if layer is not None else x.reshape(1, -1, 1)
                part.append(sample_rows(rows, per_batch if layer is not None else per_batch * 64, seed=index))
    probes = [[_Probe(torch.cat(part, dim=1), None if layer is None else _deployed_matrix(graph, layer))
               for (_, layer), part in zip(plan, group_parts)] for plan, group_parts in zip(plans, parts)]
    return probes, maxima


def _probe_plan(group: list[str], readers: dict[str, list[LinearLayer]]) -> list[tuple[str, LinearLayer | None]]:
    """(member, reading layer) pairs; (member, None) for every member when no linear layer reads the group."""
    plan: list[tuple[str, LinearLayer | None]] = [(name, layer) for name in group for layer in readers.get(name, [])]
    return plan or [(name, None) for name in group]


def _deployed_matrix(graph: Graph, layer: LinearLayer) -> torch.Tensor:
    weight = torch.from_numpy(np.array(graph.constants[layer.weight], np.float32))
    spec = graph.values[layer.weight].quant
    return layer.matrix(fake_quant_torch(weight, spec, ste=False) if spec is not None else weight)
