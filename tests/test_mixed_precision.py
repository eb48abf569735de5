"""Hessian-guided mixed precision: the Hutchinson traces against exact Hessians (masked MSE too),
determinism and the cache, the ILP's budgets, ties and infeasibility errors, the accuracy-budget
bisection, plans that flow through the normal quantize driver, per-group INT4 candidates, GPTQ on the
low-bit layers and the output error model. Small graphs and single real layers here; full models under
`-m slow`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from onnx import helper

from bitsmith import zoo
from bitsmith.constraints import Constraints
from bitsmith.errors import BudgetError, UsageError
from bitsmith.formats import fake_quant, quantization_error
from bitsmith.frontends.onnx import import_onnx
from bitsmith.interpreter import execute
from bitsmith.measure import classification_fidelity
from bitsmith.ir import Graph
from bitsmith.passes.assign_precision import Group, Problem, pareto_front, solve
from bitsmith.passes.bias_correction import BiasCorrection
from bitsmith.passes.fold_batchnorm import FoldBatchNorm
from bitsmith.passes.gptq import gptq_weight, layer_hessians
from bitsmith.passes.interlayer import neighbour_pairs
from bitsmith.passes.linear_layers import linear_layers
from bitsmith.passes.precision_costs import candidates_for, fixed_bytes, label, weight_bytes
from bitsmith.passes.quant_points import weight_points
from bitsmith.passes.quantize_weights import QuantizeWeights
from bitsmith.passes.sensitivity import HutchinsonSettings, builtin_loss, hessian_traces
from bitsmith.precision import (analyse_precision, build_problem, output_error, plan_precision, quantized_graph,
                                recipe_gptq)
from bitsmith.quantize import quantize
from bitsmith.recipes import LayerFormat, QuantRecipe
from bitsmith.simulate import Simulator
from bitsmith import targets

from onnx_cases import init, model, out, tensor_input

RNG = np.random.default_rng(7)
BATCH = 16


def mlp(shared: bool = False) -> Graph:
    """x[16, 6] -> MatMul w1 -> Tanh -> MatMul w2 -> Tanh -> MatMul w3 -> logits[16, 5]. With `shared`,
    the middle layer reuses w1's constant (a square 6x6 weight read by two nodes)."""
    w1 = RNG.standard_normal((6, 6)).astype(np.float32) * 0.6
    w2 = RNG.standard_normal((6, 6)).astype(np.float32) * 0.6
    w3 = RNG.standard_normal((6, 5)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Tanh", ["a"], ["ta"]),
             helper.make_node("MatMul", ["ta", "w1" if shared else "w2"], ["b"]), helper.make_node("Tanh", ["b"], ["tb"]),
             helper.make_node("MatMul", ["tb", "w3"], ["y"])]
    inits = [init("w1", w1), init("w3", w3)] + ([] if shared else [init("w2", w2)])
    return import_onnx(model(nodes, [tensor_input("x", [BATCH, 6])], [out()], inits))


def feeds(count: int = 2) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal((BATCH, 6)).astype(np.float32)} for _ in range(count)]


def exact_traces(graph: Graph, feed: dict[str, np.ndarray], kind: str, labels: np.ndarray | None = None) -> dict:
    """Tr of each weight's diagonal Hessian block, from torch's dense Hessian of the same loss."""
    names = sorted(weight_points(graph))
    sim = Simulator(graph, quantized=False)
    x = torch.from_numpy(feed["x"])
    with torch.no_grad():
        reference = sim.forward({"x": x})
    loss = builtin_loss(kind, graph)
    extra = {"__labels__": labels} if labels is not None else {}

    def f(*weights):
        env = execute(graph, {**sim.constants, **dict(zip(names, weights)), "x": x})
        return loss({"y": env["y"]}, {"y": reference["y"]}, extra)

    weights = tuple(sim.constants[n].double().float() for n in names)
    hessian = torch.autograd.functional.hessian(f, weights)
    return {n: float(torch.diagonal(hessian[i][i].reshape(weights[i].numel(), -1)).sum()) for i, n in enumerate(names)}


