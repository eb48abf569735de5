"""Mixed precision under a hardware budget: which format, bits and granularity each layer gets.

    plan = plan_precision(graph, calibration, target="host", constraints=Constraints(size_mb=2.0))
    quantized = bitsmith.quantize(graph, plan.recipe, calibration)

The steps, each a pass in bitsmith.passes:
1. sensitivity: Hutchinson estimates of every weight's (and activation's) Hessian trace (HAWQ-V2);
2. Omega = Tr(H)/n * ||Q(W) - W||^2 for every weight and every candidate the target allows
   (precision_costs.candidates_for), with the same quantizer the recipe will use, so that format
   selection (INT vs FP, per channel vs group vs block) follows from each real tensor's error, not a
   rule. When the recipe runs GPTQ, Q(W) is GPTQ's solution on each candidate's grid (`GPTQ.solve`),
   so the ILP sees what the recipe will deploy. Two error models (`error_model`):
   - "weight" (HAWQ-V2): ||Q(W) - W||^2, the error in weight space;
   - "output": the error as the layer's inputs X see it, ||(Q(W) - W) X||^2 / (||X||^2 / K) (K the
     reduction length). With the Kronecker-factored (K-FAC) Gauss-Newton block of a linear layer,
     H ~ (X X^T / n) (x) G, and G taken isotropic, dW^T H dW = Tr(H)/n * this error, which equals
     ||dW||^2 when the inputs are white. GPTQ moves its error into the directions the inputs do not
     excite, so its weight-space error grows while its output error falls: with GPTQ, only this
     model ranks the candidates right ("auto" picks it then, "weight" otherwise);
3. interlayer: measured interactions of neighbouring layers at low precision, entered into the ILP as
   the pair's relative interaction times the Hessian's prediction for the pair (`_pair_term`);
4. assign_precision: the ILP (scipy.optimize.milp) minimizing predicted loss within the budget
   (size, BOPs, latency); the Pareto front of size against predicted loss comes with it;
5. with `Constraints.max_metric_drop`: bisection over the size budget for the cheapest assignment
   whose metric (the user's `eval_fn(quantized graph)`, higher is better, or the label-free fidelity:
   mean cosine similarity of the outputs with FP32) falls by at most that fraction. When the metric
   comes per sample (the fidelity does; an eval_fn may return one score per sample instead of their
   mean), the bound is the one-sided `drop_confidence` upper confidence bound of the mean drop (paired
   per-sample differences with FP32, normal approximation), so that the budget also holds on unseen
   data of the same distribution and not only on the samples the search saw.

Without any budget, the plan takes the size of uniform INT8 as its budget (when the target has INT8).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, Mapping, Sequence, cast

import networkx as nx
import numpy as np
import torch

from . import targets
from .constraints import Constraints
from .errors import BudgetError, DataError, UsageError
from .formats import fake_quant
from .ir import Graph, QuantSpec
from .passes.assign_precision import BUDGETS, Group, Problem, Solution, pareto_front, smallest_feasible, solve
from .passes.fold_batchnorm import FoldBatchNorm
from .passes.gptq import GPTQ, layer_hessians
from .passes.interlayer import Interactions, measure_interactions, neighbour_pairs
from .passes.linear_layers import LinearLayer, linear_layers
from .passes.precision_costs import (bits_of, candidates_for, fixed_bytes, label, layer_cost,
                                     peak_activation_bytes)
from .passes.quant_points import WeightPoint, weight_points
from .passes.quantize_weights import QuantizeWeights
from .passes.sensitivity import (DEFAULT_CACHE, HutchinsonSettings, LossFn, Sensitivity, builtin_loss, data_digest,
                                 graph_digest, hessian_traces)
from .recipes import LayerFormat, QuantRecipe
from .simulate import Simulator

Feed = Mapping[str, np.ndarray]
EvalFn = Callable[[Graph], "float | np.ndarray"]  # the metric, or one score per sample (mean: the metric)
Scores = np.ndarray  # the metric's per-sample scores (one entry: only the mean is known)
LOW_BITS = 4
ERROR_MODELS = ("auto", "weight", "output")


@dataclass
class PrecisionPlan:
    """The chosen per-layer formats, the per-layer data behind them and the size/loss trade-off.

    choices: weight name -> {"format", "bits", "granularity", "block_size"} (format None: float)
    layers: one row per weighted node (name, node, op, params, trace, omega per candidate, chosen, ...)
    pareto: points {"size_bytes", "bops", "latency_ms", "predicted_loss"} of the size/loss front
    recipe: reproduces the plan through bitsmith.quantize
    """

    choices: dict[str, dict[str, Any]]
    layers: list[dict[str, Any]]
    pareto: list[dict[str, float]]
    recipe: QuantRecipe
    target: str
    candidates: list[str]
    predicted_loss: float
    totals: dict[str, float]
    constraints: dict[str, Any]
    interactions: list[dict[str, Any]] = field(default_factory=list)
    bisection: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    sensitivity: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["recipe"] = {"name": self.recipe.name, "weights": self.recipe.weights,
                         "activations": self.recipe.activations,
                         "weight_clipping": self.recipe.weight_clipping,
                         "algorithms": list(self.recipe.algorithms),
                         "layer_formats": {k: list(v) for k, v in self.recipe.layer_formats.items()}}
        return out


@dataclass
class PrecisionAnalysis:
    """Everything measured once per model (`analyse_precision`): the BN-folded graph, its weights and
    their readers, the candidates, the Hessian traces, every weight's spec and quantization error
    per candidate (under `error_model`), GPTQ's solutions when the recipe runs GPTQ, and the measured
    interactions."""

    graph: Graph
    points: dict[str, WeightPoint]
    readers: dict[str, list[Any]]
    candidates: list[LayerFormat]
    sensitivity: Sensitivity
    specs: dict[str, list[QuantSpec | None]]
    errors: dict[str, np.ndarray]
    interactions: Interactions | None
    seconds: dict[str, float]
    rewritten: dict[str, list[np.ndarray | None]] = field(default_factory=dict)  # GPTQ's weights per candidate
    error_model: str = "weight"
    low: int | None = None  # the candidate interactions are measured at

    def weight_at(self, name: str, k: int) -> np.ndarray:
        """The float values weight `name` takes at candidate k: GPTQ's solution, else the original."""
        solution = self.rewritten.get(name, [None] * (k + 1))[k]
        return self.graph.constants[name] if solution is None else solution


