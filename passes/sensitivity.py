"""Per-layer Hessian trace of the loss, by Hutchinson's estimator (HAWQ-V2: Dong et al., "HAWQ-V2:
Hessian Aware trace-Weighted Quantization of Neural Networks", NeurIPS 2020).

For every weight W_l (the weight operand of Conv / ConvTranspose / MatMul, `quant_points.weight_points`)
and every quantized activation a_l (the float inputs of those ops), estimate the trace Tr(H_l) of the
loss Hessian's diagonal block for that tensor (HAWQ-V2's sensitivity is Tr(H_l)/n_l) with Hutchinson's
estimator Tr(A) = E_v[v^T A v], v Rademacher (+-1 with equal probability), through torch autograd on
the interpreter (`Simulator(graph, quantized=False)`). Activations enter as zero perturbations added
where they are produced: the derivatives with respect to the perturbation are those of the activation.

The loss (`loss_kind`): "task" (cross-entropy of the first output against integer labels) when labels
are given, else a label-free one against the FP32 outputs: "kl" (KL(FP32 || model) of the softmax over
the last axis; for a single 2-D logits output) or "mse" (mean squared error of every output); or a
user's `loss_fn`. `sample_mask` names a graph input marking the positions that count (a
transformer's `attention_mask`): the MSE then averages over those positions only (outputs whose
leading axes have the mask's shape), so that padding, which the model's users ignore, does not
dominate the traces (with MiniLM's short sentences padded to 128 tokens it is 85% of the positions).

Two estimators (`estimator`):
- "hvp": v over all tensors at once, one Hessian-vector product per probe by double backpropagation,
  each tensor's term (Hv)_l . v_l (PyHessian's layer-wise trace). Exact for any loss, but the
  cross-layer terms v_l^T H_lk v_k, zero in mean, add variance that grows with the number of layers.
- "gauss_newton": at the FP32 point the label-free losses are at their minimum (zero gradient with
  respect to the outputs), so their Hessian equals the Gauss-Newton matrix J^T F J (F: the loss Hessian
  in output space). With F = A A^T, Tr(J_l^T F J_l) = E_u ||J_l^T A u||^2 for Rademacher u in output
  space: one backward pass per probe gives every tensor an unbiased, never negative sample with no
  cross-layer terms. A is closed form: MSE A = sqrt(2/n) I (masked: sqrt(2/n) diag(m), n the
  number of positions m marks times the features per position); softmax KL per row, with s = sqrt(p),
  F = diag(p) - p p^T = D^(1/2) (I - s s^T) D^(1/2), and since I - s s^T is a projector,
  A u = s * (u - s (s . u)).
"auto" takes "gauss_newton" for the built-in label-free losses and "hvp" otherwise.

Stopping: probes are drawn in rounds over the calibration batches (`probes_per_batch` each, reusing one
forward and first backward pass per batch); after each round the estimate of every tensor has a
relative standard error se/|mean|; the pass stops when all are below `tolerance` (after `min_probes`),
or at `max_probes`. Deterministic: probes come from a seeded torch.Generator.

Cached: the result is a JSON file under `cache_dir` (default `.cache/sensitivity/`) named by a hash of
the graph (structure and constants), the data and the settings; never pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import DataError, UsageError
from ..interpreter import check_feeds, execute
from ..ir import Graph
from ..simulate import Simulator
from .base import Pass
from .quant_points import activation_points, weight_points

log = logging.getLogger("bitsmith.passes.sensitivity")

DEFAULT_CACHE = Path(".cache") / "sensitivity"
LOSS_KINDS = ("auto", "task", "kl", "mse")
ESTIMATORS = ("auto", "gauss_newton", "hvp")
CACHE_VERSION = 1

Feed = Mapping[str, np.ndarray]
LossFn = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], Feed], torch.Tensor]


@dataclass(frozen=True)
class HutchinsonSettings:
    loss_kind: str = "auto"
    tolerance: float = 0.2       # stop when every tensor's relative standard error is below this
    min_probes: int = 8
    max_probes: int = 16         # rankings settle well before the traces do (docs/results/mixed_precision.md)
    probes_per_batch: int = 4
    seed: int = 0
    activations: bool = True     # estimate the activations' traces too
    estimator: str = "auto"
    sample_mask: str | None = None  # graph input marking the positions the MSE counts (None: all)

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise UsageError(f"sensitivity: estimator must be one of {ESTIMATORS}, not {self.estimator!r}")
        if self.loss_kind not in LOSS_KINDS:
            raise UsageError(f"sensitivity: loss_kind must be one of {LOSS_KINDS}, not {self.loss_kind!r}")
        if not (0 < self.tolerance and 1 <= self.min_probes <= self.max_probes and self.probes_per_batch >= 1):
            raise UsageError(f"sensitivity: bad settings {self}: need tolerance > 0, "
                             "1 <= min_probes <= max_probes, probes_per_batch >= 1")


@dataclass
class TensorTrace:
    """The Hutchinson estimate for one tensor: mean of v^T H v over probes, its size and standard error."""

    name: str
    kind: str            # "weight" or "activation"
    node: str            # the node reading it (first reader for activations)
    numel: int
    trace: float         # Tr(H) estimate
    std_error: float     # standard error of `trace`

    @property
    def average_trace(self) -> float:
        """Tr(H)/n, HAWQ-V2's sensitivity."""
        return self.trace / self.numel

    @property
    def relative_error(self) -> float:
        return self.std_error / abs(self.trace) if self.trace else float("inf")