# -- sensitivity ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["gauss_newton", "hvp"])
def test_hutchinson_trace_matches_the_exact_hessian_trace(estimator):
    graph, data = mlp(), feeds(1)
    exact = exact_traces(graph, data[0], "kl")
    settings = HutchinsonSettings(loss_kind="kl", estimator=estimator, tolerance=0.1, min_probes=256,
                                  max_probes=256, probes_per_batch=256, activations=False)
    found = hessian_traces(graph, data, settings=settings, cache_dir=None)
    assert found.converged and found.estimator == estimator and found.probes == 256
    for name, value in exact.items():
        trace = found.weights[name]
        assert abs(trace.trace - value) <= 4 * trace.std_error, name  # unbiased: within 4 standard errors
        assert trace.relative_error <= 0.1


def test_task_loss_trace_matches_the_exact_hessian_away_from_the_minimum():
    graph, data = mlp(), feeds(1)
    labels = [RNG.integers(0, 5, BATCH)]
    exact = exact_traces(graph, data[0], "task", labels[0])
    settings = HutchinsonSettings(tolerance=0.2, min_probes=256, max_probes=256, probes_per_batch=256,
                                  activations=False)
    found = hessian_traces(graph, data, labels, settings=settings, cache_dir=None)
    assert found.loss == "task" and found.estimator == "hvp"
    for name, value in exact.items():
        trace = found.weights[name]
        assert abs(trace.trace - value) <= 4 * trace.std_error and trace.relative_error <= 0.2, name


