"""Evidence for Hessian-guided mixed precision (bitsmith.precision) on MobileNetV2 and MiniLM-L6.

For each model, on real data from the zoo (calibration and evaluation splits disjoint):
- spearman_sensitivity: rank correlation between each layer's Omega at INT4 (HAWQ-V2) and the measured
  metric drop on evaluation data when only that layer is quantized to INT4;
- at an average of 5 and 6 weight bits (equal size, INT4/INT8 per channel): the metric of the Hessian
  ILP, uniform INT8, uniform INT4, random assignments (mean of 5 seeds) and the reversed Hessian ranking;
  and the ILP over every format the target allows at the same size;
- with a 1% relative metric-drop budget: the configuration plan_precision picks (bisection on
  calibration data), its drop on evaluation data and its size relative to INT8;
- format selection: for each weight, the 8-bit and 4-bit formats with the least Omega, against the
  tensor's kurtosis (outlier-heaviness);
- sensitivity_seconds and ilp_seconds (with the load average: the machine is shared).

Weight-only mixed precision: activations stay in float, so every difference comes from the weights.
Writes docs/results/mixed_precision.json, .md and .png. Re-run: `.venv/bin/python scripts/mixed_precision.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.stats import kurtosis, spearmanr

import bitsmith
from bitsmith import targets, zoo
from bitsmith.constraints import Constraints
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import run_node
from bitsmith.measure import classification_fidelity, cosine, mean_pooled
from bitsmith.passes.assign_precision import Group, Problem, solve
from bitsmith.passes.bias_correction import BiasCorrection
from bitsmith.passes.fold_batchnorm import FoldBatchNorm
from bitsmith.passes.gptq import GPTQ
from bitsmith.passes.precision_costs import fixed_bytes, label
from bitsmith.passes.quant_points import weight_points
from bitsmith.passes.sensitivity import HutchinsonSettings, hessian_traces
from bitsmith.precision import (analyse_precision, build_problem, fidelity, plan_precision, quantization_errors,
                                quantized_graph)
from bitsmith.recipes import LayerFormat
from bitsmith.simulate import Simulator

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
TARGET = "x86-avx2"
AVERAGE_BITS = (5, 6)
RANDOM_SEEDS = 5
DROP_BUDGET = 0.01
DROP_CONFIDENCE = 0.95  # the budget is met by the upper confidence bound of the selection data's mean drop
Outputs = list[dict[str, np.ndarray]]


@dataclass
class Task:
    model: str
    batch: int
    sens_batches: int      # calibration feeds for the Hessian (the first also measures interactions)
    select_batches: int    # further calibration feeds for the accuracy-budget bisection
    eval_batches: int
    single_layer_batches: int  # evaluation feeds for the single-layer drops (one run per layer each)
    seq_len: int | None
    max_probes: int
    metric_name: str
    sample_mask: str | None = None  # the input marking the output positions the Hessian's loss counts


TASKS = {
    "mobilenet_v2": Task("mobilenet_v2", 8, 2, 8, 20, 8, None, 8, "kl"),
    "minilm_l6": Task("minilm_l6", 8, 2, 8, 20, 8, 128, 8, "cosine", "attention_mask"),
}
GPTQ_PAIR = ("int8", "int4")  # section 3's (8-bit, 4-bit) candidates for the baselines
EXTRA_SETS = {  # section 3's further ILPs: name -> candidates (at the same size budget)
    "hessian_ilp_int4_b128": ["int8", "int4/b128"],
    "hessian_ilp_int4_groups": ["int8", "int4", "int4/b128", "int4/b64", "int4/b32"],
}


def load_model(task: Task):
    shapes = zoo.input_shapes(task.model, task.batch, **({"seq_len": task.seq_len} if task.seq_len else {}))
    kwargs = {"seq_len": task.seq_len} if task.seq_len else {}
    calib = zoo.inputs(task.model, task.sens_batches + task.select_batches, batch=task.batch, split="calib", **kwargs)
    evaluation = zoo.inputs(task.model, task.eval_batches, batch=task.batch, split="eval", **kwargs)
    return import_onnx(zoo.onnx_path(task.model), shapes), calib[:task.sens_batches], calib[task.sens_batches:], evaluation


# -- metrics -----------------------------------------------------------------------------------------
def metrics(task: Task, feeds: list, reference: Outputs, outputs: Outputs) -> dict[str, float]:
    """MobileNetV2: KL and top-1 agreement vs FP32 (drop = KL); MiniLM: cosine of the mean-pooled
    embeddings vs FP32 (drop = 1 - cosine)."""
    if task.model == "mobilenet_v2":
        out = classification_fidelity(np.concatenate([r["logits"] for r in reference]),
                                      np.concatenate([o["logits"] for o in outputs]))
        return {"kl": out["kl"], "top1_agree": out["top1_agree"], "drop": out["kl"],
                "fidelity": fidelity(reference, outputs)}
    value = float(sample_cosines(feeds, reference, outputs).mean())
    return {"cosine": value, "drop": 1.0 - value}


def sample_cosines(feeds: list, reference: Outputs, outputs: Outputs) -> np.ndarray:
    """MiniLM: each sample's cosine of its mean-pooled embedding with FP32's."""
    mask = np.concatenate([f["attention_mask"] for f in feeds])
    a = mean_pooled(np.concatenate([r["last_hidden_state"] for r in reference]), mask)
    b = mean_pooled(np.concatenate([o["last_hidden_state"] for o in outputs]), mask)
    return cosine(a, b)


def run_all(graph, feeds: list) -> Outputs:
    sim = Simulator(graph)
    return [sim.run(f) for f in feeds]


# -- baselines on the INT4 / INT8 problem ------------------------------------------------------------
def sub_problem(problem: Problem, keep: list[int]) -> Problem:
    groups = [Group(g.names, g.omega[keep], {k: v[keep] for k, v in g.costs.items()}, g.low[keep])
              for g in problem.groups]
    return Problem(groups, problem.interactions, problem.fixed)


def equal_size_budget(problem: Problem, bits: float) -> float:
    """Size at `bits` average weight bits: INT4 everywhere plus (bits - 4)/4 of the way to INT8 (candidates
    0 and 1 of `problem`: INT8 and INT4 per channel, scales included)."""
    int8 = problem.total([0] * len(problem.groups), "size_bytes")
    int4 = problem.total([1] * len(problem.groups), "size_bytes")
    return int4 + (bits - 4) / 4 * (int8 - int4)


def random_choice(problem: Problem, budget: float, seed: int) -> list[int]:
    """INT8 (candidate 0) for layers in a random order while the size stays within budget, INT4 (1) after."""
    choice = [1] * len(problem.groups)
    for g in np.random.default_rng(seed).permutation(len(problem.groups)):
        trial = choice.copy()
        trial[g] = 0
        if problem.total(trial, "size_bytes") <= budget:
            choice = trial
    return choice


def reversed_problem(problem: Problem) -> Problem:
    """The same problem with each layer's INT4 penalty swapped for the one at the mirrored rank: the
    layers the Hessian finds least sensitive (per byte saved) look the most sensitive."""
    benefit = [g.omega[1] - g.omega[0] for g in problem.groups]
    saved = [g.costs["size_bytes"][0] - g.costs["size_bytes"][1] for g in problem.groups]
    order = np.argsort([b / max(s, 1.0) for b, s in zip(benefit, saved)])
    mirrored = {int(order[i]): int(order[-1 - i]) for i in range(len(order))}
    groups = []
    for g, group in enumerate(problem.groups):
        other = problem.groups[mirrored[g]]
        ratio = max(saved[g], 1.0) / max(saved[mirrored[g]], 1.0)
        omega = np.array([0.0, (other.omega[1] - other.omega[0]) * ratio])
        groups.append(Group(group.names, omega, group.costs, group.low))
    return Problem(groups, [], problem.fixed)


# -- per-layer sensitivity against measured drops ----------------------------------------------------
def single_layer_drops(task: Task, analysis, low: int, feeds: list, reference: Outputs) -> dict[str, float]:
    """Metric drop on `feeds` with only one weight at the `low` candidate, for every weight. Each run
    recomputes only the nodes downstream of the changed weight, from float activations kept per feed."""
    graph = analysis.graph
    names = list(analysis.points)
    outputs: dict[str, Outputs] = {n: [] for n in names}
    first = {n: min(i for i, node in enumerate(graph.nodes) if n in node.inputs) for n in names}
    constants = {n: torch.from_numpy(np.array(a)) for n, a in graph.constants.items()}
    from bitsmith.formats import fake_quant

    quantized = {n: torch.from_numpy(fake_quant(analysis.weight_at(n, low), analysis.specs[n][low])) for n in names}
    for feed in feeds:
        env = {n: torch.from_numpy(np.array(feed[n])) for n in graph.inputs}
        with torch.no_grad():
            for node in graph.nodes:
                env.update(zip(node.outputs, run_node(node, [env.get(i, constants.get(i)) if i else None
                                                             for i in node.inputs])))
            for name in names:
                changed = {name: quantized[name]}
                for node in graph.nodes[first[name]:]:
                    if any(i in changed for i in node.inputs):
                        args = [changed.get(i, env.get(i, constants.get(i))) if i else None for i in node.inputs]
                        changed.update(zip(node.outputs, run_node(node, args)))
                outputs[name].append({o: changed.get(o, env[o]).numpy() for o in graph.outputs})
    return {name: metrics(task, feeds, reference, outputs[name])["drop"] for name in names}


def format_selection(analysis) -> dict:
    """Which format of each width has the least Omega (equivalently the least error), per weight."""
    labels = [label(c) for c in analysis.candidates]
    rows = []
    for name in analysis.points:
        weight = analysis.graph.constants[name].reshape(-1)
        errors = dict(zip(labels, analysis.errors[name]))
        best8 = min((l for l in labels if l in ("int8", "fp8_e4m3", "fp8_e5m2")), key=errors.get)
        best4 = min((l for l in labels if l in ("int4", "fp4_e2m1", "mxfp4/b32", "nvfp4/b16")), key=errors.get)
        rows.append({"name": name, "kurtosis": float(kurtosis(weight)), "best_8bit": best8, "best_4bit": best4,
                     "log_error_ratio_int8_over_e4m3": float(np.log(errors["int8"] / errors["fp8_e4m3"]))})
    fp8 = [r["kurtosis"] for r in rows if r["best_8bit"] != "int8"]
    int8 = [r["kurtosis"] for r in rows if r["best_8bit"] == "int8"]
    rho = spearmanr([r["kurtosis"] for r in rows], [r["log_error_ratio_int8_over_e4m3"] for r in rows])[0]
    return {"layers": rows,
            "best_8bit_counts": {k: sum(r["best_8bit"] == k for r in rows) for k in ("int8", "fp8_e4m3", "fp8_e5m2")},
            "best_4bit_counts": {k: sum(r["best_4bit"] == k for r in rows)
                                 for k in ("int4", "fp4_e2m1", "mxfp4/b32", "nvfp4/b16")},
            "median_kurtosis_where_fp8_wins": float(np.median(fp8)) if fp8 else None,
            "median_kurtosis_where_int8_wins": float(np.median(int8)) if int8 else None,
            "spearman_kurtosis_vs_int8_fp8_error_ratio": float(rho)}


# -- driver ------------------------------------------------------------------------------------------
class Evaluator:
    """Builds and measures configurations of one analysis: `choice` holds one candidate index per group."""

    def __init__(self, task: Task, analysis, groups, problem_all: Problem, feeds: list, reference: Outputs,
                 calibration: list) -> None:
        self.task, self.analysis, self.groups, self.problem_all = task, analysis, groups, problem_all
        self.feeds, self.reference, self.calibration = feeds, reference, calibration
        self.labels = [label(c) for c in analysis.candidates]

    def graph(self, choice: list[int], bias_correction: bool = False):
        """The configuration; with `bias_correction`, corrected against the weights before GPTQ."""
        q = quantized_graph(self.analysis, self.groups, choice)
        if not bias_correction:
            return q
        original = {n: self.analysis.graph.constants[n] for n in self.analysis.points}
        return BiasCorrection(self.calibration, float_weights=original).run(q)

    def __call__(self, choice: list[int], bias_correction: bool = False, graph=None) -> dict:
        q = graph if graph is not None else self.graph(choice, bias_correction)
        size = self.problem_all.total(choice, "size_bytes")
        params = sum(self.analysis.graph.values[n].size for names in self.groups for n in names)
        return {**metrics(self.task, self.feeds, self.reference, run_all(q, self.feeds)),
                "size_bytes": size, "average_weight_bits": average_bits(self.analysis, self.groups, choice),
                "storage_bits_per_weight": 8 * (size - self.problem_all.fixed.get("size_bytes", 0.0)) / params,
                "formats": _format_counts(choice, self.labels)}


def compare(evaluate: Evaluator, problem_all: Problem, pair: tuple[str, str], log: Callable[[str], None],
            extra_sets: dict[str, list[str]] | None = None,
            oracle_drops: tuple[dict[str, float], dict[str, float]] | None = None,
            bias_correction: bool = False, baselines: bool = True) -> dict:
    """The equal-size comparisons on the (8-bit, 4-bit) candidate pair: uniform, the Hessian ILP with and
    without interactions, random (mean of RANDOM_SEEDS), the reversed ranking (these three only with
    `baselines`), the ILP over every candidate, over `extra_sets` (name -> candidate labels), and the
    ILP over measured single-layer drops (`oracle_drops`: at 8 and at 4 bits); with `bias_correction`,
    the uniform INT8 and Hessian ILP rows again with bias correction on every quantized layer."""
    labels = evaluate.labels
    keep = [labels.index(pair[0]), labels.index(pair[1])]
    problem = sub_problem(problem_all, keep)
    n = len(problem.groups)

    def full(choice: list[int]) -> list[int]:
        return [keep[c] for c in choice]

    def subset(names: list[str]) -> tuple[Problem, list[int]]:
        indices = [labels.index(l) for l in names]
        return sub_problem(problem_all, indices), indices

    comparisons = {"pair": list(pair), "uniform_int8": evaluate(full([0] * n)),
                   "uniform_int4": evaluate(full([1] * n))}
    if bias_correction:
        comparisons["uniform_int8_bias_correction"] = evaluate(full([0] * n), bias_correction=True)
    for bits in AVERAGE_BITS:
        budget = equal_size_budget(problem, bits)
        row: dict = {"size_budget_bytes": budget}
        row["hessian_ilp"] = evaluate(full(solve(problem, {"size_bytes": budget}).choice))
        if baselines:
            row["hessian_ilp_no_interactions"] = evaluate(
                full(solve(Problem(problem.groups, [], problem.fixed), {"size_bytes": budget}).choice))
        row["hessian_ilp_all_formats"] = evaluate(solve(problem_all, {"size_bytes": budget}).choice)
        for name, names in (extra_sets or {}).items():
            sub, indices = subset(names)
            row[name] = evaluate([indices[c] for c in solve(sub, {"size_bytes": budget}).choice])
        if baselines:
            randoms = [evaluate(full(random_choice(problem, budget, seed))) for seed in range(RANDOM_SEEDS)]
            row["random"] = {k: float(np.mean([r[k] for r in randoms])) for k in randoms[0] if k != "formats"}
            row["random"]["per_seed_drop"] = [r["drop"] for r in randoms]
            row["reverse_hessian"] = evaluate(full(solve(reversed_problem(problem), {"size_bytes": budget}).choice))
        if oracle_drops is not None:
            row["measured_singles_ilp"] = oracle_row(evaluate, problem, keep, oracle_drops, budget)
        if bias_correction:
            row["hessian_ilp_bias_correction"] = evaluate(full(solve(problem, {"size_bytes": budget}).choice),
                                                          bias_correction=True)
        comparisons[f"avg_{bits}_bits"] = row
        log(f"{evaluate.task.model} {pair}: {bits} bits: " + ", ".join(
            f"{k}={v['drop']:.4g}" for k, v in row.items() if isinstance(v, dict)))
    return comparisons


def oracle_row(evaluate: Evaluator, problem: Problem, keep: list[int],
               drops: tuple[dict[str, float], dict[str, float]], budget: float) -> dict:
    """The assignment an exact additive model would pick: the ILP with each layer's measured drop alone
    at 8 and at 4 bits as its loss. Its objective, the least sum of measured single-layer drops at this
    size, is what any additive sensitivity estimate can reach at best; `sum_of_measured_4bit_drops`
    is the part of it from the layers left at 4 bits (a bound that needs no 8-bit measurement)."""
    groups = [Group(g.names, np.array([2.0 * sum(d[n] for n in g.names) for d in drops]), g.costs, g.low)
              for g in problem.groups]
    solution = solve(Problem(groups, [], problem.fixed), {"size_bytes": budget})
    result = evaluate([keep[c] for c in solution.choice])
    result["sum_of_measured_drops"] = solution.predicted_loss
    result["sum_of_measured_4bit_drops"] = sum(0.5 * g.omega[1] for g, c in zip(groups, solution.choice) if c == 1)
    only4 = [Group(g.names, np.array([0.0, g.omega[1]]), g.costs, g.low) for g in groups]
    result["least_sum_of_measured_4bit_drops"] = solve(Problem(only4, [], problem.fixed),
                                                       {"size_bytes": budget}).predicted_loss
    return result


def run_task(task: Task, cache: Path, log: Callable[[str], None]) -> dict:
    graph, sens_feeds, select_feeds, eval_feeds = load_model(task)
    target = targets.load(TARGET)
    fp32_eval = [Simulator(graph, quantized=False).run(f) for f in eval_feeds]
    settings = HutchinsonSettings(max_probes=task.max_probes, min_probes=task.max_probes, tolerance=0.2,
                                  sample_mask=task.sample_mask)
    load_before = os.getloadavg()
    analysis = analyse_precision(graph, sens_feeds, target, settings=settings, cache_dir=cache)
    load_after = os.getloadavg()
    log(f"{task.model}: analysis {analysis.seconds}")
    problem_all, groups = build_problem(analysis, target)
    labels = [label(c) for c in analysis.candidates]
    int4 = labels.index("int4")
    evaluate = Evaluator(task, analysis, groups, problem_all, eval_feeds, fp32_eval, sens_feeds)

    # 1. per-layer Omega against measured single-layer drops
    start = time.perf_counter()
    subset = task.single_layer_batches
    drops = single_layer_drops(task, analysis, int4, eval_feeds[:subset], fp32_eval[:subset])
    omega4 = {name: float(analysis.errors[name][int4] * max(analysis.sensitivity.weights[name].average_trace, 0))
              for name in analysis.points}
    names = list(analysis.points)
    rho = float(spearmanr([omega4[n] for n in names], [drops[n] for n in names])[0])
    measured_singles = analysis.interactions.single if analysis.interactions else {}
    rho_calib = float(spearmanr([measured_singles[n] for n in names], [drops[n] for n in names])[0]) \
        if measured_singles else None
    rho_unmasked = None
    if task.sample_mask:  # the same traces with every position of the output counted
        plain = hessian_traces(analysis.graph, sens_feeds, settings=replace(settings, sample_mask=None), cache_dir=cache)
        rho_unmasked = float(spearmanr([analysis.errors[n][int4] * max(plain.weights[n].average_trace, 0)
                                        for n in names], [drops[n] for n in names])[0])
    log(f"{task.model}: spearman {rho:.3f} (unmasked loss {rho_unmasked}) ({time.perf_counter() - start:.0f}s)")

    # 2. equal size comparisons, round to nearest (INT4 / INT8 per channel)
    t0 = time.perf_counter()
    solve(sub_problem(problem_all, [labels.index("int8"), int4]),
          {"size_bytes": equal_size_budget(sub_problem(problem_all, [labels.index("int8"), int4]), 5)})
    ilp_seconds = time.perf_counter() - t0
    comparisons = compare(evaluate, problem_all, ("int8", "int4"), log)

    # 3. the same with GPTQ on every layer at 4 bits and per-group INT4
    gptq_result = gptq_comparisons(task, graph, sens_feeds, sens_feeds + select_feeds, target, settings, cache,
                                   analysis, evaluate, log)

    # 4. accuracy budget: bisection on calibration data, reported on evaluation data
    eval_fn = None
    if task.model == "minilm_l6":
        fp32_select = [Simulator(graph, quantized=False).run(f) for f in select_feeds]

        def eval_fn(q):  # per-sample mean-pooled embedding cosine vs FP32 on the selection feeds
            return sample_cosines(select_feeds, fp32_select, run_all(q, select_feeds))

    start = time.perf_counter()
    plan = plan_precision(graph, sens_feeds, target, Constraints(max_metric_drop=DROP_BUDGET), eval_fn=eval_fn,
                          settings=settings, eval_feeds=select_feeds, cache_dir=cache, drop_confidence=DROP_CONFIDENCE)
    budget_seconds = time.perf_counter() - start
    q = bitsmith.quantize(graph, plan.recipe, sens_feeds)
    measured = metrics(task, eval_feeds, fp32_eval, run_all(q, eval_feeds))
    reference_metric = 1.0
    chosen_metric = measured["fidelity"] if task.model == "mobilenet_v2" else measured["cosine"]
    budget_row = {
        "max_relative_drop": DROP_BUDGET,
        "drop_confidence": DROP_CONFIDENCE,
        "selection_metric": "label-free fidelity (mean cosine of the logits with FP32)" if eval_fn is None
        else "mean-pooled embedding cosine with FP32 (eval_fn)",
        "selection_samples": task.batch * task.select_batches,
        "eval_relative_drop": (reference_metric - chosen_metric) / reference_metric,
        "eval_metrics": measured,
        "size_bytes": plan.totals["size_bytes"],
        "size_relative_to_int8": plan.totals["size_bytes"] / comparisons["uniform_int8"]["size_bytes"],
        "formats": _format_counts_labels(plan),
        "bisection": plan.bisection,
        "seconds": round(budget_seconds, 1),
    }
    if task.model == "mobilenet_v2":
        int8_eval = comparisons["uniform_int8"]
        budget_row["uniform_int8_eval_relative_drop"] = 1.0 - int8_eval["fidelity"]
    else:
        budget_row["uniform_int8_eval_relative_drop"] = comparisons["uniform_int8"]["drop"]
    log(f"{task.model}: 1% budget: {budget_row['eval_relative_drop']:.4f}, size x{budget_row['size_relative_to_int8']:.3f}")

    return {
        "batch": task.batch, "seq_len": task.seq_len,
        "calib_samples_hessian": task.batch * task.sens_batches,
        "calib_samples_interactions": task.batch,
        "calib_samples_selection": task.batch * task.select_batches,
        "eval_samples": task.batch * task.eval_batches, "splits_disjoint": True,
        "eval_samples_single_layer": task.batch * task.single_layer_batches,
        "drop_metric": "KL(FP32 || quantized) of the softmax" if task.model == "mobilenet_v2"
        else "1 - mean cosine of mean-pooled embeddings with FP32",
        "sensitivity_sample_mask": task.sample_mask,
        "sample_mask_fraction": float(np.mean(np.concatenate([f[task.sample_mask].reshape(-1) for f in sens_feeds])))
        if task.sample_mask else None,
        "weights": len(analysis.points), "candidates": labels,
        "sensitivity": {k: v for k, v in analysis.sensitivity.to_json().items() if k not in ("weights", "activations")},
        "sensitivity_seconds": analysis.sensitivity.seconds,
        "sensitivity_cpu_seconds": analysis.sensitivity.cpu_seconds,
        "torch_threads": torch.get_num_threads(),
        "interactions_seconds": analysis.seconds.get("interactions_seconds"),
        "omega_seconds": analysis.seconds.get("omega_seconds"),
        "ilp_seconds": round(ilp_seconds, 4),
        "loadavg_during_analysis": [round(x, 2) for x in (*load_before, *load_after)],
        "spearman_sensitivity": rho,
        "spearman_sensitivity_unmasked_loss": rho_unmasked,
        "spearman_measured_calibration_single_losses": rho_calib,
        "layers": [{"name": n, "node": analysis.points[n].node, "omega_int4": omega4[n],
                    "eval_drop_int4_alone": drops[n],
                    "average_trace": analysis.sensitivity.weights[n].average_trace,
                    "params": int(analysis.graph.values[n].size),
                    **gptq_result["layers"][n]} for n in names],
        "comparisons": comparisons,
        "gptq": {k: v for k, v in gptq_result.items() if k != "layers"},
        "accuracy_budget": budget_row,
        "format_selection": format_selection(analysis),
        "pareto": plan.pareto,
    }


def gptq_comparisons(task: Task, graph, sens_feeds: list, calib_feeds: list, target, settings: HutchinsonSettings,
                     cache: Path, rtn, rtn_evaluate: Evaluator, log: Callable[[str], None]) -> dict:
    """Section 3, GPTQ in every configuration alike, in two protocols:
    - "gptq": GPTQ on the layers at <= 4 bits, 8-bit layers round to nearest as in section 2;
    - "gptq_every_layer": GPTQ on every quantized layer (uniform INT8 included).
    The ILP ranks on the K-FAC output error of GPTQ's solutions, with interactions measured at the pair's
    4-bit candidate, and per-group INT4 among the candidates; for the CNN, bias correction after GPTQ
    as further rows. GPTQ and bias correction see every calibration feed (`calib_feeds`), GPTQ only
    the positions the task's sample mask marks."""
    start = time.perf_counter()
    gptq = GPTQ(calib_feeds, max_bits=4, sample_mask=task.sample_mask)
    analysis = analyse_precision(graph, sens_feeds, target, settings=settings, cache_dir=cache, gptq=gptq,
                                 error_model="output")
    seconds = round(time.perf_counter() - start, 1)
    log(f"{task.model}: GPTQ analysis {analysis.seconds} ({seconds} s)")
    problem_all, groups = build_problem(analysis, target)
    labels = [label(c) for c in analysis.candidates]
    evaluate = Evaluator(task, analysis, groups, problem_all, rtn_evaluate.feeds, rtn_evaluate.reference, calib_feeds)
    low, int8 = labels.index(GPTQ_PAIR[1]), labels.index("int8")
    names = list(analysis.points)
    subset = (rtn_evaluate.feeds[:task.single_layer_batches], rtn_evaluate.reference[:task.single_layer_batches])
    drops4 = single_layer_drops(task, analysis, low, *subset)
    drops8 = single_layer_drops(task, analysis, int8, *subset)
    omega = {n: float(analysis.errors[n][low] * max(analysis.sensitivity.weights[n].average_trace, 0)) for n in names}
    rho = float(spearmanr([omega[n] for n in names], [drops4[n] for n in names])[0])
    cnn = task.model == "mobilenet_v2"
    comparisons = compare(evaluate, problem_all, GPTQ_PAIR, log, extra_sets=EXTRA_SETS,
                          oracle_drops=(drops8, drops4), bias_correction=cnn)
    log(f"{task.model}: GPTQ spearman {rho:.3f}")

    start = time.perf_counter()
    every = every_layer_analysis(analysis, sens_feeds, calib_feeds, task.sample_mask, settings.sample_mask)
    problem_every, _ = build_problem(every, target)
    evaluate_every = Evaluator(task, every, groups, problem_every, rtn_evaluate.feeds, rtn_evaluate.reference,
                               calib_feeds)
    every_comparisons = compare(evaluate_every, problem_every, GPTQ_PAIR, log, extra_sets=EXTRA_SETS,
                                bias_correction=cnn, baselines=False)
    every_seconds = round(time.perf_counter() - start, 1)
    result = {"algorithm": f"GPTQ (passes/gptq.py, {len(calib_feeds) * task.batch} calibration samples"
                           + (f", positions marked by {task.sample_mask}" if task.sample_mask else "")
                           + ") on the layers at <= 4 bits of every configuration; 8-bit layers round to nearest "
                           "with MSE clipping" + (f"; bias correction on {len(calib_feeds) * task.batch} samples"
                                                  if cnn else ""),
              "error_model": analysis.error_model, "pair": list(GPTQ_PAIR), "extra_sets": EXTRA_SETS,
              "analysis_seconds": seconds, "gptq_seconds": analysis.seconds.get("gptq_seconds"),
              "spearman_sensitivity": rho, "comparisons": comparisons,
              "every_layer": {"algorithm": "GPTQ on every quantized layer of every configuration, 8-bit ones too",
                              "seconds": every_seconds, "comparisons": every_comparisons}}
    result["layers"] = {n: {f"omega_{GPTQ_PAIR[1]}_gptq": omega[n], f"eval_drop_{GPTQ_PAIR[1]}_gptq_alone": drops4[n],
                            "eval_drop_int8_alone": drops8[n],
                            f"weight_error_{GPTQ_PAIR[1]}_gptq": float(np.sum(
                                (analysis.weight_at(n, low) - analysis.graph.constants[n]) ** 2)),
                            f"weight_error_{GPTQ_PAIR[1]}_rtn": float(
                                rtn.errors[n][rtn_evaluate.labels.index(GPTQ_PAIR[1])])}
                        for n in names}
    return result


