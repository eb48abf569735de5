"""Per-layer precision by integer linear programming (HAWQ-V3: Yao et al., "HAWQ-V3: Dyadic Neural
Network Quantization", ICML 2021), with measured inter-layer interactions in the objective.

Decision: one candidate (format, granularity, block size) per group of weights that must agree (a
weight shared by several nodes, or weights the caller ties), binary x[g, c] with sum_c x[g, c] = 1.

Objective: the predicted loss increase

    sum_g,c 0.5 * Omega[g, c] * x[g, c]  +  sum_(g,h) I[g, h] * y[g, h]

where Omega = Tr(H)/n * ||Q(W) - W||^2 (HAWQ-V2; the second-order Taylor term of the loss is half of
it) and y[g, h] = low[g] * low[h] is 1 when both neighbours are at the low-precision candidate the
interaction was measured at (`Group.low` marks it), with I[g, h] the interaction of the pair (the driver, bitsmith.precision, derives it from
`interlayer.measure_interactions`). The product is linearized
exactly: y >= low_g + low_h - 1, y <= low_g, y <= low_h, 0 <= y <= 1.

Constraints, each optional: size_bytes (fixed bytes + chosen weight bytes), bops, latency_ms (the cost
model of precision_costs, or measured per-layer latencies passed in the costs). Solved with
scipy.optimize.milp (HiGHS). An infeasible budget raises BudgetError naming the smallest budget that
is feasible (each violated budget minimized under the others).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from ..errors import BudgetError, UsageError

BUDGETS = ("size_bytes", "bops", "latency_ms")
UNITS = {"size_bytes": ("size_mb", 1e6, "MB"), "bops": ("bops_g", 1e9, "GBOPs"), "latency_ms": ("latency_ms", 1.0, "ms")}


@dataclass
class Group:
    """Weights sharing one choice, with one entry per candidate for Omega and each cost."""

    names: tuple[str, ...]
    omega: np.ndarray          # per candidate, summed over the group
    costs: dict[str, np.ndarray]  # budget name -> per candidate
    low: np.ndarray            # per candidate: the one interactions apply to


@dataclass
class Problem:
    groups: list[Group]
    interactions: list[tuple[int, int, float]] = field(default_factory=list)  # (group a, group b, I)
    fixed: dict[str, float] = field(default_factory=dict)  # budget name -> cost no choice changes

    def total(self, choice: Sequence[int], budget: str) -> float:
        return self.fixed.get(budget, 0.0) + float(sum(g.costs[budget][c] for g, c in zip(self.groups, choice)))

    def predicted_loss(self, choice: Sequence[int]) -> float:
        loss = 0.5 * sum(float(g.omega[c]) for g, c in zip(self.groups, choice))
        return loss + sum(value for a, b, value in self.interactions
                          if self.groups[a].low[choice[a]] and self.groups[b].low[choice[b]])


@dataclass
class Solution:
    choice: list[int]
    predicted_loss: float
    totals: dict[str, float]
    seconds: float


class _Layout:
    """Variable indices: x[g, c] for every group and candidate, then y[e] for every interaction."""

    def __init__(self, problem: Problem) -> None:
        self.offsets = np.cumsum([0] + [len(g.omega) for g in problem.groups])
        self.n_x = int(self.offsets[-1])
        self.n = self.n_x + len(problem.interactions)

    def x(self, group: int, candidate: int) -> int:
        return int(self.offsets[group]) + candidate


def solve(problem: Problem, budgets: Mapping[str, float] | None = None, objective: str | None = None) -> Solution:
    """The assignment minimizing the predicted loss (or, with `objective`, that cost) within `budgets`."""
    budgets = {k: v for k, v in (budgets or {}).items() if v is not None}
    unknown = set(budgets) - set(BUDGETS)
    if unknown:
        raise UsageError(f"assign_precision: unknown budgets {sorted(unknown)}; known: {BUDGETS}")
    start = time.perf_counter()
    result = _milp(problem, budgets, objective)
    if result is None:
        raise BudgetError(_infeasible_message(problem, budgets))
    return Solution(result, problem.predicted_loss(result),
                    {b: problem.total(result, b) for b in BUDGETS if all(b in g.costs for g in problem.groups)},
                    time.perf_counter() - start)


def _milp(problem: Problem, budgets: Mapping[str, float], objective: str | None) -> list[int] | None:
    layout = _Layout(problem)
    c = np.zeros(layout.n)
    for g, group in enumerate(problem.groups):
        for k in range(len(group.omega)):
            c[layout.x(g, k)] = group.costs[objective][k] if objective else 0.5 * group.omega[k]
    if not objective:
        for e, (_, _, value) in enumerate(problem.interactions):
            c[layout.n_x + e] = value
        c[:layout.n_x] += _tie_breaker(problem, layout, c)
    rows: list[tuple[dict[int, float], float, float]] = []
    for g, group in enumerate(problem.groups):  # one candidate per group
        rows.append(({layout.x(g, k): 1.0 for k in range(len(group.omega))}, 1.0, 1.0))
    for name, limit in budgets.items():
        coefficients = {layout.x(g, k): float(group.costs[name][k])
                        for g, group in enumerate(problem.groups) for k in range(len(group.omega))}
        rows.append((coefficients, -np.inf, limit - problem.fixed.get(name, 0.0)))
    if not objective:
        for e, (a, b, _) in enumerate(problem.interactions):
            y = layout.n_x + e
            low_a = {layout.x(a, int(k)): 1.0 for k in np.flatnonzero(problem.groups[a].low)}
            low_b = {layout.x(b, int(k)): 1.0 for k in np.flatnonzero(problem.groups[b].low)}
            rows.append((_merged(low_a, low_b, y), -1.0, np.inf))  # y >= low_a + low_b - 1
            rows.append(({**_neg(low_a), y: 1.0}, -np.inf, 0.0))  # y <= low_a
            rows.append(({**_neg(low_b), y: 1.0}, -np.inf, 0.0))  # y <= low_b
    matrix = lil_matrix((len(rows), layout.n))
    lower, upper = np.empty(len(rows)), np.empty(len(rows))
    for r, (coefficients, lo, hi) in enumerate(rows):
        for index, value in coefficients.items():
            matrix[r, index] = value
        lower[r], upper[r] = lo, hi
    integrality = np.r_[np.ones(layout.n_x), np.zeros(layout.n - layout.n_x)]
    result = milp(c, constraints=LinearConstraint(matrix.tocsr(), lower, upper), integrality=integrality,
                  bounds=Bounds(0, 1), options={"disp": False, "time_limit": 60.0})
    if result.x is None:  # infeasible (status 2), or no feasible point found within the time limit
        return None
    x = result.x[:layout.n_x]
    return [int(np.argmax(x[layout.x(g, 0):layout.x(g, 0) + len(group.omega)]))
            for g, group in enumerate(problem.groups)]


def _neg(coefficients: dict[int, float]) -> dict[int, float]:
    return {k: -v for k, v in coefficients.items()}


def _merged(low_a: dict[int, float], low_b: dict[int, float], y: int) -> dict[int, float]:
    merged = _neg(low_a)
    for k, v in low_b.items():
        merged[k] = merged.get(k, 0.0) - v
    merged[y] = 1.0
    return merged


def _tie_breaker(problem: Problem, layout: _Layout, c: np.ndarray) -> np.ndarray:
    """A tiny preference for fewer bytes among choices of equal predicted loss."""
    sizes = np.zeros(layout.n_x)
    if not all("size_bytes" in g.costs for g in problem.groups):
        return sizes
    for g, group in enumerate(problem.groups):
        for k in range(len(group.omega)):
            sizes[layout.x(g, k)] = group.costs["size_bytes"][k]
    scale = max(float(np.abs(c).max()), 1e-30) * 1e-9
    return sizes / max(float(sizes.max()), 1.0) * scale


# -- infeasible budgets ------------------------------------------------------------------------------
def smallest_feasible(problem: Problem, budget: str, others: Mapping[str, float] | None = None) -> float | None:
    """The least value of `budget` any assignment reaches within the `others` budgets (None: none does)."""
    choice = _milp(problem, {k: v for k, v in (others or {}).items() if k != budget}, objective=budget)
    return None if choice is None else problem.total(choice, budget)


def _infeasible_message(problem: Problem, budgets: Mapping[str, float]) -> str:
    parts = []
    for name, limit in budgets.items():
        field_name, unit, unit_name = UNITS[name]
        alone = smallest_feasible(problem, name)
        jointly = smallest_feasible(problem, name, budgets)
        if alone is not None and alone > limit:
            parts.append(f"{field_name}={limit / unit:.6g} is below the smallest feasible {alone / unit:.6g} {unit_name}")
        elif jointly is not None and jointly > limit:
            parts.append(f"{field_name}={limit / unit:.6g} cannot be met together with the other budgets: "
                         f"the smallest feasible with them is {jointly / unit:.6g} {unit_name}")
    detail = "; ".join(parts) or "the budgets cannot be met together"
    return f"no per-layer precision assignment meets the budget: {detail}. Raise the budget to at least that."


def pareto_front(problem: Problem, budget: str = "size_bytes", points: int = 16,
                 others: Mapping[str, float] | None = None) -> list[Solution]:
    """Assignments minimizing predicted loss at evenly spaced limits of `budget` between its smallest
    and largest feasible values (within `others`), without dominated points."""
    others = {k: v for k, v in (others or {}).items() if k != budget}
    low = smallest_feasible(problem, budget, others)
    if low is None:
        return []
    high = problem.total(solve(problem, others).choice, budget)
    front: list[Solution] = []
    for limit in np.linspace(low, max(high, low), points):
        try:
            front.append(solve(problem, {**others, budget: float(limit) * (1 + 1e-9)}))
        except BudgetError:
            continue
    front.sort(key=lambda s: (s.totals[budget], s.predicted_loss))
    kept: list[Solution] = []
    for solution in front:
        if not kept or solution.predicted_loss < kept[-1].predicted_loss - 1e-15:
            kept.append(solution)
    return kept