def test_traces_are_deterministic_and_cached_as_json(tmp_path):
    graph, data = mlp(), feeds(2)
    settings = HutchinsonSettings(min_probes=4, max_probes=8)
    first = hessian_traces(graph, data, settings=settings, cache_dir=None)
    again = hessian_traces(graph, data, settings=settings, cache_dir=None)
    other_seed = hessian_traces(graph, data, settings=HutchinsonSettings(min_probes=4, max_probes=8, seed=1),
                                cache_dir=None)
    assert {n: t.trace for n, t in first.weights.items()} == {n: t.trace for n, t in again.weights.items()}
    assert {n: t.trace for n, t in first.weights.items()} != {n: t.trace for n, t in other_seed.weights.items()}
    assert set(first.activations) == {"x", "ta", "tb"}
    stored = hessian_traces(graph, data, settings=settings, cache_dir=tmp_path)
    cached = hessian_traces(graph, data, settings=settings, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("*.json")
    assert not stored.cached and cached.cached and json.loads(cache_file.read_text())["probes"] == stored.probes
    assert {n: t.trace for n, t in cached.weights.items()} == {n: t.trace for n, t in first.weights.items()}
    assert hessian_traces(graph, feeds(2), settings=settings, cache_dir=tmp_path).cached is False  # new data


def test_gauss_newton_refuses_losses_it_does_not_equal():
    graph, data = mlp(), feeds(1)
    with pytest.raises(UsageError, match="gauss_newton"):
        hessian_traces(graph, data, [np.zeros(BATCH, np.int64)], HutchinsonSettings(estimator="gauss_newton"),
                       cache_dir=None)


# -- interactions --------------------------------------------------------------------------------------
def test_neighbours_are_weighted_layers_joined_by_weightless_ops():
    assert neighbour_pairs(mlp()) == [("w1", "w2"), ("w2", "w3")]


# -- the ILP -------------------------------------------------------------------------------------------
def two_layer_problem(interaction: float) -> Problem:
    """Two layers, candidates (8-bit, 4-bit): 4-bit costs 1 each in loss, saves 1 byte each."""
    groups = [Group((n,), np.array([0.0, 2.0]), {"size_bytes": np.array([2.0, 1.0])}, np.array([False, True]))
              for n in ("a", "b")]
    return Problem(groups, [(0, 1, interaction)], {"size_bytes": 10.0})


def test_ilp_linearizes_interactions_exactly():
    assert solve(two_layer_problem(0.0), {"size_bytes": 12.0}).predicted_loss == pytest.approx(2.0)
    # both at 4 bits: predicted 1 + 1 + interaction; a large negative one makes both-low the cheapest loss
    both_low = solve(two_layer_problem(-1.5), {"size_bytes": 13.0})  # one layer low (loss 1) or both (0.5)
    assert both_low.choice == [1, 1] and both_low.predicted_loss == pytest.approx(0.5)
    assert solve(two_layer_problem(3.0), {"size_bytes": 13.0}).choice in ([0, 1], [1, 0])


def test_infeasible_budget_names_the_smallest_feasible_one():
    with pytest.raises(BudgetError, match=r"size_mb=1e-05 is below the smallest feasible 1.2e-05 MB"):
        solve(two_layer_problem(0.0), {"size_bytes": 10.0})


def test_plan_respects_the_size_budget_and_returns_a_pareto_front(tmp_path):
    graph, data = mlp(), feeds(2)
    plan = plan_precision(graph, data, "x86-avx2", Constraints(size_mb=0.00025), cache_dir=tmp_path,
                          settings=HutchinsonSettings(min_probes=8, max_probes=16))
    assert plan.totals["size_bytes"] <= 250
    assert {row["name"] for row in plan.layers} == {"w1", "w2", "w3"}
    sizes = [p["size_bytes"] for p in plan.pareto]
    losses = [p["predicted_loss"] for p in plan.pareto]
    assert sizes == sorted(sizes) and losses == sorted(losses, reverse=True) and len(plan.pareto) >= 3
    assert min(losses) >= 0 and plan.interactions  # interactions never predict a gain over FP32
    assert plan.seconds["ilp_seconds"] < 5
    json.dumps(plan.to_json())


def test_plan_infeasible_size_states_the_smallest_feasible_size(tmp_path):
    graph, data = mlp(), feeds(2)
    points = weight_points(graph)
    candidates = [LayerFormat("int8"), LayerFormat("int4")]
    smallest = sum(min(weight_bytes(graph.values[n].shape, p, c) for c in candidates) for n, p in points.items())
    with pytest.raises(BudgetError) as error:
        plan_precision(graph, data, "x86-avx2", Constraints(size_mb=1e-6), formats=("int8", "int4"),
                       cache_dir=tmp_path, settings=HutchinsonSettings(min_probes=4, max_probes=4))
    stated = float(re.search(r"smallest feasible ([0-9.e-]+) MB", str(error.value)).group(1))
    assert stated == pytest.approx(smallest / 1e6, rel=1e-5)
    assert error.value.exit_code == 6


def test_tied_layers_get_tied_choices(tmp_path):
    shared = plan_precision(mlp(shared=True), feeds(2), "x86-avx2", Constraints(size_mb=0.0002), cache_dir=tmp_path,
                            settings=HutchinsonSettings(min_probes=4, max_probes=4))
    rows = [row for row in shared.layers if row["name"] == "w1"]
    assert len(rows) == 2 and rows[0]["chosen"] == rows[1]["chosen"]
    graph = mlp()
    tied = plan_precision(graph, feeds(2), "x86-avx2", Constraints(size_mb=0.00022), ties=[("w1", "w3")],
                          formats=("int8", "int4"), cache_dir=tmp_path,
                          settings=HutchinsonSettings(min_probes=4, max_probes=4))
    assert tied.choices["w1"] == tied.choices["w3"]


def test_plan_recipe_reproduces_the_plan_through_quantize(tmp_path):
    graph, data = mlp(), feeds(2)
    plan = plan_precision(graph, data, "x86-avx2", Constraints(size_mb=0.00024), cache_dir=tmp_path,
                          formats=("int8", "int4", "nvfp4", "fp32"),
                          settings=HutchinsonSettings(min_probes=4, max_probes=4))
    quantized = quantize(graph, plan.recipe, data)
    for name, choice in plan.choices.items():
        spec = quantized.values[name].quant
        if choice["format"] is None:
            assert spec is None
        else:
            assert (spec.format, spec.granularity) == (choice["format"], choice["granularity"])
    analysis = analyse_precision(graph, data, "x86-avx2", formats=("int8", "int4", "nvfp4", "fp32"),
                                 cache_dir=tmp_path, settings=HutchinsonSettings(min_probes=4, max_probes=4))
    for name, choice in plan.choices.items():
        k = [label(c) for c in analysis.candidates].index(choice["label"])
        expected = analysis.specs[name][k]
        assert expected is None or expected.same_as(quantized.values[name].quant)


def test_layer_formats_leave_presets_alone_and_reject_unknown_weights():
    graph, data = mlp(), feeds(1)
    mixed = QuantRecipe("mixed", weights="int8", activations=None,
                        layer_formats={"w2": ("int4", "channel", None), "w3": (None,)})
    quantized = quantize(graph, mixed, data)
    assert quantized.values["w1"].quant.format == "int8" and quantized.values["w2"].quant.format == "int4"
    assert quantized.values["w3"].quant is None
    with pytest.raises(UsageError, match="'nope'"):
        quantize(graph, mixed.with_(layer_formats={"nope": ("int4",)}), data)


def test_accuracy_budget_bisects_to_the_cheapest_plan_within_the_drop(tmp_path):
    graph, data = mlp(), feeds(2)
    reference = Simulator(graph, quantized=False).run(data[0])["y"]

    def agreement(q: Graph) -> float:  # a user metric: 1 - relative error of the logits
        y = Simulator(q).run(data[0])["y"]
        return 1.0 - float(np.abs(y - reference).mean() / np.abs(reference).mean())

    settings = HutchinsonSettings(min_probes=8, max_probes=8)
    plan = plan_precision(graph, data, "x86-avx2", Constraints(max_metric_drop=0.02), eval_fn=agreement,
                          formats=("int8", "int4", "fp32"), settings=settings, cache_dir=tmp_path)
    assert plan.bisection and 1.0 - agreement(quantize(graph, plan.recipe, data)) <= 0.02 + 1e-9
    within = [step for step in plan.bisection if step["relative_drop"] <= 0.02]
    assert plan.totals["size_bytes"] == min(step["size_bytes"] for step in within)


def test_accuracy_budget_on_per_sample_scores_bounds_the_drop_with_confidence(tmp_path):
    """With per-sample fidelity, a plan is accepted on the upper 95% bound of its mean drop (not the mean),
    so it is never smaller than the plan that bounds the mean alone, and every accepted step's bound is
    within the budget while its mean drop lies below that bound."""
    graph, data = mlp(), feeds(4)
    options = dict(formats=("int8", "int4", "fp32"), cache_dir=tmp_path,
                   settings=HutchinsonSettings(min_probes=8, max_probes=8))
    budget = Constraints(max_metric_drop=0.002)
    bounded = plan_precision(graph, data, "x86-avx2", budget, drop_confidence=0.95, **options)
    mean_only = plan_precision(graph, data, "x86-avx2", budget, drop_confidence=None, **options)
    steps = [s for s in bounded.bisection if s["relative_drop"] > 0]
    assert steps and all(s["samples"] == 4 * BATCH and s["drop_bound"] > s["relative_drop"] for s in steps)
    assert all(s["drop_bound"] == s["relative_drop"] for s in mean_only.bisection)
    chosen = next(s for s in bounded.bisection if s["size_bytes"] == bounded.totals["size_bytes"])
    assert chosen["drop_bound"] <= 0.002
    assert bounded.totals["size_bytes"] >= mean_only.totals["size_bytes"]
    with pytest.raises(UsageError, match="drop_confidence must lie in"):
        plan_precision(graph, data, "x86-avx2", budget, drop_confidence=1.5, **options)


def test_peak_activation_budget_below_the_model_states_the_smallest(tmp_path):
    with pytest.raises(BudgetError, match=r"peak_activation_mb=1e-06 is below the smallest feasible [0-9.e-]+ MB"):
        plan_precision(mlp(), feeds(1), "x86-avx2", Constraints(peak_activation_mb=1e-6), cache_dir=tmp_path,
                       settings=HutchinsonSettings(min_probes=4, max_probes=4))


# -- format selection follows each tensor's distribution -------------------------------------------------
def test_format_choice_follows_outliers_not_a_rule(tmp_path):
    """Two same-shaped weights, one Gaussian and one heavy-tailed (Cauchy): per channel, the ILP picks
    INT8 for the first and FP8 E4M3 for the second, from their measured errors."""
    gaussian = RNG.standard_normal((64, 64)).astype(np.float32) * 0.1
    heavy = (RNG.standard_t(1, (64, 64)) * 0.02).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "wg"], ["a"]), helper.make_node("Tanh", ["a"], ["ta"]),
             helper.make_node("MatMul", ["ta", "wh"], ["y"])]
    graph = import_onnx(model(nodes, [tensor_input("x", [BATCH, 64])], [out()], [init("wg", gaussian), init("wh", heavy)]))
    data = [{"x": RNG.standard_normal((BATCH, 64)).astype(np.float32)}]
    analysis = analyse_precision(graph, data, "x86-avx2", formats=("int8", "fp8_e4m3"), cache_dir=tmp_path,
                                 settings=HutchinsonSettings(min_probes=4, max_probes=4), interactions=False)
    problem, groups = build_problem(analysis, targets.load("x86-avx2"))
    choice = dict(zip([g[0] for g in groups], solve(problem).choice))
    assert [label(analysis.candidates[choice[n]]) for n in ("wg", "wh")] == ["int8", "fp8_e4m3"]


