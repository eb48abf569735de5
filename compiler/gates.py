"""CI gates: `--fail-if "metric_drop>0.01" --fail-if "p50_ms>5"` on `bitsmith compile` and `bench`.

A gate is NAME OP NUMBER with OP one of > >= < <= == != and NAME one of report.GATE_FIELDS (the same
numbers the report shows). A gate trips when its comparison is true. `check` raises GateFailed (exit
code 10) listing every tripped gate with the measured value; a gate whose number the report lacks (no
evaluation data for metric_drop, say) is a UsageError (exit 2), so a pipeline never passes a gate
silently because nothing was measured.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from .errors import GateFailed, UsageError
from .report import GATE_FIELDS

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
}
_GATE = re.compile(r"^\s*([a-z0-9_]+)\s*(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Gate:
    name: str
    op: str
    threshold: float

    @property
    def expression(self) -> str:
        return f"{self.name}{self.op}{self.threshold:g}"

    def trips(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)


def parse_gate(text: str) -> Gate:
    match = _GATE.match(text)
    if not match:
        raise UsageError(f"--fail-if {text!r} must look like NAME>NUMBER (operators > >= < <= == !=), "
                         'e.g. --fail-if "metric_drop>0.01"')
    name, op, number = match.groups()
    if name not in GATE_FIELDS:
        raise UsageError(f"--fail-if {text!r}: unknown quantity {name!r}; known: {', '.join(GATE_FIELDS)}")
    try:
        threshold = float(number)
    except ValueError:
        raise UsageError(f"--fail-if {text!r}: {number!r} is not a number") from None
    return Gate(name, op, threshold)


def evaluate(gates: Iterable[Gate], values: Mapping[str, float | None], where: str) -> list[dict[str, object]]:
    """Each gate's value and whether it tripped; UsageError for a gate whose value was not measured."""
    results: list[dict[str, object]] = []
    for gate in gates:
        value = values.get(gate.name)
        if value is None:
            raise UsageError(f"--fail-if {gate.expression!r}: {gate.name} was not measured for {where} "
                             f"({GATE_FIELDS[gate.name]}); give the data it needs (e.g. --data for metric_drop)")
        results.append({"expression": gate.expression, "name": gate.name, "value": float(value),
                        "failed": gate.trips(float(value)), "where": where})
    return results


def check(results: Iterable[Mapping[str, object]]) -> None:
    """Raise GateFailed naming every tripped gate."""
    tripped = [f"{r['expression']} (measured {float(r['value']):.4g} on {r['where']})"  # type: ignore[arg-type]
               for r in results if r["failed"]]
    if tripped:
        raise GateFailed("gate failed: " + "; ".join(tripped))
