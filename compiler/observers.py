"""Calibration observers: stream over batches, then give the range (amin, amax) to quantize with.

Memory does not depend on how much data is observed: MinMax keeps running extrema (per tensor or
per channel); the others keep a `StreamingHistogram` with a fixed number of bins, which widens its
range when a batch falls outside it by merging whole bins (integer factor, aligned edges), so the
counts stay exact and no batch is ever stored.

- `MinMaxObserver`: the observed extrema.
- `PercentileObserver`: the p-th and (100-p)-th percentiles (p = 99.99 by default), interpolated
  within the histogram bin.
- `MSEObserver`: the range (alpha * min, alpha * max), alpha in (0, 1], that minimizes the
  quantization MSE of the histogram's contents in a given `formats` format (error of each bin
  estimated from evenly spaced points inside it); a log-spaced search refined linearly (the
  clipping search of e.g. LLM-FP4 and NVIDIA's pytorch-quantization "mse" calibrator).
- `EntropyObserver`: TensorRT's entropy calibration (Migacz, "8-bit Inference with TensorRT",
  GTC 2017): on a histogram of |x|, the threshold whose quantized distribution has the smallest
  KL divergence from the clipped reference distribution (2048 bins, 128 quantized bins, zero bins
  smoothed as in MXNet's and TVM's ports, the last minimum wins as in pytorch-quantization).

The histogram observers clip to their estimate but never widen beyond the observed extrema.
Batches holding NaN or Inf raise DataError.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from . import formats
from .errors import DataError, UsageError


def _finite_extrema(batch: np.ndarray, what: str) -> tuple[float, float]:
    low, high = float(np.min(batch)), float(np.max(batch))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise DataError(f"{what}: the calibration batch holds NaN or Inf values; clean the data first")
    return low, high


class MinMaxObserver:
    """Running min and max, over the whole tensor or per index of `axis` (then arrays)."""

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None

    def observe(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch)
        if batch.size == 0:
            return
        _finite_extrema(batch, "MinMaxObserver")
        if self.axis is None:
            low, high = np.min(batch), np.max(batch)
        else:
            if not -batch.ndim <= self.axis < batch.ndim:
                raise DataError(f"MinMaxObserver: axis {self.axis} does not exist in a batch of shape {batch.shape}")
            others = tuple(d for d in range(batch.ndim) if d != self.axis % batch.ndim)
            low, high = np.min(batch, axis=others), np.max(batch, axis=others)
            if self._min is not None and low.shape != self._min.shape:
                raise DataError(f"MinMaxObserver: batch has {low.shape[0]} channels on axis {self.axis}, "
                                f"earlier batches had {self._min.shape[0]}")
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self._min = low if self._min is None else np.minimum(self._min, low)
        self._max = high if self._max is None else np.maximum(self._max, high)

    def range(self) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
        if self._min is None or self._max is None:
            raise DataError("MinMaxObserver: no data observed yet")
        if self.axis is None:
            return float(self._min), float(self._max)
        return self._min.copy(), self._max.copy()


class StreamingHistogram:
    """`bins` equal bins over [lo, hi) that widen, exactly, to take any batch.

    Widening keeps every old bin edge on a new edge: the new width is an integer multiple k of the
    old one and the new low edge an integer number of old widths below the old one, so each old
    bin falls entirely into one new bin and its count moves there unchanged.
    """

    def __init__(self, bins: int = 2048, anchor_at_zero: bool = False) -> None:
        if bins < 2:
            raise UsageError(f"StreamingHistogram: needs at least 2 bins, got {bins}")
        self.bins = bins
        self.anchor_at_zero = anchor_at_zero
        self.counts = np.zeros(bins, np.int64)
        self.lo = 0.0
        self.hi = 0.0

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, values: np.ndarray, low: float, high: float) -> None:
        """Count `values`, whose extrema `low` and `high` the caller has already computed.
        Bins are half-open [edge, next edge): every counted value lies strictly below `hi`."""
        if self.total == 0:
            self._start(low, high)
        elif low < self.lo or high >= self.hi:
            self._widen(low, high)
        index = (np.asarray(values, np.float64) - self.lo) * (self.bins / (self.hi - self.lo))
        index = np.clip(index, 0, self.bins - 1, out=index).astype(np.int64)  # clip: rounding only
        self.counts += np.bincount(index.reshape(-1), minlength=self.bins)

    def _start(self, low: float, high: float) -> None:
        """The first range puts `low` at the first edge and `high` at the last bin's lower edge."""
        self.lo = 0.0 if self.anchor_at_zero else low
        span = high - self.lo
        width = span / (self.bins - 1) if span > 0 else max(abs(self.lo), 1.0) * 2.0 ** -20
        self.hi = self.lo + self.bins * width

    def _widen(self, low: float, high: float) -> None:
        width = self.width
        grow_left = max(0, math.ceil((self.lo - low) / width))
        grow_right = math.floor((high - self.hi) / width) + 1 if high >= self.hi else 0
        needed = grow_left + self.bins + grow_right
        factor = -(-needed // self.bins)
        slack = factor * self.bins - needed
        if grow_left and grow_right:
            grow_left += slack // 2
        elif grow_left:
            grow_left += slack
        new_bin = (grow_left + np.arange(self.bins)) // factor
        counts = np.zeros(self.bins, np.int64)
        np.add.at(counts, new_bin, self.counts)
        self.counts = counts
        self.lo -= grow_left * width
        self.hi = self.lo + self.bins * factor * width

    def quantile(self, q: float) -> float:
        """The value below which a fraction q of the counts lies (linear within a bin)."""
        cumulative = np.cumsum(self.counts)
        target = q * cumulative[-1]
        i = int(np.searchsorted(cumulative, target, side="left"))
        i = min(i, self.bins - 1)
        before = cumulative[i - 1] if i > 0 else 0
        fraction = (target - before) / self.counts[i] if self.counts[i] else 0.0
        return float(self.lo + (i + fraction) * self.width)

    def sample_points(self, per_bin: int) -> tuple[np.ndarray, np.ndarray]:
        """Evenly spaced points inside each non-empty bin, and the count each one stands for."""
        filled = np.flatnonzero(self.counts)
        offsets = (np.arange(per_bin) + 0.5) / per_bin
        points = self.lo + (filled[:, None] + offsets[None, :]) * self.width
        weights = np.repeat(self.counts[filled] / per_bin, per_bin)
        return points.reshape(-1), weights


class _HistogramObserver(ABC):
    """Observes into a StreamingHistogram (of x or of |x|) and tracks the exact extrema."""

    absolute = False

    def __init__(self, bins: int = 2048) -> None:
        self.histogram = StreamingHistogram(bins, anchor_at_zero=self.absolute)
        self._min = math.inf
        self._max = -math.inf

    def observe(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch)
        if batch.size == 0:
            return
        low, high = _finite_extrema(batch, type(self).__name__)
        self._min, self._max = min(self._min, low), max(self._max, high)
        if self.absolute:
            self.histogram.add(np.abs(batch), 0.0, max(abs(low), abs(high)))
        else:
            self.histogram.add(batch, low, high)

    def range(self) -> tuple[float, float]:
        if self.histogram.total == 0:
            raise DataError(f"{type(self).__name__}: no data observed yet")
        if self._min == self._max:
            return self._min, self._max
        low, high = self._estimate()
        return max(self._min, low), min(self._max, high)

    @abstractmethod
    def _estimate(self) -> tuple[float, float]:
        """The clipping range from the histogram (clamped to the observed extrema by range())."""


class PercentileObserver(_HistogramObserver):
    """(the (100 - p)-th percentile, the p-th percentile) of the observed values."""

    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        if not 50.0 < percentile <= 100.0:
            raise UsageError(f"PercentileObserver: percentile must be in (50, 100], got {percentile}")
        super().__init__(bins)
        self.percentile = percentile

    def _estimate(self) -> tuple[float, float]:
        q = self.percentile / 100.0
        return self.histogram.quantile(1.0 - q), self.histogram.quantile(q)


class MSEObserver(_HistogramObserver):
    """The range (alpha * min, alpha * max) minimizing the MSE of quantizing the data to `fmt`."""

    def __init__(self, fmt: str = "int8", symmetric: bool = True, bins: int = 2048,
                 points_per_bin: int = 8, coarse_steps: int = 96, fine_steps: int = 48) -> None:
        info = formats.format_info(fmt)
        if info.is_block_format:
            raise UsageError(f"MSEObserver: {fmt} takes its scales from each block, not from a range")
        super().__init__(bins)
        self.fmt, self.symmetric = fmt, symmetric or info.is_float
        self.points_per_bin, self.coarse_steps, self.fine_steps = points_per_bin, coarse_steps, fine_steps

    def _estimate(self) -> tuple[float, float]:
        points, weights = self.histogram.sample_points(self.points_per_bin)
        points = points.astype(np.float32)
        coarse = np.geomspace(2.0 ** -10, 1.0, self.coarse_steps)
        best = int(np.argmin([self._error(a, points, weights) for a in coarse]))
        fine = np.linspace(coarse[max(best - 1, 0)], coarse[min(best + 1, len(coarse) - 1)], self.fine_steps)
        errors = [self._error(a, points, weights) for a in fine]
        alpha = float(fine[int(np.argmin(errors))])
        return alpha * self._min, alpha * self._max

    def _error(self, alpha: float, points: np.ndarray, weights: np.ndarray) -> float:
        spec = formats.choose_spec(None, self.fmt, amin=alpha * self._min, amax=alpha * self._max,
                                   symmetric=self.symmetric)
        diff = formats.fake_quant(points, spec).astype(np.float64) - points
        return float(np.dot(weights, diff * diff))


class EntropyObserver(_HistogramObserver):
    """TensorRT's KL-divergence threshold t on |x|; the range is (-t, t) within the extrema."""

    absolute = True

    def __init__(self, bins: int = 2048, quantized_bins: int = 128, start_bin: int = 128) -> None:
        if quantized_bins < 2 or quantized_bins > bins:
            raise UsageError(f"EntropyObserver: quantized_bins must be in [2, bins], got {quantized_bins}")
        super().__init__(bins)
        self.quantized_bins = quantized_bins
        self.start_bin = min(start_bin, bins)

    def _estimate(self) -> tuple[float, float]:
        counts = self.histogram.counts.astype(np.float64)
        stops = range(max(self.start_bin, self.quantized_bins), self.histogram.bins + 1)
        divergences = np.array([_clipping_divergence(counts, stop, self.quantized_bins) for stop in stops])
        last_best = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
        threshold = self.histogram.lo + stops[last_best] * self.histogram.width
        return -threshold, threshold


def _clipping_divergence(counts: np.ndarray, stop: int, quantized_bins: int, eps: float = 1e-4) -> float:
    """KL(P || Q) for the threshold at bin `stop`, as in TensorRT's calibrator (and MXNet's and
    TVM's ports of it): P = counts[:stop] with the clipped tail added to its last bin; Q = counts[:stop]
    merged into `quantized_bins` groups, each group's total spread evenly over the bins where P is
    non-zero; empty bins of both get `eps` counts so that clipping costs a finite divergence."""
    reference = counts[:stop].copy()
    reference[-1] += counts[stop:].sum()
    group = (np.arange(stop) * quantized_bins) // stop
    nonempty = reference > 0
    group_total = np.bincount(group, weights=counts[:stop], minlength=quantized_bins)
    group_nonempty = np.bincount(group, weights=nonempty, minlength=quantized_bins)
    candidate = np.where(nonempty, group_total[group] / np.maximum(group_nonempty[group], 1), 0.0)
    p = _smoothed_distribution(reference, eps)
    q = _smoothed_distribution(candidate, eps)
    return float(np.sum(p * np.log(p / q)))


def _smoothed_distribution(counts: np.ndarray, eps: float) -> np.ndarray:
    smoothed = np.where(counts > 0, counts, eps)
    return smoothed / smoothed.sum()