# -- real models (slow) --------------------------------------------------------------------------------
@pytest.mark.slow
def test_mobilenet_v2_plan_under_half_int8_size_keeps_top1(tmp_path):
    graph = import_onnx(zoo.onnx_path("mobilenet_v2"), zoo.input_shapes("mobilenet_v2", 8))
    calib = zoo.inputs("mobilenet_v2", 2, batch=8, split="calib")
    evaluation = zoo.inputs("mobilenet_v2", 4, batch=8, split="eval")
    plan = plan_precision(graph, calib, "x86-avx2", Constraints(size_mb=3.0), cache_dir=tmp_path,
                          settings=HutchinsonSettings(min_probes=8, max_probes=8))
    assert plan.totals["size_bytes"] <= 3.0e6 and plan.seconds["sensitivity_seconds"] < 300
    quantized = quantize(graph, plan.recipe, calib)
    ref = [Simulator(graph, quantized=False).run(f)["logits"].argmax(-1) for f in evaluation]
    got = [Simulator(quantized).run(f)["logits"].argmax(-1) for f in evaluation]
    assert np.mean(np.concatenate(ref) == np.concatenate(got)) >= 0.8


@pytest.mark.slow
def test_mobilenet_v2_gptq_plan_at_5_bits_stays_within_1p5x_of_int8(tmp_path):
    """At the size of 5 bits per weight (INT4 per channel plus a quarter of the way to INT8), the plan for
    a recipe with GPTQ on its 4-bit layers keeps the KL on evaluation data within 1.5x of uniform INT8
    (round to nearest, MSE clipping; docs/results/mixed_precision.md measures 0.4x on 160 images)."""
    graph = import_onnx(zoo.onnx_path("mobilenet_v2"), zoo.input_shapes("mobilenet_v2", 8))
    calib = zoo.inputs("mobilenet_v2", 10, batch=8, split="calib")
    evaluation = zoo.inputs("mobilenet_v2", 4, batch=8, split="eval")
    folded = FoldBatchNorm()(graph.copy())
    points = weight_points(folded)
    size = {fmt: fixed_bytes(folded, set(points)) + sum(weight_bytes(folded.values[n].shape, p, LayerFormat(fmt))
                                                       for n, p in points.items()) for fmt in ("int8", "int4")}
    recipe = QuantRecipe("w4_gptq", weights=None, activations=None, algorithms=("gptq",), options={"gptq_max_bits": 4})
    plan = plan_precision(graph, calib, "x86-avx2", Constraints(size_mb=(size["int4"] + (size["int8"] - size["int4"]) / 4) / 1e6),
                          recipe=recipe, cache_dir=tmp_path, settings=HutchinsonSettings(min_probes=8, max_probes=8))
    int8 = quantize(graph, QuantRecipe("int8", weights="int8", activations=None), calib)

    def kl(q: Graph) -> float:
        ref = np.concatenate([Simulator(graph, quantized=False).run(f)["logits"] for f in evaluation])
        return classification_fidelity(ref, np.concatenate([Simulator(q).run(f)["logits"] for f in evaluation]))["kl"]

    assert kl(quantize(graph, plan.recipe, calib)) <= 1.5 * kl(int8)