@dataclass
class Sensitivity:
    """What the pass measured: per-tensor traces, the loss used, probes drawn, seconds spent."""

    weights: dict[str, TensorTrace]
    activations: dict[str, TensorTrace]
    loss: str
    probes: int
    seconds: float
    converged: bool
    estimator: str = "hvp"
    cpu_seconds: float = 0.0  # process CPU time (all threads): on a shared machine, wall time inflates
    settings: dict[str, Any] = field(default_factory=dict)
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"weights": {k: asdict(v) for k, v in self.weights.items()},
                "activations": {k: asdict(v) for k, v in self.activations.items()},
                "loss": self.loss, "probes": self.probes, "seconds": self.seconds, "converged": self.converged,
                "estimator": self.estimator, "cpu_seconds": self.cpu_seconds, "settings": self.settings}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], cached: bool = False) -> "Sensitivity":
        return cls({k: TensorTrace(**v) for k, v in data["weights"].items()},
                   {k: TensorTrace(**v) for k, v in data["activations"].items()},
                   data["loss"], int(data["probes"]), float(data["seconds"]), bool(data["converged"]),
                   data["estimator"], float(data.get("cpu_seconds", 0.0)), dict(data.get("settings", {})), cached)


class HessianSensitivity(Pass):
    """Records `hessian_traces` in graph.metadata["sensitivity"] (JSON); the graph is unchanged."""

    name = "sensitivity"
    requires = ("batchnorm_folded",)
    ensures = ("sensitivity",)

    def __init__(self, feeds: Sequence[Feed], labels: Sequence[np.ndarray] | None = None,
                 settings: HutchinsonSettings = HutchinsonSettings(), cache_dir: str | Path | None = DEFAULT_CACHE,
                 quiet: bool = True) -> None:
        self.feeds, self.labels, self.settings = list(feeds), labels, settings
        self.cache_dir, self.quiet = cache_dir, quiet

    def run(self, graph: Graph) -> Graph:
        result = hessian_traces(graph, self.feeds, self.labels, self.settings, cache_dir=self.cache_dir,
                                quiet=self.quiet)
        graph.metadata["sensitivity"] = result.to_json()
        return graph