def plan_precision(graph: Graph, calibration: Sequence[Feed], target: str | targets.Target = "host",
                   constraints: Constraints = Constraints(), eval_fn: EvalFn | None = None,
                   labels: Sequence[np.ndarray] | None = None, quiet: bool = True, *,
                   formats: Sequence[str] | None = None, activations: str | None = None,
                   recipe: QuantRecipe | None = None, ties: Sequence[Sequence[str]] = (),
                   settings: HutchinsonSettings = HutchinsonSettings(), interactions: bool = True,
                   interaction_feeds: int = 1, loss_fn: LossFn | None = None, loss_name: str | None = None,
                   eval_feeds: Sequence[Feed] | None = None, cache_dir: str | Path | None = DEFAULT_CACHE,
                   pareto_points: int = 16, bisection_steps: int = 10,
                   measured_latency_ms: Mapping[str, Mapping[str, float]] | None = None,
                   error_model: str = "auto", drop_confidence: float | None = 0.95) -> PrecisionPlan:
    """Choose a format per weight of `graph` minimizing the predicted loss within `constraints`.

    formats: restrict the candidates to these names (e.g. ("int8", "int4")); default all the target lists.
    activations: the activation format the deployment uses (None: float), for BOPs, latency and the recipe.
    recipe: a base recipe whose activation settings and algorithms the plan's recipe keeps.
    ties: groups of weight names that must get the same choice (weights shared by nodes always do).
    eval_feeds: data for the default fidelity metric of `max_metric_drop` (default: the calibration feeds).
    measured_latency_ms: weight name -> {candidate label ("int8", "mxfp4/b32", "fp32", ...): milliseconds}
        measured on the target; replaces the cost model's prediction for those entries.
    error_model: "weight", "output" or "auto" (module docstring, step 2).
    drop_confidence: with `max_metric_drop` and per-sample scores, the one-sided confidence with which the
        drop stays within the budget on unseen data (module docstring, step 5); None bounds the mean only.
    When the recipe runs "gptq" (its options may limit it to low-bit layers: gptq_max_bits=4), the
    plan predicts each candidate's loss from GPTQ's solution, with the recipe's own GPTQ settings.
    """
    calibration = list(calibration)
    if not calibration:
        raise DataError("plan_precision: no calibration feeds; pass a list of {input name: array} of real inputs")
    target = targets.load(target) if isinstance(target, str) else target
    base = recipe or QuantRecipe("mixed_precision", weights=None, activations=activations)
    analysis = analyse_precision(graph, calibration, target, formats=formats, clipping=base.weight_clipping,
                                 labels=labels, settings=settings, interactions=interactions,
                                 interaction_feeds=interaction_feeds, loss_fn=loss_fn, loss_name=loss_name,
                                 cache_dir=cache_dir, quiet=quiet, gptq=recipe_gptq(base, calibration),
                                 error_model=error_model)
    problem, groups = build_problem(analysis, target, activations if recipe is None else recipe.activations, ties,
                                    measured_latency_ms)
    budgets = _budgets(constraints, analysis, problem, activations if recipe is None else recipe.activations)
    start = time.perf_counter()
    bisection: list[dict[str, Any]] = []
    notes: list[str] = []
    if constraints.max_metric_drop is not None:
        metric = _metric(analysis.graph, eval_fn, eval_feeds or calibration)
        solution, bisection = _bisect(problem, budgets, DropBound(constraints.max_metric_drop, drop_confidence),
                                      metric, _builder(graph, calibration, base, analysis, groups), bisection_steps)
    else:
        if not budgets:
            budgets, note = _default_budget(problem, analysis)
            notes += [note] if note else []
        solution = solve(problem, budgets)
    plan_seconds = time.perf_counter() - start
    start = time.perf_counter()
    front = pareto_front(problem, "size_bytes", pareto_points,
                         {k: v for k, v in budgets.items() if k != "size_bytes"})
    choices = _choices(analysis, groups, solution.choice)
    seconds = {**analysis.seconds, "ilp_seconds": round(solution.seconds, 3),
               "plan_seconds": round(plan_seconds, 3), "pareto_seconds": round(time.perf_counter() - start, 3)}
    return PrecisionPlan(
        choices={name: _choice_json(c) for name, c in choices.items()},
        layers=_layer_rows(analysis, choices),
        pareto=[{**s.totals, "predicted_loss": s.predicted_loss} for s in front],
        recipe=base.with_(name=base.name if recipe is None else f"{base.name}+mixed_precision", weights=None,
                          layer_formats=choices),
        target=target.name, candidates=[label(c) for c in analysis.candidates],
        predicted_loss=solution.predicted_loss, totals=solution.totals, constraints=constraints.to_json(),
        interactions=_interaction_rows(analysis), bisection=bisection, seconds=seconds,
        sensitivity={k: v for k, v in analysis.sensitivity.to_json().items() if k not in ("weights", "activations")},
        notes=notes)