def test_fake_quant_reference_is_unchanged_by_layer_formats():
    w = RNG.standard_normal((8, 4)).astype(np.float32)
    graph = import_onnx(model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor_input("x", [2, 8])], [out()],
                              [init("w", w)]))
    plain = quantize(graph, QuantRecipe("a", weights="int4", activations=None), [])
    same = quantize(graph, QuantRecipe("b", weights=None, activations=None, layer_formats={"w": ("int4",)}), [])
    assert plain.values["w"].quant.same_as(same.values["w"].quant)
    np.testing.assert_array_equal(fake_quant(w, plain.values["w"].quant), fake_quant(w, same.values["w"].quant))


def test_latency_budget_uses_measured_layer_latencies(tmp_path):
    measured = {name: {"int8": 1.0, "int4": 5.0, "fp32": 2.0} for name in ("w1", "w2", "w3")}
    options = dict(formats=("int8", "int4", "fp32"), cache_dir=tmp_path, measured_latency_ms=measured,
                   settings=HutchinsonSettings(min_probes=4, max_probes=4))
    plan = plan_precision(mlp(), feeds(2), "x86-avx2", Constraints(latency_ms=3.5), **options)
    assert plan.totals["latency_ms"] <= 3.5 and {c["label"] for c in plan.choices.values()} == {"int8"}
    with pytest.raises(BudgetError, match=r"latency_ms=2 is below the smallest feasible 3 ms"):
        plan_precision(mlp(), feeds(2), "x86-avx2", Constraints(latency_ms=2.0), **options)


