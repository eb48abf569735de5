"""How close a compiled model's outputs are to FP32's, without labels: the metric a report and a
`max_metric_drop` budget use when the user gives no eval_fn.

    name, score, details = fidelity(fp32_outputs, quantized_outputs)

The metric follows what the model outputs (first rule that applies):

- an output whose rows are probabilities (2-D, non-negative, rows sum to 1: a softmax head), or else a
  2-D output of 10 or more columns (class logits): "top1_agreement", the share of samples whose arg-max
  class equals FP32's, with the KL divergence of the softmax beside it;
- anything else (embeddings, hidden states, maps): "cosine", the mean over samples of the cosine
  similarity of each sample's outputs, all outputs concatenated, with the minimum beside it.

FP32 scores 1.0 on both, so the relative metric drop is 1 - score. `sqnr_db` is the signal-to-
quantization-noise ratio of one tensor against its FP32 value, 10 log10(sum x^2 / sum (x - q)^2).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from .measure import classification_fidelity, cosine

Outputs = Sequence[Mapping[str, np.ndarray]]
METRICS = ("top1_agreement", "cosine")
CLASS_LOGITS_MIN_COLUMNS = 10


def _stacked(outputs: Outputs, name: str) -> np.ndarray:
    return np.concatenate([np.asarray(o[name]) for o in outputs])


def _is_probability(x: np.ndarray) -> bool:
    return x.ndim == 2 and x.shape[1] >= 2 and bool((x >= 0).all()) and bool(np.allclose(x.sum(1), 1.0, atol=1e-3))


def classifier_output(outputs: Outputs) -> str | None:
    """The output that holds class scores, if any (see the module doc)."""
    first = outputs[0]
    probabilities = [n for n in first if _is_probability(np.asarray(first[n]))]
    if probabilities:
        return probabilities[0]
    logits = [n for n in first if np.asarray(first[n]).ndim == 2 and first[n].shape[1] >= CLASS_LOGITS_MIN_COLUMNS]
    return max(logits, key=lambda n: first[n].shape[1]) if logits else None


def _per_sample(outputs: Outputs) -> np.ndarray:
    rows = [np.concatenate([np.asarray(o[n], np.float64).reshape(np.asarray(o[n]).shape[0], -1) for n in sorted(o)],
                           axis=1) for o in outputs]
    return np.concatenate(rows)


def fidelity(fp32: Outputs, quantized: Outputs, metric: str = "auto") -> tuple[str, float, dict[str, Any]]:
    """(metric name, score in [0, 1] with FP32 = 1, details) of `quantized` against `fp32` outputs."""
    classifier = classifier_output(fp32)
    if metric == "auto":
        metric = "top1_agreement" if classifier is not None else "cosine"
    if metric == "top1_agreement":
        if classifier is None:
            metric = "cosine"
        else:
            reference, ours = _stacked(fp32, classifier), _stacked(quantized, classifier)
            logits = (np.log(np.maximum(reference, 1e-30)), np.log(np.maximum(ours, 1e-30))) \
                if _is_probability(reference) else (reference, ours)
            scores = classification_fidelity(*logits)
            return metric, scores["top1_agree"], {"kl": scores["kl"], "output": classifier,
                                                  "samples": len(reference)}
    sims = cosine(_per_sample(fp32), _per_sample(quantized))
    return "cosine", float(sims.mean()), {"cosine_min": float(sims.min()), "samples": len(sims)}


def metric_value(score: Any) -> float:
    """A user metric's value: the float it returns, or the mean of its per-sample scores."""
    return float(np.mean(np.asarray(score, np.float64)))


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """10 log10(signal / noise); +inf for an exact match."""
    if noise_energy <= 0:
        return math.inf
    if signal_energy <= 0:
        return -math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)