# -- analysis ----------------------------------------------------------------------------------------
def analyse_precision(graph: Graph, calibration: Sequence[Feed], target: str | targets.Target = "host", *,
                      formats: Sequence[str] | None = None, clipping: str = "mse",
                      labels: Sequence[np.ndarray] | None = None,
                      settings: HutchinsonSettings = HutchinsonSettings(), interactions: bool = True,
                      interaction_feeds: int = 1, loss_fn: LossFn | None = None, loss_name: str | None = None,
                      cache_dir: str | Path | None = DEFAULT_CACHE, quiet: bool = True, gptq: GPTQ | None = None,
                      error_model: str = "auto", interaction_candidate: str | None = None) -> PrecisionAnalysis:
    """Steps 1-3 of the module docstring on the BN-folded copy of `graph` (cached: see passes/sensitivity).

    gptq: the GPTQ pass the deployment runs (None: round to nearest); its solutions replace Q(W).
    error_model: "weight" (HAWQ-V2), "output" (K-FAC) or "auto" ("output" with GPTQ, else "weight").
    interaction_candidate: the label of the candidate interactions are measured at (default: INT4 per
        channel, else the first candidate of at most 4 bits).
    """
    if error_model not in ERROR_MODELS:
        raise UsageError(f"plan_precision: error_model must be one of {ERROR_MODELS}, not {error_model!r}")
    calibration = list(calibration)
    target = targets.load(target) if isinstance(target, str) else target
    with_interactions = interactions
    graph = FoldBatchNorm()(graph.copy())
    points = weight_points(graph)
    if not points:
        raise UsageError(f"plan_precision: model {graph.name!r} has no Conv/ConvTranspose/MatMul weights to assign "
                         "formats to")
    candidates = candidates_for(target, tuple(formats) if formats is not None else None)
    if not candidates:
        raise UsageError(f"plan_precision: target {target.name!r} allows none of the formats {list(formats or [])}; "
                         f"it lists {target.formats}")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    sensitivity = hessian_traces(graph, calibration, labels, settings, loss_fn=loss_fn, loss_name=loss_name,
                                 cache_dir=cache_dir, quiet=quiet)
    seconds["sensitivity_seconds"] = sensitivity.seconds
    seconds["sensitivity_wall_seconds"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    specs = _candidate_specs(graph, points, candidates, clipping)
    rewritten = gptq.solve(graph, specs) if gptq is not None else {}
    if gptq is not None:
        seconds["gptq_seconds"] = round(time.perf_counter() - start, 3)
    model = error_model if error_model != "auto" else ("output" if gptq is not None else "weight")
    readers = {name: [n for n in graph.nodes if n.inputs[1:2] == [name]] for name in points}
    low = _low_candidate(candidates, interaction_candidate)
    analysis = PrecisionAnalysis(graph, points, readers, candidates, sensitivity, specs, {}, None, seconds,
                                 rewritten, model, low)
    analysis.errors = quantization_errors(analysis, calibration, settings.sample_mask)
    seconds["omega_seconds"] = round(time.perf_counter() - start, 3)
    if with_interactions and low is not None:
        start = time.perf_counter()
        loss = loss_fn or builtin_loss(sensitivity.loss if sensitivity.loss in ("kl", "mse") else "kl", graph,
                                       settings.sample_mask)
        feeds = calibration[:max(1, interaction_feeds)]
        name = loss_name or sensitivity.loss + (f"@{settings.sample_mask}" if settings.sample_mask else "")
        analysis.interactions = _cached_interactions(analysis, feeds, low, loss, name, cache_dir, quiet)
        seconds["interactions_seconds"] = analysis.interactions.seconds
        seconds["interactions_wall_seconds"] = round(time.perf_counter() - start, 3)
    return analysis


def _candidate_specs(graph: Graph, points: dict[str, WeightPoint], candidates: list[LayerFormat],
                     clipping: str) -> dict[str, list[QuantSpec | None]]:
    """Each weight's spec for every candidate, with the recipe's quantizer."""
    return {name: [None if c.format is None else
                   QuantizeWeights(c.format, c.granularity, c.block_size, clipping).spec_for(graph.constants[name], point)
                   for c in candidates]
            for name, point in points.items()}


def quantization_errors(analysis: PrecisionAnalysis, calibration: Sequence[Feed],
                        sample_mask: str | None = None) -> dict[str, np.ndarray]:
    """Each weight's error for every candidate under the analysis's error model (module docstring),
    from its specs and GPTQ solutions; `sample_mask` limits the output model's inputs to the positions
    that count."""
    inputs: dict[str, tuple[LinearLayer, torch.Tensor]] = {}
    if analysis.error_model == "output":
        layers = [layer for layer in linear_layers(analysis.graph) if layer.weight in analysis.points]
        inputs = dict(zip([layer.weight for layer in layers],
                          zip(layers, layer_hessians(analysis.graph, calibration, layers, sample_mask))))
    errors = {}
    for name, specs in analysis.specs.items():
        weight = np.asarray(analysis.graph.constants[name], np.float32)
        row = []
        for k, spec in enumerate(specs):
            if spec is None:
                row.append(0.0)
                continue
            delta = fake_quant(analysis.weight_at(name, k), spec).astype(np.float64) - weight
            row.append(output_error(delta, *inputs[name]) if name in inputs else float(np.sum(delta * delta)))
        errors[name] = np.array(row)
    return errors


def output_error(delta: np.ndarray, layer: LinearLayer, hessian: torch.Tensor) -> float:
    """||delta X||^2 / (||X||^2 / K) for a weight error `delta` of `layer` whose input second moment
    is `hessian` (layer_hessians: 2 X X^T / n per group): the weight error as the inputs see it, in
    the units of ||delta||^2 (equal to it for white inputs)."""
    matrix = layer.matrix(torch.from_numpy(np.asarray(delta, np.float64)))
    h = hessian.to(torch.float64)
    mean_diagonal = float(h.diagonal(dim1=1, dim2=2).mean())
    if mean_diagonal <= 0:  # the layer never sees a non-zero input: no error reaches its output
        return 0.0
    return float(((matrix @ h) * matrix).sum()) / mean_diagonal


def _low_candidate(candidates: list[LayerFormat], wanted: str | None = None) -> int | None:
    """The candidate interactions are measured at: `wanted` (a label), else INT4 per channel, else the
    first of <= 4 bits."""
    labels = [label(c) for c in candidates]
    if wanted is not None:
        if wanted not in labels:
            raise UsageError(f"plan_precision: interaction_candidate {wanted!r} is not a candidate; candidates: {labels}")
        return labels.index(wanted)
    lows = [i for i, c in enumerate(candidates) if c.format is not None and bits_of(c) <= LOW_BITS]
    preferred = [i for i in lows if candidates[i] == LayerFormat("int4")]
    found = preferred or lows
    return found[0] if found else None


def _cached_interactions(analysis: PrecisionAnalysis, feeds: list[Feed], low: int, loss: LossFn, loss_name: str,
                         cache_dir: str | Path | None, quiet: bool) -> Interactions:
    quantized = {name: fake_quant(analysis.weight_at(name, low), cast(QuantSpec, analysis.specs[name][low]))
                 for name in analysis.points}
    cache_file = None
    if cache_dir is not None:
        digest = hashlib.sha256(b"".join(np.ascontiguousarray(quantized[n]).tobytes() for n in sorted(quantized)))
        key = json.dumps({"graph": graph_digest(analysis.graph), "data": data_digest(feeds), "loss": loss_name,
                          "low": list(analysis.candidates[low]), "weights": digest.hexdigest(), "version": 2},
                         sort_keys=True)
        cache_file = Path(cache_dir) / f"{analysis.graph.name}-interactions-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
        if cache_file.exists():
            return Interactions.from_json(json.loads(cache_file.read_text()))
    result = measure_interactions(analysis.graph, feeds, quantized, loss, neighbour_pairs(analysis.graph), quiet)
    result.settings = {"low": label(analysis.candidates[low]), "feeds": len(feeds), "loss": loss_name}
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(result.to_json(), indent=1))
    return result