def every_layer_analysis(analysis, sens_feeds: list, calib_feeds: list, gptq_mask: str | None, loss_mask: str | None):
    """`analysis` (GPTQ on <= 4 bits) extended with GPTQ's solutions for its 8-bit candidates too; its
    interactions, measured at a 4-bit candidate, stay valid."""
    wider = {n: [s if s is not None and s.bits > 4 else None for s in specs] for n, specs in analysis.specs.items()}
    solutions = GPTQ(calib_feeds, sample_mask=gptq_mask).solve(analysis.graph, wider)
    rewritten = {n: [new if new is not None else old for new, old in zip(solutions[n], analysis.rewritten[n])]
                 for n in analysis.rewritten}
    every = replace(analysis, rewritten=rewritten)
    every.errors = quantization_errors(every, sens_feeds, loss_mask)
    return every


def _size_relative_to_int8(model: str, result: dict) -> None:
    """The accuracy-budget plan's size against INT8 counting only the quantizable weights (MiniLM's float
    word embeddings are most of its bytes and the same in every configuration)."""
    fixed = float_bytes(model)
    budget = result["accuracy_budget"]
    budget["float_parameter_bytes"] = fixed
    budget["weight_size_relative_to_int8"] = ((budget["size_bytes"] - fixed)
                                              / (result["comparisons"]["uniform_int8"]["size_bytes"] - fixed))