# -- public entry point ------------------------------------------------------------------------------
def hessian_traces(graph: Graph, feeds: Sequence[Feed], labels: Sequence[np.ndarray] | None = None,
                   settings: HutchinsonSettings = HutchinsonSettings(), *, loss_fn: LossFn | None = None,
                   loss_name: str | None = None, cache_dir: str | Path | None = DEFAULT_CACHE,
                   quiet: bool = True) -> Sensitivity:
    """Hutchinson estimates of Tr(H) for every weight (and activation) of `graph` on `feeds`.

    `labels` (one integer array per feed) selects the task loss; `loss_fn(outputs, fp32_outputs, feed)`
    replaces the built-in losses (give it a `loss_name` so the cache tells them apart).
    """
    feeds = list(feeds)
    if not feeds:
        raise DataError("sensitivity: no calibration feeds; pass a list of {input name: array}")
    for feed in feeds:
        check_feeds(graph, dict(feed))
    if labels is not None and len(labels) != len(feeds):
        raise DataError(f"sensitivity: {len(labels)} label arrays for {len(feeds)} feeds; give one per feed")
    kind = _loss_kind(graph, settings.loss_kind, labels) if loss_fn is None else (loss_name or "custom")
    cache_file = _cache_file(graph, feeds, labels, settings, kind, cache_dir)
    if cache_file is not None and cache_file.exists():
        return Sensitivity.from_json(json.loads(cache_file.read_text()), cached=True)
    result = _estimate(graph, feeds, labels, settings, kind, loss_fn, quiet)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(result.to_json(), indent=1))
        tmp.replace(cache_file)
    return result


# -- losses ------------------------------------------------------------------------------------------
def _loss_kind(graph: Graph, requested: str, labels: Sequence[np.ndarray] | None) -> str:
    if requested == "task" and labels is None:
        raise UsageError("sensitivity: loss 'task' needs labels (one integer array per calibration feed)")
    if requested != "auto":
        return requested
    if labels is not None:
        return "task"
    first = graph.values[graph.outputs[0]]
    return "kl" if len(graph.outputs) == 1 and len(first.shape) == 2 else "mse"


def builtin_loss(kind: str, graph: Graph, sample_mask: str | None = None) -> LossFn:
    """The loss of `kind` ("task" reads feed["__labels__"]), as loss(outputs, fp32_outputs, feed);
    with `sample_mask`, the MSE counts only the positions feed[sample_mask] marks."""
    first = graph.outputs[0]

    def kl(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], feed: Feed) -> torch.Tensor:
        p_log = torch.log_softmax(ref[first].double(), -1)
        q_log = torch.log_softmax(out[first].double(), -1)
        return (p_log.exp() * (p_log - q_log)).sum(-1).mean()

    def mse(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], feed: Feed) -> torch.Tensor:
        def term(name: str) -> torch.Tensor:
            weights = position_weights(feed, sample_mask, ref[name])
            squared = (out[name].double() - ref[name].double()) ** 2
            return squared.mean() if weights is None else (squared * weights).sum() / _counted(weights, squared)
        return sum((term(n) for n in graph.outputs), torch.zeros((), dtype=torch.float64))  # 0 + x: exact

    def task(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], feed: Feed) -> torch.Tensor:
        labels = torch.from_numpy(np.asarray(feed["__labels__"], np.int64))
        return torch.nn.functional.cross_entropy(out[first].double(), labels)

    return {"kl": kl, "mse": mse, "task": task}[kind]


def position_weights(feed: Feed, sample_mask: str | None, output: torch.Tensor) -> torch.Tensor | None:
    """feed[sample_mask] (0/1) shaped to broadcast against `output`, when the output's leading axes have
    the mask's shape; else None (every position counts)."""
    if sample_mask is None:
        return None
    if sample_mask not in feed:
        raise DataError(f"sensitivity: the calibration feeds have no input {sample_mask!r} (sample_mask); "
                        f"they have {sorted(feed)}")
    mask = np.asarray(feed[sample_mask])
    if tuple(output.shape[:mask.ndim]) != mask.shape:
        return None
    weights = torch.from_numpy((mask != 0).astype(np.float64))
    return weights.reshape(mask.shape + (1,) * (output.dim() - mask.ndim))


def _counted(weights: torch.Tensor, output: torch.Tensor) -> float:
    """The number of output elements the position weights mark (at least 1)."""
    per_position = output[(0,) * weights.dim()].numel() if output.dim() > weights.dim() else 1
    return max(float(weights.sum()) * per_position, 1.0)


