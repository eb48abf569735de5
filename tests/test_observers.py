"""bitsmith.observers: ranges on known distributions, streaming equals one batch, exact histogram
widening, and memory that does not grow with the amount of data observed."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from bitsmith import formats
from bitsmith.errors import DataError, UsageError
from bitsmith.observers import (EntropyObserver, MinMaxObserver, MSEObserver, PercentileObserver,
                                StreamingHistogram)

BATCH = 100_000
OBSERVERS = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "mse_int4": lambda: MSEObserver("int4"),
    "entropy": EntropyObserver,
}


def gaussian_batches(count: int = 10, outliers_per_batch: int = 0, outlier: float = 30.0, seed: int = 0):
    """N(0, 1) batches; the first few values of each replaced by +-outlier."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        batch = rng.standard_normal(BATCH).astype(np.float32)
        batch[:outliers_per_batch] = outlier * rng.choice([-1.0, 1.0], outliers_per_batch)
        yield batch


def observed(observer, batches):
    for batch in batches:
        observer.observe(batch)
    return observer.range()


# ---------------------------------------------------------------------------------------------
# Known distributions
# ---------------------------------------------------------------------------------------------
def test_minmax_keeps_outliers_the_others_clip_them():
    clean = {name: observed(make(), gaussian_batches()) for name, make in OBSERVERS.items()}
    noisy = {name: observed(make(), gaussian_batches(outliers_per_batch=5)) for name, make in OBSERVERS.items()}
    assert noisy["minmax"] == (-30.0, 30.0)
    for name in ("percentile", "mse_int4", "entropy"):
        low, high = noisy[name]
        assert -6.0 < low < -1.5 and 1.5 < high < 6.0, (name, noisy[name])
        # the estimate hardly moves when 0.005% of the data turns into outliers
        assert high == pytest.approx(clean[name][1], rel=0.25), (name, clean[name], noisy[name])



def test_percentile_of_a_gaussian():
    low, high = observed(PercentileObserver(99.9), gaussian_batches(count=3))
    assert low == pytest.approx(-3.09, abs=0.1) and high == pytest.approx(3.09, abs=0.1)


def test_mse_clipping_depends_on_the_format():
    # Clipping a Gaussian at about 2.5 sigma is MSE-optimal for 4 bits; FP8 E4M3 and wide uniform
    # data lose nothing to rounding that clipping could win back.
    low4, high4 = observed(MSEObserver("int4"), gaussian_batches(count=3))
    assert 2.0 < high4 < 3.0 and -3.0 < low4 < -2.0
    _, high_fp8 = observed(MSEObserver("fp8_e4m3"), gaussian_batches(count=3))
    assert high_fp8 > 4.0
    uniform = np.random.default_rng(1).uniform(-1, 1, 300_000).astype(np.float32)
    _, high8 = observed(MSEObserver("int8"), [uniform])
    assert high8 > 0.95


def test_mse_range_really_lowers_the_error():
    data = next(gaussian_batches(outliers_per_batch=5))
    low, high = observed(MSEObserver("int4"), [data])
    clipped = formats.choose_spec(None, "int4", amin=low, amax=high)
    full = formats.choose_spec(data, "int4")
    assert formats.quantization_error(data, clipped) < 0.5 * formats.quantization_error(data, full)


def test_asymmetric_data_keeps_its_lower_bound():
    relu = np.maximum(next(gaussian_batches()), 0)
    for observer in (PercentileObserver(), MSEObserver("uint8", symmetric=False), EntropyObserver()):
        low, high = observed(observer, [relu])
        assert 0.0 <= low < 0.01 and 1.5 < high <= relu.max(), (type(observer).__name__, low, high)


def test_constant_data_gives_its_value():
    for observer in (MinMaxObserver(), PercentileObserver(), MSEObserver(), EntropyObserver()):
        assert observed(observer, [np.full(10, 2.5, np.float32)] * 3) == (2.5, 2.5)


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------
def test_minmax_streaming_equals_one_batch():
    batches = list(gaussian_batches(outliers_per_batch=1, seed=3))
    assert observed(MinMaxObserver(), batches) == observed(MinMaxObserver(), [np.concatenate(batches)])


def test_minmax_per_channel_streaming_equals_one_batch():
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((8, 5, 3)).astype(np.float32) * np.arange(1, 6)[None, :, None] for _ in range(10)]
    streamed = observed(MinMaxObserver(axis=1), batches)
    whole = observed(MinMaxObserver(axis=1), [np.concatenate(batches)])
    assert all(np.array_equal(a, b) for a, b in zip(streamed, whole))
    assert streamed[1].shape == (5,)
    with pytest.raises(DataError):
        observed(MinMaxObserver(axis=1), [np.ones((2, 3)), np.ones((2, 4))])


def test_histogram_widening_is_exact():
    # First batch spans [0, 2047] (2048 bins of width 1); the second forces a 4x wider, re-aligned
    # range. Half-integers never sit on a bin edge, so a direct histogram must match exactly.
    rng = np.random.default_rng(5)
    first = np.concatenate([[0.0, 2047.0], rng.integers(0, 2047, 5000) + 0.5])
    second = np.concatenate([[-3000.0, 5000.0], rng.integers(-3000, 5000, 5000) + 0.5])
    histogram = StreamingHistogram(2048)
    for batch in (first, second):
        histogram.add(batch, batch.min(), batch.max())
    assert histogram.width == 4.0 and histogram.lo <= -3000 and histogram.hi >= 5000
    direct, _ = np.histogram(np.concatenate([first, second]), bins=2048, range=(histogram.lo, histogram.hi))
    assert np.array_equal(histogram.counts, direct)


def test_histogram_observers_streaming_close_to_one_batch():
    batches = list(gaussian_batches(count=5, outliers_per_batch=2, seed=6))
    batches = [b * (1 + i) for i, b in enumerate(batches)]  # every batch widens the range
    for make in (PercentileObserver, lambda: MSEObserver("int4"), EntropyObserver):
        streamed = observed(make(), batches)
        whole = observed(make(), [np.concatenate(batches)])
        assert streamed == pytest.approx(whole, rel=0.05)


def test_bad_batches_and_arguments_are_reported():
    for observer in (MinMaxObserver(), PercentileObserver(), MSEObserver(), EntropyObserver()):
        with pytest.raises(DataError, match="NaN or Inf"):
            observer.observe(np.array([1.0, np.nan]))
        with pytest.raises(DataError, match="no data"):
            observer.range()
    with pytest.raises(UsageError):
        MSEObserver("mxfp4")
    with pytest.raises(UsageError):
        PercentileObserver(20.0)


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
def peak_memory(make, batches: int) -> int:
    rng = np.random.default_rng(7)
    tracemalloc.start()
    try:
        observer = make()
        for _ in range(batches):
            observer.observe(rng.standard_normal(BATCH).astype(np.float32) * 3)
        observer.range()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_memory_does_not_grow_with_the_data(name):
    one, ten = peak_memory(OBSERVERS[name], 1), peak_memory(OBSERVERS[name], 10)
    assert ten <= 1.1 * one, (one, ten)
