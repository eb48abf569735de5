"""GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", ICLR 2023), the Optimal Brain Quantization solver applied column by column.

For each quantized weight of a MatMul or Conv (im2col view; grouped and depthwise convolutions one
group at a time), with the layer's float calibration inputs X (rows of im2col patches for Conv):

1. H = 2 X X^T / n, accumulated over the calibration batches; dampened by 1% of its mean diagonal
   (columns that never see a non-zero input get H_jj = 1);
2. U = the upper Cholesky factor of H^-1;
3. columns j = 0, 1, ... along the reduction axis (optionally in order of decreasing H_jj, the
   "act-order" heuristic): q_j = Q(w_j) on the weight's own grid, err = (w_j - q_j) / U_jj, and the
   not yet quantized columns absorb the error, w_k -= err * U_jk; the update is applied lazily to
   blocks of 128 columns (the paper's batched form, same result).

`sample_mask` names a graph input marking the positions that count (a transformer's
`attention_mask`): H then sums over those tokens only, not over padding the model's outputs ignore.
`max_bits` limits the pass to weights of at most that many bits (GPTQ on the low-bit layers of a
mixed-precision plan).

The weight's QuantSpec (from QuantizeWeights: its per-channel or per-block scales) is kept; only the
float values change: the constant becomes the dequantized GPTQ solution, so fake_quant(W', spec) = W'.
Works for every element format, integer or float (INT8/INT4, FP8, FP4, MX, NVFP4), since each
column is rounded with `formats.fake_quant_torch` on the spec's scales.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence, cast

import numpy as np
import torch

from ..formats import fake_quant_torch
from ..ir import Graph, QuantSpec
from .base import Pass
from .calibrate import masked_rows, sample_mask_of
from .linear_layers import LinearLayer, float_inputs, linear_layers, single_thread

log = logging.getLogger("bitsmith.passes.gptq")

ColumnQuantizer = Callable[[torch.Tensor, int], torch.Tensor]  # (values (G, R), column) -> on-grid values


class GPTQ(Pass):
    name = "gptq"
    requires = ("weights_quantized",)

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], block_size: int = 128,
                 dampening: float = 0.01, act_order: bool = False, sample_mask: str | None = None,
                 max_bits: int | None = None) -> None:
        self.feeds = list(feeds)
        self.block_size = block_size
        self.dampening = dampening
        self.act_order = act_order
        self.sample_mask = sample_mask
        self.max_bits = max_bits

    def run(self, graph: Graph) -> Graph:
        specs = {name: [spec] for name, spec in ((layer.weight, graph.values[layer.weight].quant)
                                                 for layer in linear_layers(graph)) if spec is not None}
        solutions = self.solve(graph, specs)
        for name, (solution,) in solutions.items():
            if solution is not None:
                graph.constants[name] = solution
        log.info("GPTQ rewrote %d weights", sum(s[0] is not None for s in solutions.values()))
        return graph

    def solve(self, graph: Graph, specs: Mapping[str, Sequence[QuantSpec | None]]) -> dict[str, list[np.ndarray | None]]:
        """For each weight of `specs` (name -> candidate specs), the GPTQ solution on each spec's grid
        (None where this pass leaves the weight alone: no spec, more than `max_bits` bits, or not a
        layer GPTQ handles). The layer Hessians are measured once for all candidates: with float
        inputs, a layer's solution depends on its own spec only (mixed-precision search)."""
        layers = [layer for layer in linear_layers(graph)
                  if any(self._rewrites(spec) for spec in specs.get(layer.weight, ()))]
        solutions: dict[str, list[np.ndarray | None]] = {name: [None] * len(s) for name, s in specs.items()}
        if not layers:
            return solutions
        hessians = layer_hessians(graph, self.feeds, layers, self.sample_mask)
        for layer, hessian in zip(layers, hessians):
            for k, spec in enumerate(specs[layer.weight]):
                if spec is not None and self._rewrites(spec):
                    solutions[layer.weight][k] = gptq_weight(graph.constants[layer.weight], spec, layer, hessian,
                                                             self.block_size, self.dampening, self.act_order)
        return solutions

    def _rewrites(self, spec: QuantSpec | None) -> bool:
        return spec is not None and (self.max_bits is None or spec.bits <= self.max_bits)