# -- the estimator -----------------------------------------------------------------------------------
def _estimate(graph: Graph, feeds: list[Feed], labels: Sequence[np.ndarray] | None, settings: HutchinsonSettings,
              kind: str, loss_fn: LossFn | None, quiet: bool) -> Sensitivity:
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = loss_fn or builtin_loss(kind, graph, settings.sample_mask)
    estimator = _estimator(settings.estimator, kind, loss_fn)
    probe_batch = partial(_gauss_newton_batch, sample_mask=settings.sample_mask) if estimator == "gauss_newton" \
        else _hvp_batch
    points = weight_points(graph)
    acts = _activation_readers(graph) if settings.activations else {}
    sim = Simulator(graph, quantized=False)
    generator = torch.Generator().manual_seed(settings.seed)
    samples: list[np.ndarray] = []  # one row per probe: v^T H v per tensor (weights, then activations)
    bar = tqdm(total=settings.max_probes, disable=quiet, desc="hessian trace", unit="probe", leave=False)
    converged, batch = False, 0
    try:
        while len(samples) < settings.max_probes and not converged:
            feed = dict(feeds[batch % len(feeds)])
            if labels is not None:
                feed["__labels__"] = labels[batch % len(feeds)]
            count = min(settings.probes_per_batch, settings.max_probes - len(samples))
            rows = probe_batch(graph, sim, feed, (kind, loss), list(points), acts, generator, count)
            samples += rows
            bar.update(len(rows))
            batch += 1
            converged = bool(len(samples) >= settings.min_probes
                             and _relative_errors(samples).max() <= settings.tolerance)
            bar.set_postfix(rel_se=f"{_relative_errors(samples).max():.3f}")
    finally:
        bar.close()
    table = np.stack(samples)
    means, errors = table.mean(0), table.std(0, ddof=1) / np.sqrt(len(table)) if len(table) > 1 else np.zeros(
        table.shape[1])
    names = list(points) + list(acts)
    traces = [TensorTrace(name, "weight" if i < len(points) else "activation",
                          points[name].node if i < len(points) else acts[name],
                          int(graph.values[name].size), float(means[i]), float(errors[i]))
              for i, name in enumerate(names)]
    seconds = time.perf_counter() - start
    log.info("sensitivity: %d probes, %.1fs, max relative error %.3f", len(table), seconds,
             _relative_errors(samples).max())
    return Sensitivity({t.name: t for t in traces if t.kind == "weight"},
                       {t.name: t for t in traces if t.kind == "activation"},
                       kind, len(table), round(seconds, 3), converged, estimator,
                       round(time.process_time() - cpu_start, 3), asdict(settings))


def _activation_readers(graph: Graph) -> dict[str, str]:
    """Quantized activations (the float inputs of weighted ops and what ties to them) -> a node reading it."""
    points, _ = activation_points(graph)
    consumers = graph.consumers()
    return {name: consumers[name][0].name for name in sorted(points) if consumers.get(name)}


def _estimator(requested: str, kind: str, loss_fn: LossFn | None) -> str:
    if requested == "gauss_newton" and (loss_fn is not None or kind not in ("kl", "mse")):
        raise UsageError("sensitivity: the gauss_newton estimator equals the Hessian only for the built-in "
                         "label-free losses ('kl', 'mse'); use estimator='hvp' for the task loss or a loss_fn")
    if requested != "auto":
        return requested
    return "gauss_newton" if loss_fn is None and kind in ("kl", "mse") else "hvp"


def _rademacher(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, tuple(shape), generator=generator).to(torch.float32) * 2 - 1


class _Forward:
    """One batch through the float graph with the weights and activation perturbations as autograd leaves."""

    def __init__(self, graph: Graph, sim: Simulator, feed: Mapping[str, Any], weights: list[str],
                 acts: dict[str, str]) -> None:
        inputs = {n: torch.from_numpy(np.array(feed[n])) for n in graph.inputs}
        with torch.no_grad():
            self.reference = {n: t for n, t in sim.forward(inputs).items() if n in graph.outputs}
        params = {n: sim.constants[n].detach().clone().requires_grad_(True) for n in weights}
        perturb = {n: torch.zeros(graph.values[n].shape, requires_grad=True) for n in acts}

        def add_perturbation(name: str, tensor: torch.Tensor) -> torch.Tensor:
            return tensor + perturb[name] if name in perturb else tensor

        env = execute(graph, {**sim.constants, **params, **inputs}, on_value=add_perturbation)
        self.outputs = {n: env[n] for n in graph.outputs}
        self.leaves = [*params.values(), *perturb.values()]