def test_plan_keeps_the_base_recipe_and_bisects_on_the_whole_recipe(tmp_path):
    graph, data = mlp(), feeds(2)
    base = QuantRecipe("w8a8_like", activations="uint8", algorithms=("bias_correction",))
    plan = plan_precision(graph, data, "x86-avx2", Constraints(max_metric_drop=0.05), recipe=base,
                          formats=("int8", "int4", "fp32"), cache_dir=tmp_path,
                          settings=HutchinsonSettings(min_probes=4, max_probes=4))
    assert plan.recipe.activations == "uint8" and plan.recipe.algorithms == ("bias_correction",)
    quantized = quantize(graph, plan.recipe, data)
    assert quantized.values["x"].quant is not None  # activations quantized as the base recipe says
    reference = [Simulator(graph, quantized=False).run(f) for f in data]
    from bitsmith.precision import fidelity

    assert 1.0 - fidelity(reference, [Simulator(quantized).run(f) for f in data]) <= 0.05


# -- low-bit quantizers for the plan: per-group INT4, GPTQ, masked losses ----------------------------------
def padded_sequences() -> tuple[Graph, list[dict[str, np.ndarray]]]:
    """x[4, 5, 6] -> MatMul w1 -> Tanh -> MatMul w2 -> y[4, 5, 3], with an attention-style mask[4, 5]
    input that marks the positions that count (the later positions of each sequence are padding)."""
    w1 = RNG.standard_normal((6, 6)).astype(np.float32) * 0.6
    w2 = RNG.standard_normal((6, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Tanh", ["a"], ["ta"]),
             helper.make_node("MatMul", ["ta", "w2"], ["y"])]
    graph = import_onnx(model(nodes, [tensor_input("x", [4, 5, 6]), tensor_input("mask", [4, 5])], [out()],
                              [init("w1", w1), init("w2", w2)]))
    mask = (np.arange(5)[None, :] < np.array([[2], [5], [3], [1]])).astype(np.float32)
    return graph, [{"x": RNG.standard_normal((4, 5, 6)).astype(np.float32), "mask": mask}]


def test_masked_mse_trace_matches_the_exact_hessian_of_the_loss_over_real_positions():
    graph, data = padded_sequences()
    names = ["w1", "w2"]
    sim = Simulator(graph, quantized=False)
    x = torch.from_numpy(data[0]["x"])
    reference = sim.forward({"x": x, "mask": torch.from_numpy(data[0]["mask"])})["y"]
    loss = builtin_loss("mse", graph, "mask")

    def f(*weights):
        env = execute(graph, {**sim.constants, **dict(zip(names, weights)), "x": x})
        return loss({"y": env["y"]}, {"y": reference}, data[0])

    weights = tuple(sim.constants[n] for n in names)
    hessian = torch.autograd.functional.hessian(f, weights)
    exact = {n: float(torch.diagonal(hessian[i][i].reshape(weights[i].numel(), -1)).sum()) for i, n in enumerate(names)}
    settings = HutchinsonSettings(loss_kind="mse", estimator="gauss_newton", min_probes=512, max_probes=512,
                                  probes_per_batch=512, activations=False, sample_mask="mask")
    found = hessian_traces(graph, data, settings=settings, cache_dir=None)
    unmasked = hessian_traces(graph, data, settings=HutchinsonSettings(
        loss_kind="mse", estimator="gauss_newton", min_probes=512, max_probes=512, probes_per_batch=512,
        activations=False), cache_dir=None)
    for name, value in exact.items():
        trace = found.weights[name]
        assert abs(trace.trace - value) <= 4 * trace.std_error, name
        assert abs(unmasked.weights[name].trace - value) > 4 * unmasked.weights[name].std_error, name


def test_gptq_hessian_counts_only_the_masked_positions():
    graph, data = padded_sequences()
    (layer,) = [l for l in linear_layers(graph) if l.weight == "w1"]
    (hessian,) = layer_hessians(graph, data, [layer], sample_mask="mask")
    rows = data[0]["x"][data[0]["mask"] != 0].astype(np.float64)
    np.testing.assert_allclose(hessian[0].numpy(), 2 * rows.T @ rows / len(rows), rtol=1e-5)


@pytest.fixture(scope="module")
def minilm() -> tuple[Graph, list[dict[str, np.ndarray]]]:
    """MiniLM-L6 with real weights, and two calibration batches of 8 sentences padded to 32 tokens."""
    graph = import_onnx(zoo.onnx_path("minilm_l6"), zoo.input_shapes("minilm_l6", 8, seq_len=32))
    return graph, zoo.inputs("minilm_l6", 2, batch=8, split="calib", seq_len=32)


def test_per_group_int4_candidates_count_their_scales_and_clip_by_mse(minilm):
    target = targets.load("x86-avx2")
    labels = [label(c) for c in candidates_for(target)]
    assert {"int4", "int4/b128", "int4/b64", "int4/b32"} <= set(labels)
    graph, _ = minilm
    point = next(p for p in weight_points(graph).values() if graph.values[p.name].shape == (1536, 384))
    weight = graph.constants[point.name]
    assert weight_bytes(weight.shape, point, LayerFormat("int4", "block", 128)) == 1536 * 384 / 2 + 12 * 384 * 4
    mse = QuantizeWeights("int4", "block", 64, "mse").spec_for(weight, point)
    plain = QuantizeWeights("int4", "block", 64, "max").spec_for(weight, point)
    assert mse.scale.shape == plain.scale.shape == (24, 384) and mse.axis == 0
    channel = QuantizeWeights("int4").spec_for(weight, point)
    errors = [quantization_error(weight, s) for s in (mse, plain, channel)]
    assert errors[0] < 0.85 * errors[1] and errors[0] < 0.65 * errors[2]  # measured: 0.78x and 0.57x


def test_gptq_limited_to_low_bit_layers_leaves_int8_weights_alone():
    graph, data = mlp(), feeds(2)
    recipe = QuantRecipe("mixed", weights=None, activations=None, algorithms=("gptq",), options={"gptq_max_bits": 4},
                         layer_formats={"w1": ("int8",), "w2": ("int4",), "w3": ("int4", "block", 2)})
    quantized = quantize(graph, recipe, data)
    np.testing.assert_array_equal(quantized.constants["w1"], graph.constants["w1"])
    for name in ("w2", "w3"):
        assert not np.array_equal(quantized.constants[name], graph.constants[name])
        np.testing.assert_array_equal(fake_quant(quantized.constants[name], quantized.values[name].quant),
                                      quantized.constants[name])  # on the grid: GPTQ's solution


def test_plan_with_gptq_predicts_from_and_reproduces_gptq_solutions(tmp_path):
    """With GPTQ in the recipe, the analysis holds GPTQ's solution for every low-bit candidate, ranks
    them by the output error model, and the plan's recipe rebuilds exactly the graph the ILP scored."""
    graph, data = mlp(), feeds(2)
    recipe = QuantRecipe("w_gptq", weights=None, activations=None, algorithms=("gptq",), options={"gptq_max_bits": 4})
    settings = HutchinsonSettings(min_probes=4, max_probes=4)
    plan = plan_precision(graph, data, "x86-avx2", Constraints(size_mb=0.00024), recipe=recipe,
                          formats=("int8", "int4", "int4/b32"), cache_dir=tmp_path, settings=settings)
    analysis = analyse_precision(graph, data, "x86-avx2", formats=("int8", "int4", "int4/b32"), cache_dir=tmp_path,
                                 settings=settings, gptq=recipe_gptq(recipe, data))
    assert analysis.error_model == "output" and plan.recipe.algorithms == ("gptq",)
    labels = [label(c) for c in analysis.candidates]
    for name in analysis.points:
        assert analysis.rewritten[name][labels.index("int8")] is None  # 8 bits: round to nearest
        assert analysis.rewritten[name][labels.index("int4")] is not None
    quantized = quantize(graph, plan.recipe, data)
    groups = [(name,) for name in analysis.points]
    scored = quantized_graph(analysis, groups, [labels.index(plan.choices[n]["label"]) for n in analysis.points])
    for name in analysis.points:
        np.testing.assert_array_equal(quantized.constants[name], scored.constants[name])


def test_output_error_is_the_weight_error_as_the_inputs_see_it():
    graph, data = mlp(), feeds(2)
    layer = next(l for l in linear_layers(graph) if l.weight == "w1")
    delta = RNG.standard_normal((6, 6))
    white = torch.eye(6, dtype=torch.float64).unsqueeze(0) * 3.0
    assert output_error(delta, layer, white) == pytest.approx(float((delta ** 2).sum()))
    (hessian,) = layer_hessians(graph, data, [layer])
    x = np.concatenate([f["x"] for f in data]).astype(np.float64)
    expected = ((x @ delta) ** 2).sum() / ((x ** 2).sum() / 6)
    assert output_error(delta, layer, hessian) == pytest.approx(expected, rel=1e-5)


def test_output_error_ranks_gptq_below_round_to_nearest_on_a_real_minilm_layer(minilm):
    """GPTQ moves the error of MiniLM's last attention output projection into directions its inputs do
    not excite: larger in weight space, smaller as the inputs see it; the output error model sees the gain."""
    graph, data = minilm
    layer = [l for l in linear_layers(graph) if "attention/output" in l.node.name][-1]
    weight = graph.constants[layer.weight]
    spec = QuantizeWeights("int4", "block", 128).spec_for(weight, weight_points(graph)[layer.weight])
    (hessian,) = layer_hessians(graph, data, [layer], sample_mask="attention_mask")
    rtn, gptq = fake_quant(weight, spec) - weight, gptq_weight(weight, spec, layer, hessian) - weight
    assert (gptq ** 2).sum() > (rtn ** 2).sum()
    assert output_error(gptq, layer, hessian) < 0.7 * output_error(rtn, layer, hessian)


def test_bias_correction_against_the_weights_before_gptq_removes_gptq_mean_shift():
    w = RNG.standard_normal((6, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Add", ["a", "b"], ["y"])]
    graph = import_onnx(model(nodes, [tensor_input("x", [BATCH, 6])], [out()],
                              [init("w", w), init("b", np.zeros(4, np.float32))]))
    data = [{"x": (RNG.standard_normal((BATCH, 6)) + 1.0).astype(np.float32)} for _ in range(2)]
    recipe = QuantRecipe("w4_gptq", weights="int4", activations=None, algorithms=("gptq",))
    quantized = quantize(graph, recipe, data)
    reference = np.concatenate([Simulator(graph, quantized=False).run(f)["y"] for f in data])

    def mean_shift(g: Graph) -> np.ndarray:
        return np.abs((np.concatenate([Simulator(g).run(f)["y"] for f in data]) - reference).mean(0))

    alone = BiasCorrection(data).run(quantized.copy())
    np.testing.assert_array_equal(alone.constants["b"], quantized.constants["b"])  # GPTQ's weight is its own reference
    corrected = BiasCorrection(data, float_weights={"w": w}).run(quantized.copy())
    assert mean_shift(corrected).max() < 1e-5 < mean_shift(quantized).max()