def layer_hessians(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]],
                   layers: Sequence[LinearLayer], sample_mask: str | None = None) -> list[torch.Tensor]:
    """Per layer, H = 2 X X^T / n (groups, K, K) over the float calibration inputs, streamed
    batch by batch; layers reading the same input the same way share one accumulator. With
    `sample_mask`, a MatMul's rows are the positions the mask marks (Conv inputs are not masked)."""
    keys = [_input_key(layer) for layer in layers]
    first = {key: layer for key, layer in reversed(list(zip(keys, layers)))}
    sums: dict[tuple, torch.Tensor] = {}
    counts: dict[tuple, int] = {}
    names = sorted({layer.input for layer in layers})
    for feed, values in zip(feeds, float_inputs(graph, feeds, names)):
        mask = sample_mask_of(graph, feed, sample_mask)
        for key, layer in first.items():
            x = masked_rows(values[layer.input], mask) if layer.node.op == "MatMul" else values[layer.input]
            rows = layer.rows(x).to(torch.float32)
            product = (rows.transpose(1, 2) @ rows).double()
            sums[key] = product if key not in sums else sums[key] + product
            counts[key] = counts.get(key, 0) + rows.shape[1]
    return [2.0 * sums[key] / counts[key] for key in keys]


def _input_key(layer: LinearLayer) -> tuple:
    attrs = layer.node.attrs
    if layer.node.op == "MatMul":
        return (layer.input,)
    return (layer.input, layer.kernel, layer.groups, tuple(attrs["pads"]), tuple(attrs["strides"]),
            tuple(attrs["dilations"]))


def gptq_weight(weight: np.ndarray, spec: QuantSpec, layer: LinearLayer, hessian: torch.Tensor,
                block_size: int = 128, dampening: float = 0.01, act_order: bool = False) -> np.ndarray:
    """The weight's GPTQ solution on the grid of `spec`, dequantized, in the weight's layout."""
    w = layer.matrix(torch.from_numpy(np.array(weight, np.float32)))
    scale, zero_point = (layer.matrix(torch.from_numpy(p)) for p in element_params(spec, weight.shape))
    order = _column_order(hessian, act_order)
    w, scale, zero_point = (_permute_columns(t, order) for t in (w, scale, zero_point))
    hessian = _permute_square(hessian, order)
    quantized = gptq_columns(w, hessian, _grid_quantizer(spec, scale, zero_point), block_size, dampening)
    quantized = _permute_columns(quantized, torch.argsort(order, dim=1))
    return layer.unmatrix(quantized, weight.shape).numpy().astype(weight.dtype)


def gptq_columns(w: torch.Tensor, hessian: torch.Tensor, quantize_column: ColumnQuantizer,
                 block_size: int = 128, dampening: float = 0.01) -> torch.Tensor:
    """GPTQ's loop on w (groups, rows, columns) with H (groups, columns, columns): the quantized w."""
    w = w.to(torch.float32).contiguous()
    columns = w.shape[2]
    upper = inverse_hessian_factor(hessian, dampening).to(torch.float32)
    quantized = torch.zeros_like(w)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block, factor = w[:, :, start:end].clone(), upper[:, start:end, start:end]
        with single_thread():
            errors = _quantize_block(block, factor, quantized[:, :, start:end], quantize_column, start)
        w[:, :, end:] -= errors @ upper[:, start:end, end:]
    return quantized


