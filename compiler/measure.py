"""Measuring, the same way everywhere: error metrics, ONNX Runtime sessions, side-by-side timing.

Timings on shared machines drift, so contenders are timed in one process, alternating run by run on
the same inputs and thread count, and compared by the ratio of their medians.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (the absolute difference when expected is all zero)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if expected.size == 0:
        return 0.0
    diff = float(np.abs(actual - expected).max())
    scale = float(np.abs(expected).max())
    return diff / scale if scale > 0 else diff


def max_rel_err(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> float:
    return max(rel_err(actual[k], expected[k]) for k in expected)


def ort_session(model: str | Path | bytes, threads: int = 2, optimize: bool = True) -> Any:
    """An ONNX Runtime CPU session limited to `threads` intra-op threads (the same as bitsmith gets)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def ort_run(session: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))


def time_alternating(contenders: Mapping[str, Callable[[], object]], repeat: int = 20,
                     warmup: int = 3) -> dict[str, list[float]]:
    """Milliseconds per run of each contender, interleaved run by run (A B A B ...) after warm-up."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))