def _hvp_batch(graph: Graph, sim: Simulator, feed: dict[str, Any], loss: tuple[str, LossFn], weights: list[str],
               acts: dict[str, str], generator: torch.Generator, probes: int) -> list[np.ndarray]:
    """`probes` samples on one batch: one forward and first backward (kept for double backpropagation),
    then one Hessian-vector product per probe; each tensor's sample is (Hv)_l . v_l."""
    forward = _Forward(graph, sim, feed, weights, acts)
    value = loss[1](forward.outputs, forward.reference, feed)
    grads = torch.autograd.grad(value, forward.leaves, create_graph=True, allow_unused=True)
    used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    rows = []
    for _ in range(probes):
        vs = [_rademacher(leaf.shape, generator) for leaf in forward.leaves]
        hvs = torch.autograd.grad([grads[i] for i in used], [forward.leaves[i] for i in used],
                                  grad_outputs=[vs[i] for i in used], retain_graph=True, allow_unused=True)
        row = np.zeros(len(forward.leaves))
        for i, hv in zip(used, hvs):
            row[i] = 0.0 if hv is None else float((hv.double() * vs[i]).sum())
        rows.append(row)
    return rows


def _gauss_newton_batch(graph: Graph, sim: Simulator, feed: dict[str, Any], loss: tuple[str, LossFn],
                        weights: list[str], acts: dict[str, str], generator: torch.Generator,
                        probes: int, sample_mask: str | None = None) -> list[np.ndarray]:
    """`probes` samples on one batch: one forward, then per probe one backward pass of J^T A u; each
    tensor's sample is ||J_l^T A u||^2 (module docstring)."""
    forward = _Forward(graph, sim, feed, weights, acts)
    outputs = list(forward.outputs.values())
    rows = []
    for _ in range(probes):
        cotangents = [_output_factor(loss[0], forward.reference[n], _rademacher(t.shape, generator),
                                     position_weights(feed, sample_mask, forward.reference[n]))
                      for n, t in forward.outputs.items()]
        grads = torch.autograd.grad(outputs, forward.leaves, grad_outputs=cotangents, retain_graph=True,
                                    allow_unused=True)
        rows.append(np.array([0.0 if g is None else float((g.double() ** 2).sum()) for g in grads]))
    return rows


def _output_factor(kind: str, reference: torch.Tensor, u: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """A u, where A A^T is the loss Hessian with respect to this output at the FP32 point (MSE with
    position weights: the 0/1 weights times sqrt(2 / the positions' element count))."""
    if kind == "mse":
        if weights is None:
            return u * float(np.sqrt(2.0 / reference.numel()))
        return (u * weights.to(u.dtype)) * float(np.sqrt(2.0 / _counted(weights, reference)))
    rows = reference.shape[0]
    s = torch.softmax(reference.double(), -1).sqrt()
    factor = s * (u.double() - s * (s * u.double()).sum(-1, keepdim=True))
    return (factor / np.sqrt(rows)).to(torch.float32)


def _relative_errors(samples: list[np.ndarray]) -> np.ndarray:
    table = np.stack(samples)
    if len(table) < 2:
        return np.full(table.shape[1], np.inf)
    mean = np.abs(table.mean(0))
    error = table.std(0, ddof=1) / np.sqrt(len(table))
    return np.where(mean > 0, error / np.where(mean > 0, mean, 1), np.where(error > 0, np.inf, 0.0))


# -- cache -------------------------------------------------------------------------------------------
def graph_digest(graph: Graph) -> str:
    """sha256 of the graph's text dump and every constant's bytes."""
    digest = hashlib.sha256(graph.dump().encode())
    for name in sorted(graph.constants):
        array = np.ascontiguousarray(graph.constants[name])
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def data_digest(feeds: Sequence[Feed], labels: Sequence[np.ndarray] | None = None) -> str:
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            digest.update(array.tobytes())
    for array in labels or ():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _cache_file(graph: Graph, feeds: Sequence[Feed], labels: Sequence[np.ndarray] | None,
                settings: HutchinsonSettings, kind: str, cache_dir: str | Path | None) -> Path | None:
    if cache_dir is None:
        return None
    key = json.dumps({"version": CACHE_VERSION, "graph": graph_digest(graph), "data": data_digest(feeds, labels),
                      "settings": asdict(settings), "loss": kind}, sort_keys=True)
    return Path(cache_dir) / f"{graph.name}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