def average_bits(analysis, groups, choice) -> float:
    from bitsmith.passes.precision_costs import bits_of

    total = sum(bits_of(analysis.candidates[k]) * analysis.graph.values[n].size for names, k in zip(groups, choice)
                for n in names)
    return total / sum(analysis.graph.values[n].size for names in groups for n in names)


def _format_counts(choice: list[int], labels: list[str]) -> dict[str, int]:
    return {l: choice.count(i) for i, l in enumerate(labels) if choice.count(i)}


def _format_counts_labels(plan) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in plan.choices.values():
        counts[c["label"]] = counts.get(c["label"], 0) + 1
    return counts


# -- output ------------------------------------------------------------------------------------------
def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(doc["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2))
    for ax, model in zip(np.atleast_1d(axes), models):
        r = doc["models"][model]
        front = r["pareto"]
        ax.plot([p["size_bytes"] / 1e6 for p in front], [p["predicted_loss"] for p in front], "o-",
                label="ILP Pareto front (predicted)")
        ax.set_xlabel("weight + parameter size (MB)")
        ax.set_ylabel("predicted loss increase")
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_title(f"{model} on {doc['target']}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(doc: dict) -> str:
    lines = ["# Hessian-guided mixed precision", "",
             "Written by `scripts/mixed_precision.py`. Weight-only mixed precision: activations stay in float, "
             "so every difference comes from the weight formats. Calibration and evaluation splits are "
             f"disjoint. Target `{doc['target']}`; CPU: {doc['cpu']}.", ""]
    for model, r in doc["models"].items():
        comp = r["comparisons"]
        lines += [f"## {model}", "",
                  f"{r['weights']} weights; Hessian on {r['calib_samples_hessian']} calibration samples "
                  f"({r['sensitivity']['probes']} probes, {r['sensitivity']['estimator']} estimator, loss "
                  f"{r['sensitivity']['loss']}), interactions on {r['calib_samples_interactions']}, budget selection "
                  f"on {r['calib_samples_selection']}; metrics on {r['eval_samples']} evaluation samples. "
                  f"Drop metric: {r['drop_metric']}.", "",
                  f"- spearman_sensitivity (Omega at INT4 vs measured drop of that layer alone at INT4): "
                  f"**{r['spearman_sensitivity']:.3f}** (goal >= 0.7)" + _unmasked_note(r),
                  f"- sensitivity_seconds: **{r['sensitivity_seconds']:.1f}** wall, "
                  f"{r.get('sensitivity_cpu_seconds', float('nan')):.1f} CPU seconds over {r.get('torch_threads', 2)} "
                  f"threads (goal <= 60 s on 2 cores), interactions {r['interactions_seconds']:.1f} s, "
                  f"Omega tables {r['omega_seconds']:.1f} s, ilp_seconds: **{r['ilp_seconds']:.3f}** "
                  f"(load average {r['loadavg_during_analysis']})", "",
                  "| configuration | avg bits | size (MB) | drop | " + ("top-1 agree |" if model == "mobilenet_v2" else ""),
                  "|---|---|---|---|" + ("---|" if model == "mobilenet_v2" else "")]

        def row(name: str, m: dict) -> str:
            extra = f" {m['top1_agree']:.4f} |" if "top1_agree" in m else ""
            return f"| {name} | {m['average_weight_bits']:.2f} | {m['size_bytes'] / 1e6:.3f} | {m['drop']:.5f} |{extra}"

        lines.append(row("uniform_int8", comp["uniform_int8"]))
        lines.append(row("uniform_int4", comp["uniform_int4"]))
        for bits in AVERAGE_BITS:
            c = comp[f"avg_{bits}_bits"]
            for name in ("hessian_ilp", "hessian_ilp_no_interactions", "random", "reverse_hessian",
                         "hessian_ilp_all_formats"):
                lines.append(row(f"{name} @ {bits} bits", c[name]))
        lines += ["", "At 5 bits, hessian_ilp's drop is "
                  f"{comp['avg_5_bits']['hessian_ilp']['drop'] / comp['uniform_int8']['drop']:.2f}x uniform INT8's "
                  "(goal <= 1.5x). hessian_ilp_all_formats chose "
                  f"{comp['avg_5_bits']['hessian_ilp_all_formats']['formats']} at 5 bits.", ""]
        if "gptq" in r:
            lines += render_gptq(model, r)
        b = r["accuracy_budget"]
        lines += [f"Accuracy budget {b['max_relative_drop']:.0%} ({b['selection_metric']}, chosen on "
                  f"{b['selection_samples']} calibration samples by the upper {b.get('drop_confidence')} confidence "
                  "bound of the mean drop): relative drop on evaluation data "
                  f"**{b['eval_relative_drop']:.4%}** (uniform INT8: {b['uniform_int8_eval_relative_drop']:.4%}), size "
                  f"**{b['size_relative_to_int8']:.3f}x INT8** (quantizable weights alone: "
                  f"{b.get('weight_size_relative_to_int8', float('nan')):.3f}x; float parameters "
                  f"{b.get('float_parameter_bytes', float('nan')) / 1e6:.2f} MB in every configuration), formats {b['formats']}.",
                  "", "Bisection steps (size, relative drop on the selection data, its upper confidence bound): "
                  + ", ".join(f"{s['size_bytes'] / 1e6:.2f} MB: {s['relative_drop']:.4f} ({s.get('drop_bound', 0):.4f})"
                              for s in b["bisection"]) + ".", ""]
        f = r["format_selection"]
        lines += [f"Format selection by Omega: best 8-bit format per weight {f['best_8bit_counts']}, best 4-bit "
                  f"{f['best_4bit_counts']}; median kurtosis where FP8 wins {f['median_kurtosis_where_fp8_wins']}, "
                  f"where INT8 wins {f['median_kurtosis_where_int8_wins']}; spearman(kurtosis, log(err INT8 / err "
                  f"E4M3)) = {f['spearman_kurtosis_vs_int8_fp8_error_ratio']:.3f}.", ""]
    lines += ["![Pareto fronts](mixed_precision.png)", ""]
    return "\n".join(lines)


def _unmasked_note(r: dict) -> str:
    if r.get("spearman_sensitivity_unmasked_loss") is None:
        return ""
    return (f"; the Hessian's MSE counts only the positions `{r['sensitivity_sample_mask']}` marks (mean pooling "
            f"ignores padding, {1 - r['sample_mask_fraction']:.0%} of the positions here); with every position counted it is "
            f"{r['spearman_sensitivity_unmasked_loss']:.3f}")


def render_gptq(model: str, r: dict) -> list[str]:
    """Section 3 of run_task: GPTQ in every configuration (on the 4-bit layers; on every layer), per-group
    INT4, the ratios to uniform INT8 and the additive bound from measured single-layer drops."""
    g = r["gptq"]
    comp, every = g["comparisons"], g["every_layer"]["comparisons"]
    low = g["pair"][1]
    top1 = model == "mobilenet_v2"
    header = ["| configuration | avg bits | stored bits / weight | size (MB) | drop | " + ("top-1 agree |" if top1 else ""),
              "|---|---|---|---|---|" + ("---|" if top1 else "")]

    def row(name: str, m: dict) -> str:  # with the stored bits (scales included)
        extra = f" {m['top1_agree']:.4f} |" if "top1_agree" in m else ""
        return (f"| {name} | {m['average_weight_bits']:.2f} | {m['storage_bits_per_weight']:.2f} | "
                f"{m['size_bytes'] / 1e6:.3f} | {m['drop']:.5f} |{extra}")

    def table(c: dict) -> list[str]:
        lines = header + [row(n, c[n]) for n in ("uniform_int8", "uniform_int8_bias_correction", "uniform_int4")
                          if n in c]
        for bits in AVERAGE_BITS:
            at = c[f"avg_{bits}_bits"]
            lines += [row(f"{n} @ {bits} bits", at[n]) for n in (
                "hessian_ilp", "hessian_ilp_no_interactions", "random", "reverse_hessian", *EXTRA_SETS,
                "hessian_ilp_all_formats", "measured_singles_ilp", "hessian_ilp_bias_correction") if n in at]
        return lines

    def ratios(c: dict) -> str:
        five, int8 = c["avg_5_bits"], c["uniform_int8"]["drop"]
        best = min(("hessian_ilp", *EXTRA_SETS, "hessian_ilp_all_formats"), key=lambda k: five[k]["drop"])
        text = (f"at 5 bits hessian_ilp's drop is **{five['hessian_ilp']['drop'] / int8:.2f}x** uniform INT8's "
                f"({int8:.5f}; goal <= 1.5x); the best Hessian ILP, {best} ({five[best]['formats']}), "
                f"**{five[best]['drop'] / int8:.2f}x**")
        if "uniform_int8_bias_correction" in c:
            bc = c["uniform_int8_bias_correction"]["drop"]
            text += (f"; with bias correction on every layer of both, hessian_ilp is "
                     f"**{five['hessian_ilp_bias_correction']['drop'] / bc:.2f}x** uniform INT8's ({bc:.5f})")
        return text + "."

    oracle = comp["avg_5_bits"]["measured_singles_ilp"]
    int8 = comp["uniform_int8"]["drop"]
    return ["### GPTQ in every configuration, per-group INT4", "",
            f"{g['algorithm']}. Every configuration within the size of section 2 at the same average bits (INT4 "
            "per channel plus (bits - 4)/4 of the way to INT8, scales included): per-group INT4 pays its scales "
            f"from that budget. Baselines on the pair {g['pair']}; "
            + "; ".join(f"{k} chooses among {v} per layer" for k, v in g["extra_sets"].items())
            + f"; hessian_ilp_all_formats among every candidate {r['candidates']}. The ILP "
            f"ranks GPTQ's solutions under the `{g['error_model']}` error model; interactions measured at {low}. "
            f"Analysis {g['analysis_seconds']:.0f} s, of which GPTQ solutions {g['gptq_seconds']:.0f} s. spearman "
            f"(Omega at {low} with GPTQ vs measured drop of that layer alone): **{g['spearman_sensitivity']:.3f}**.",
            "", *table(comp), "", "GPTQ on the 4-bit layers only: " + ratios(comp), "",
            f"{g['every_layer']['algorithm']} ({g['every_layer']['seconds']:.0f} s):", "", *table(every), "",
            "GPTQ on every layer: " + ratios(every), "",
            f"Measured single-layer drops (each layer alone at {low} with GPTQ, or at INT8 round to nearest, on "
            f"{r['eval_samples_single_layer']} evaluation samples): at 5 bits, the least sum over an assignment "
            f"(each layer's drop at its format) is **{oracle['sum_of_measured_drops']:.5f}** = "
            f"{oracle['sum_of_measured_drops'] / int8:.2f}x uniform INT8's drop; the least sum of the 4-bit drops "
            f"of the layers left at 4 bits alone is {oracle['least_sum_of_measured_4bit_drops']:.5f} = "
            f"{oracle['least_sum_of_measured_4bit_drops'] / int8:.2f}x (1.5x is {1.5 * int8:.5f}). "
            f"measured_singles_ilp is that assignment: it measures {oracle['drop']:.5f}.", ""]


def float_bytes(model: str) -> float:
    """Bytes of the float parameters no weight format changes (biases, norms, embeddings), from the graph."""
    task = TASKS[model]
    shapes = zoo.input_shapes(model, task.batch, **({"seq_len": task.seq_len} if task.seq_len else {}))
    graph = FoldBatchNorm()(import_onnx(zoo.onnx_path(model), shapes))
    return fixed_bytes(graph, set(weight_points(graph)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=list(TASKS))
    parser.add_argument("--eval-batches", type=int, help="fewer evaluation batches (a quick look, not evidence)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write (default docs/results)")
    parser.add_argument("--cache", type=Path, help="keep the Hessian / interaction caches here (default: afresh)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    doc = {"bitsmith_version": bitsmith.__version__, "target": TARGET, "cpu": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "models": {}}
    results = args.results
    path = results / "mixed_precision.json"
    if path.exists() and args.models != list(TASKS):
        doc["models"] = json.loads(path.read_text())["models"]
    results.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        task = TASKS[model] if args.eval_batches is None else replace(TASKS[model], eval_batches=args.eval_batches)
        with tempfile.TemporaryDirectory(prefix="bitsmith-mp-") as cache:  # measured afresh, reused within the run
            doc["models"][model] = run_task(task, args.cache or Path(cache), lambda m: print(m, flush=True))
        for name, result in doc["models"].items():
            _size_relative_to_int8(name, result)
        path.write_text(json.dumps(doc, indent=1))
        (results / "mixed_precision.md").write_text(render(doc))
        plot(doc, results / "mixed_precision.png")
    print(render(doc))


if __name__ == "__main__":
    main()