# -- the ILP problem ---------------------------------------------------------------------------------
def _tie_groups(points: Mapping[str, WeightPoint], ties: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    relation = nx.Graph()
    relation.add_nodes_from(points)
    for tie in ties:
        unknown = [n for n in tie if n not in points]
        if unknown:
            raise UsageError(f"plan_precision: ties name {unknown}, which are not weights of Conv/ConvTranspose/"
                             f"MatMul nodes; weights: {sorted(points)[:8]}{' ...' if len(points) > 8 else ''}")
        relation.add_edges_from(zip(tie, tie[1:]))
    order = {name: i for i, name in enumerate(points)}
    return sorted((tuple(sorted(c, key=lambda name: order[name])) for c in nx.connected_components(relation)),
                  key=lambda group: order[group[0]])


def build_problem(analysis: PrecisionAnalysis, target: targets.Target, activations: str | None = None,
                  ties: Sequence[Sequence[str]] = (),
                  measured_latency_ms: Mapping[str, Mapping[str, float]] | None = None
                  ) -> tuple[Problem, list[tuple[str, ...]]]:
    """The ILP of `analysis` on `target`: one group per set of tied weights (returned alongside)."""
    measured = measured_latency_ms or {}
    groups = _tie_groups(analysis.points, ties)
    index_of = {name: g for g, names in enumerate(groups) for name in names}
    low_index = analysis.low
    low = np.array([k == low_index for k in range(len(analysis.candidates))])  # where interactions were measured
    problem_groups = []
    for names in groups:
        omegas = [_omega(analysis, name) for name in names]
        omega = sum(omegas[1:], omegas[0])
        costs = {b: np.zeros(len(analysis.candidates)) for b in BUDGETS}
        for name in names:
            for k, candidate in enumerate(analysis.candidates):
                cost = layer_cost(analysis.graph, analysis.readers[name], analysis.points[name], candidate, target,
                                  activations)
                costs["size_bytes"][k] += cost.bytes
                costs["bops"][k] += cost.bops
                costs["latency_ms"][k] += measured.get(name, {}).get(label(candidate), cost.latency_ms)
        problem_groups.append(Group(names, omega, costs, low))
    pairs: dict[tuple[int, int], float] = {}
    if analysis.interactions is not None and low_index is not None:
        degree: dict[str, int] = {}
        for pair in analysis.interactions.pair:
            for name in pair:
                degree[name] = degree.get(name, 0) + 1
        for (a, b) in analysis.interactions.pair:
            key = (index_of[a], index_of[b])
            if key[0] != key[1]:
                pairs[key] = pairs.get(key, 0.0) + _pair_term(analysis, a, b, low_index, degree)
    fixed = {"size_bytes": fixed_bytes(analysis.graph, set(analysis.points))}
    return Problem(problem_groups, [(a, b, v) for (a, b), v in pairs.items()], fixed), groups


def _relative_interaction(found: Interactions, a: str, b: str) -> float:
    """The pair's measured interaction as a fraction of its parts' measured losses (>= -1, since the
    pair's loss is not negative). The ILP applies it to the Hessian's prediction of the parts, so that
    measured and predicted losses are never mixed in one sum."""
    parts = found.single[a] + found.single[b]
    return found.interaction(a, b) / parts if parts > 0 else 0.0


def _pair_term(analysis: PrecisionAnalysis, a: str, b: str, low: int, degree: Mapping[str, int]) -> float:
    """The pair's term in the ILP objective: its relative interaction times the Hessian's prediction for
    the two layers at the low candidate. A negative (error-cancelling) interaction claims only a
    1/degree share of each layer's prediction, so that however many of a layer's pairs are low, the
    predicted loss never drops below zero."""
    assert analysis.interactions is not None  # called only when interactions were measured
    relative = _relative_interaction(analysis.interactions, a, b)
    omega_a, omega_b = _omega(analysis, a)[low], _omega(analysis, b)[low]
    if relative < 0:
        return relative * 0.5 * (omega_a / degree[a] + omega_b / degree[b])
    return relative * 0.5 * (omega_a + omega_b)


def _omega(analysis: PrecisionAnalysis, name: str) -> np.ndarray:
    trace = analysis.sensitivity.weights[name]
    return max(trace.average_trace, 0.0) * analysis.errors[name]


def _budgets(constraints: Constraints, analysis: PrecisionAnalysis, problem: Problem, activations: str | None) -> dict[str, float]:
    if constraints.peak_activation_mb is not None:
        peak = peak_activation_bytes(analysis.graph, activations)
        if peak > constraints.peak_activation_mb * 1e6:
            raise BudgetError(
                f"peak_activation_mb={constraints.peak_activation_mb:.6g} is below the smallest feasible "
                f"{peak / 1e6:.6g} MB: model {analysis.graph.name!r} holds that much activation data at once with "
                f"activations in {activations or 'float32'}, whatever the weight formats. Raise the budget to at least "
                "that, or quantize activations (recipe activations='uint8'/'int8').")
    budgets = {"size_bytes": constraints.size_mb * 1e6 if constraints.size_mb else None,
               "bops": constraints.bops_g * 1e9 if constraints.bops_g else None,
               "latency_ms": constraints.latency_ms}
    return {k: v for k, v in budgets.items() if v is not None}


def _default_budget(problem: Problem, analysis: PrecisionAnalysis) -> tuple[dict[str, float], str]:
    if LayerFormat("int8") not in analysis.candidates:
        return {}, "no budget given: the plan minimizes predicted loss alone"
    k = analysis.candidates.index(LayerFormat("int8"))
    size = problem.total([k] * len(problem.groups), "size_bytes")
    return {"size_bytes": size}, f"no budget given: the size of uniform INT8 ({size / 1e6:.3f} MB) is the budget"


# -- accuracy budget ---------------------------------------------------------------------------------
def fidelity(reference: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[Mapping[str, np.ndarray]]) -> float:
    """Label-free fidelity: the mean over samples and outputs of the cosine similarity with FP32."""
    return float(np.mean(sample_fidelity(reference, outputs)))


def sample_fidelity(reference: Sequence[Mapping[str, np.ndarray]],
                    outputs: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """The fidelity of each sample (a row of every output): its cosine with FP32, averaged over outputs."""
    samples = []
    for ref, out in zip(reference, outputs):
        per_output = []
        for name in ref:
            a = np.asarray(ref[name], np.float64).reshape(len(ref[name]), -1)
            b = np.asarray(out[name], np.float64).reshape(len(out[name]), -1)
            norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
            per_output.append((a * b).sum(1) / norms)
        samples.append(np.mean(per_output, axis=0))
    return np.concatenate(samples)


def _metric(graph: Graph, eval_fn: EvalFn | None, feeds: Sequence[Feed]) -> Callable[[Graph], Scores]:
    if eval_fn is not None:
        return lambda quantized: np.atleast_1d(np.asarray(eval_fn(quantized), np.float64))
    reference = [Simulator(graph, quantized=False).run(f) for f in feeds]
    return lambda quantized: sample_fidelity(reference, [Simulator(quantized).run(f) for f in feeds])


@dataclass(frozen=True)
class DropBound:
    """Whether a metric's relative drop from FP32 is within `limit`: the mean drop, raised by the one-sided
    `confidence` margin (z * standard error of the paired per-sample drops) when the scores are per sample."""

    limit: float
    confidence: float | None = 0.95

    def __post_init__(self) -> None:
        if self.confidence is not None and not 0.5 <= self.confidence < 1.0:
            raise UsageError(f"drop_confidence must lie in [0.5, 1), not {self.confidence!r}")

    def described(self) -> str:
        return "" if self.confidence is None else f" (its upper {self.confidence:g} confidence bound)"

    def measure(self, reference: Scores, scores: Scores) -> dict[str, float]:
        """{"relative_drop": mean drop, "drop_bound": the value compared with the limit}."""
        scale = abs(float(reference.mean())) or 1.0
        drop = (float(reference.mean()) - float(scores.mean())) / scale
        bound = drop
        if self.confidence is not None and len(scores) > 1 and len(scores) == len(reference):
            paired = (reference - scores) / scale
            z = NormalDist().inv_cdf(self.confidence)
            bound = drop + z * float(paired.std(ddof=1)) / np.sqrt(len(paired))
        return {"relative_drop": drop, "drop_bound": bound}


def _bisect(problem: Problem, budgets: dict[str, float], bound: DropBound, metric: Callable[[Graph], Scores],
            build: Callable[[Solution], Graph], steps: int) -> tuple[Solution, list[dict[str, Any]]]:
    """The cheapest (by size) assignment whose relative metric drop stays within `bound`: bisection
    over the size budget between the smallest feasible size and the size of the least-loss assignment."""
    others = {k: v for k, v in budgets.items() if k != "size_bytes"}
    ceiling = budgets.get("size_bytes")
    best = solve(problem, {**others, **({"size_bytes": ceiling} if ceiling else {})})
    reference = metric(build(Solution([-1], 0.0, {}, 0.0)))
    log: list[dict[str, Any]] = []
    evaluated: dict[tuple[int, ...], float] = {}

    def bound_of(solution: Solution) -> float:
        key = tuple(solution.choice)
        if key not in evaluated:
            scores = metric(build(solution))
            drops = bound.measure(reference, scores)
            evaluated[key] = drops["drop_bound"]
            log.append({"size_bytes": solution.totals["size_bytes"], "predicted_loss": solution.predicted_loss,
                        "metric": float(scores.mean()), "reference": float(reference.mean()),
                        "samples": len(scores), **drops})
        return evaluated[key]

    if bound_of(best) > bound.limit:
        raise BudgetError(f"max_metric_drop={bound.limit:.6g} cannot be met: the most precise assignment within the "
                          f"other budgets ({best.totals['size_bytes'] / 1e6:.6g} MB) already drops the metric by "
                          f"{evaluated[tuple(best.choice)]:.6g}{bound.described()}. Allow a drop of at least that, "
                          "evaluate on more samples, or add float / wider formats to the candidates.")
    low = cast(float, smallest_feasible(problem, "size_bytes", others))  # `best` is feasible, so some size is
    high = best.totals["size_bytes"]
    for _ in range(steps):
        if high - low <= 1e-3 * high:
            break
        middle = solve(problem, {**others, "size_bytes": (low + high) / 2})
        if bound_of(middle) <= bound.limit:
            best, high = middle, middle.totals["size_bytes"]
        else:
            low = (low + high) / 2
    return best, log


def _builder(graph: Graph, calibration: list[Feed], base: QuantRecipe, analysis: PrecisionAnalysis,
             groups: list[tuple[str, ...]]) -> Callable[[Solution], Graph]:
    """How the bisection builds a candidate: the analysis's weights and specs when the recipe quantizes
    nothing else (GPTQ's solutions are in the analysis), else the whole recipe through the quantize
    driver (activations calibrated, algorithms run)."""
    if base.activations is None and set(base.algorithms) <= ({"gptq"} if analysis.rewritten else set()):
        return lambda solution: quantized_graph(analysis, groups, solution.choice)
    from .quantize import quantize

    def build(solution: Solution) -> Graph:
        if list(solution.choice) == [-1]:
            return quantized_graph(analysis, groups, solution.choice)
        return quantize(graph, base.with_(weights=None, layer_formats=_choices(analysis, groups, solution.choice)),
                        calibration)

    return build


def recipe_gptq(recipe: QuantRecipe, calibration: Sequence[Feed]) -> GPTQ | None:
    """The GPTQ pass `recipe` runs through the quantize driver (its options included), or None."""
    if "gptq" not in recipe.algorithms:
        return None
    from .quantize import ALGORITHMS

    return cast(GPTQ, ALGORITHMS["gptq"][1](recipe, list(calibration)))


def quantized_graph(analysis: PrecisionAnalysis, groups: list[tuple[str, ...]], choice: Sequence[int]) -> Graph:
    """The folded graph with each weight's chosen spec and values (GPTQ's solution where the analysis
    has one; choice [-1]: the float graph)."""
    graph = analysis.graph.copy()
    if list(choice) == [-1]:
        return graph
    for names, k in zip(groups, choice):
        for name in names:
            graph.values[name].quant = analysis.specs[name][k]
            graph.constants[name] = analysis.weight_at(name, k)
    return graph


# -- results -----------------------------------------------------------------------------------------
def _choices(analysis: PrecisionAnalysis, groups: list[tuple[str, ...]], choice: Sequence[int]) -> dict[str, LayerFormat]:
    return {name: analysis.candidates[k] for names, k in zip(groups, choice) for name in names}


def _choice_json(candidate: LayerFormat) -> dict[str, Any]:
    return {"format": candidate.format, "bits": bits_of(candidate), "granularity": candidate.granularity,
            "block_size": candidate.block_size, "label": label(candidate)}


def _layer_rows(analysis: PrecisionAnalysis, choices: Mapping[str, LayerFormat]) -> list[dict[str, Any]]:
    rows = []
    labels = [label(c) for c in analysis.candidates]
    for name, point in analysis.points.items():
        trace = analysis.sensitivity.weights[name]
        omega = _omega(analysis, name)
        for node in analysis.readers[name]:
            activation = analysis.sensitivity.activations.get(node.inputs[0])
            rows.append({
                "name": name, "node": node.name, "op": node.op, "params": int(analysis.graph.values[name].size),
                "shape": list(analysis.graph.values[name].shape),
                "trace": trace.trace, "average_trace": trace.average_trace, "trace_rel_error": trace.relative_error,
                "activation": node.inputs[0],
                "activation_average_trace": activation.average_trace if activation else None,
                "omega": dict(zip(labels, map(float, omega))),
                "quant_error": dict(zip(labels, map(float, analysis.errors[name]))),
                "chosen": label(choices[name]),
            })
    return rows


def _interaction_rows(analysis: PrecisionAnalysis) -> list[dict[str, Any]]:
    found = analysis.interactions
    if found is None:
        return []
    return [{"a": a, "b": b, "loss_a": found.single[a], "loss_b": found.single[b], "loss_ab": v,
             "interaction": found.interaction(a, b), "relative": _relative_interaction(found, a, b)}
            for (a, b), v in found.pair.items()]
