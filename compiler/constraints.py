"""The user's budget for a compile: what the precision search must meet.

    bitsmith.compile(model, "host", calibration=feeds,
                     constraints=Constraints(size_mb=2.0, max_metric_drop=0.01))

Every field is optional; a field left at None does not constrain. Sizes count weight storage as the
artifact stores it (packed sub-byte formats included, scales included); BOPs are bit operations
(MACs x weight bits x activation bits, HAWQ-V3); latency is the target's measured or predicted time.
`max_metric_drop` is relative: 0.01 allows the metric (the user's eval_fn, or bitsmith's label-free
fidelity metric) to fall by 1% of its FP32 value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class Constraints:
    size_mb: float | None = None
    bops_g: float | None = None
    latency_ms: float | None = None
    peak_activation_mb: float | None = None
    max_metric_drop: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not value > 0:
                raise UsageError(f"Constraints.{name} must be a positive number, not {value!r}")

    def is_empty(self) -> bool:
        return all(v is None for v in asdict(self).values())

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}
