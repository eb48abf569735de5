"""Measuring, the same way everywhere: error metrics, ONNX Runtime sessions, side-by-side timing.

Timings on shared machines drift, so contenders are timed in one process, alternating run by run on
the same inputs and thread count, and compared by the ratio of their medians.
"""

from __future__ import annotations

import json
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


def ort_session(model: str | Path | bytes, threads: int = 2, optimize: bool = True, spin: bool = True) -> Any:
    """An ONNX Runtime CPU session limited to `threads` intra-op threads (the same as bitsmith gets).

    spin=False stops its worker threads spin-waiting after each run: when runs alternate with another
    runtime's, spinning workers starve the other's threads (measured on MTCNN RNet, 2 cores: bitsmith
    0.22 ms alone, 7.9 ms alternating with a spinning session, 0.28 ms with spin=False)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


# -- fidelity of a quantized model against its FP32 original --------------------------------------
def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """KL(p || q) per row of two probability arrays."""
    return (p * (np.log(p + eps) - np.log(q + eps))).sum(axis=-1)


def classification_fidelity(fp32_logits: np.ndarray, quant_logits: np.ndarray, confident: float = 0.5) -> dict:
    """KL(FP32 || quantized) of the softmax, top-1 agreement overall and on confident FP32 predictions."""
    p, q = softmax(fp32_logits), softmax(quant_logits)
    agree = p.argmax(-1) == q.argmax(-1)
    sure = p.max(-1) > confident
    return {"kl": float(kl_divergence(p, q).mean()), "top1_agree": float(agree.mean()),
            "top1_agree_confident": float(agree[sure].mean()) if sure.any() else float("nan"),
            "confident_samples": int(sure.sum())}


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: the mean of token states over the attention mask."""
    m = mask[..., None].astype(np.float64)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def write_results(directory: Path, name: str, doc: Mapping[str, Any], markdown: str) -> None:
    """Write the evidence `name`.json (the data) and `name`.md (its rendering) under `directory`. Each file
    is written beside its place and then renamed over it, so an interrupted run leaves no half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in ((directory / f"{name}.json", json.dumps(doc, indent=1) + "\n"), (directory / f"{name}.md", markdown)):
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)