def _quantize_block(block: torch.Tensor, factor: torch.Tensor, out: torch.Tensor, quantize_column: ColumnQuantizer,
                    first_column: int) -> torch.Tensor:
    """Quantize the block's columns one by one into `out`, each error spread over the block's later
    columns; return the scaled errors (w - q) / U_jj for the lazy update of the columns after it."""
    errors = torch.zeros_like(block)
    for i in range(block.shape[2]):
        column = block[:, :, i]
        out[:, :, i] = quantize_column(column, first_column + i)
        errors[:, :, i] = (column - out[:, :, i]) / factor[:, i, i].unsqueeze(1)
        block[:, :, i:] -= errors[:, :, i:i + 1] * factor[:, i:i + 1, i:]
    return errors


def inverse_hessian_factor(hessian: torch.Tensor, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1 per group, float64; dead columns get H_jj = 1 and
    the dampening grows tenfold until the factorization succeeds."""
    h = hessian.double().clone()
    diagonal = h.diagonal(dim1=1, dim2=2)
    diagonal[diagonal == 0] = 1.0
    identity = torch.eye(h.shape[1], dtype=h.dtype)
    for attempt in range(6):
        damp = dampening * 10 ** attempt * diagonal.mean(dim=1)
        lower, info = torch.linalg.cholesky_ex(h + damp[:, None, None] * identity)
        if not bool(info.any()):
            inverse = torch.cholesky_solve(identity.expand_as(h), lower)  # (cholesky_inverse is far slower)
            return torch.linalg.cholesky(inverse, upper=True)
    raise ValueError("GPTQ: the layer Hessian is not positive definite even with 1e5x dampening")


def element_params(spec: QuantSpec, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The spec's scale and zero point repeated to every element of a tensor of `shape`."""
    if spec.granularity == "tensor":
        return (np.full(shape, spec.scale.reshape(-1)[0], np.float32),
                np.full(shape, spec.zero_point.reshape(-1)[0], np.int32))
    axis = cast(int, spec.axis) % len(shape)
    if spec.granularity == "channel":
        view = [-1 if d == axis else 1 for d in range(len(shape))]
        return (np.broadcast_to(spec.scale.reshape(view), shape).copy(),
                np.broadcast_to(spec.zero_point.reshape(view), shape).copy())
    index = np.arange(shape[axis]) // cast(int, spec.block_size)
    return (np.take(spec.scale, index, axis=axis).astype(np.float32),
            np.broadcast_to(np.take(spec.zero_point, index, axis=axis), shape).astype(np.int32))


def _grid_quantizer(spec: QuantSpec, scale: torch.Tensor, zero_point: torch.Tensor) -> ColumnQuantizer:
    """Round a column on the spec's grid: a per-row ("channel") spec with the column's scales."""
    def quantize_column(values: torch.Tensor, column: int) -> torch.Tensor:
        column_spec = QuantSpec(spec.format, spec.bits, "channel", 0,
                                scale=scale[:, :, column].reshape(-1).numpy(),
                                zero_point=zero_point[:, :, column].reshape(-1).numpy(),
                                tensor_scale=spec.tensor_scale, symmetric=spec.symmetric)
        return fake_quant_torch(values.reshape(-1), column_spec, ste=False).reshape(values.shape)
    return quantize_column


def _column_order(hessian: torch.Tensor, act_order: bool) -> torch.Tensor:
    groups, columns = hessian.shape[0], hessian.shape[1]
    if not act_order:
        return torch.arange(columns).expand(groups, columns)
    return torch.argsort(hessian.diagonal(dim1=1, dim2=2), dim=1, descending=True, stable=True)


def _permute_columns(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return t.gather(2, order.unsqueeze(1).expand(-1, t.shape[1], -1))


def _permute_square(h: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    rows = h.gather(1, order.unsqueeze(2).expand(-1, -1, h.shape[2]))
    return rows.gather(2, order.unsqueeze(1).expand(-1, h.shape[1], -1))
