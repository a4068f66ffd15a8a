"""lorasum.experiment.stats against direct scipy / numpy computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from lorasum.experiment.stats import correlation, mean_std_ci

FIELDS = ("pearson_r", "pearson_p", "spearman_rho", "spearman_p", "slope", "intercept",
          "slope_ci_low", "slope_ci_high", "slope_p")


def _xy(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.05, n)
    return x, 300 * x + rng.normal(0, 3, n)


@pytest.mark.parametrize("n", [3, 5, 20, 100])
def test_correlation_matches_scipy(n):
    x, y = _xy(n, seed=n)
    got = correlation(x, y)
    pr, sr, lr = stats.pearsonr(x, y), stats.spearmanr(x, y), stats.linregress(x, y)
    assert got["n"] == n
    assert got["pearson_r"] == pytest.approx(pr.statistic)
    assert got["pearson_p"] == pytest.approx(pr.pvalue)
    assert got["spearman_rho"] == pytest.approx(sr.statistic)
    assert got["spearman_p"] == pytest.approx(sr.pvalue)
    assert got["slope"] == pytest.approx(lr.slope)
    assert got["intercept"] == pytest.approx(lr.intercept)
    assert got["slope_p"] == pytest.approx(lr.pvalue)
    # slope CI from the textbook standard error (independent of linregress's stderr)
    resid = y - (lr.intercept + lr.slope * x)
    se = math.sqrt(np.sum(resid**2) / (n - 2) / np.sum((x - x.mean()) ** 2))
    half = stats.t.ppf(0.975, n - 2) * se
    assert got["slope_ci_low"] == pytest.approx(lr.slope - half)
    assert got["slope_ci_high"] == pytest.approx(lr.slope + half)
    assert all(isinstance(got[k], float) for k in FIELDS)


def test_slope_ci_covers_true_slope_about_95_percent():
    rng = np.random.default_rng(1)
    hits, trials = 0, 600
    for _ in range(trials):
        x = rng.uniform(0, 1, 8)
        y = 2.0 + 5.0 * x + rng.normal(0, 1, 8)
        c = correlation(x, y)
        hits += c["slope_ci_low"] <= 5.0 <= c["slope_ci_high"]
    assert 0.92 <= hits / trials <= 0.98


def test_correlation_confidence_level_changes_width():
    x, y = _xy(12)
    c95, c50 = correlation(x, y), correlation(x, y, confidence=0.5)
    assert (c50["slope_ci_high"] - c50["slope_ci_low"]) < (c95["slope_ci_high"] - c95["slope_ci_low"])


@pytest.mark.parametrize("n", [0, 1, 2])
def test_correlation_too_few_points_is_nan(n):
    x, y = _xy(n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = correlation(x, y)
    assert got["n"] == n
    assert all(math.isnan(got[k]) for k in FIELDS)


def test_correlation_constant_x_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = correlation([0.1, 0.1, 0.1, 0.1], [1.0, 2.0, 3.0, 5.0])
    assert got["n"] == 4
    assert all(math.isnan(got[k]) for k in FIELDS)


def test_correlation_constant_y_gives_nan_correlation_and_flat_line():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = correlation([0.1, 0.2, 0.3, 0.4], [2.0, 2.0, 2.0, 2.0])
    for k in ("pearson_r", "pearson_p", "spearman_rho", "spearman_p", "slope_p", "slope_ci_low"):
        assert math.isnan(got[k]), k
    assert got["slope"] == pytest.approx(0.0)
    assert got["intercept"] == pytest.approx(2.0)


def test_correlation_drops_non_finite_pairs():
    x, y = _xy(10, seed=3)
    xn, yn = x.copy(), y.copy()
    xn[2], yn[5] = np.nan, np.inf
    keep = np.ones(10, bool)
    keep[[2, 5]] = False
    got = correlation(xn, yn)
    assert got["n"] == 8
    assert got["pearson_r"] == pytest.approx(stats.pearsonr(x[keep], y[keep]).statistic)


def test_correlation_length_mismatch_raises():
    with pytest.raises(ValueError, match="length"):
        correlation([1, 2, 3], [1, 2])


def test_mean_std_ci_matches_numpy_and_contains_mean():
    v = np.random.default_rng(5).normal(3.0, 2.0, 12)
    got = mean_std_ci(v)
    assert got["n"] == 12
    assert got["mean"] == pytest.approx(v.mean())
    assert got["std"] == pytest.approx(v.std(ddof=1))
    assert got["ci_low"] < got["mean"] < got["ci_high"]


def test_mean_std_ci_agrees_with_a_hand_made_percentile_bootstrap():
    v = np.random.default_rng(7).exponential(2.0, 15)
    got = mean_std_ci(v, n_boot=20000)
    rng = np.random.default_rng(123)
    means = v[rng.integers(0, v.size, (40000, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    tol = 0.05 * v.std(ddof=1)
    assert got["ci_low"] == pytest.approx(lo, abs=tol)
    assert got["ci_high"] == pytest.approx(hi, abs=tol)


def test_mean_std_ci_deterministic_with_seed():
    v = [1.0, 4.0, 2.5, 3.0, 7.0]
    a, b, c = mean_std_ci(v, seed=3), mean_std_ci(v, seed=3), mean_std_ci(v, seed=4)
    assert a == b
    assert (a["ci_low"], a["ci_high"]) != (c["ci_low"], c["ci_high"])


def test_mean_std_ci_confidence_narrows_interval():
    v = np.random.default_rng(2).normal(0, 1, 20)
    wide, narrow = mean_std_ci(v, confidence=0.99), mean_std_ci(v, confidence=0.5)
    assert wide["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < wide["ci_high"]


def test_mean_std_ci_small_and_degenerate_inputs():
    one = mean_std_ci([2.5])
    assert one["n"] == 1 and one["mean"] == 2.5
    assert math.isnan(one["std"]) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    empty = mean_std_ci([])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("mean", "std", "ci_low", "ci_high"))
    two = mean_std_ci([1.0, 3.0])
    assert two["n"] == 2 and 1.0 <= two["ci_low"] <= 2.0 <= two["ci_high"] <= 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        const = mean_std_ci([4.0, 4.0, 4.0])
    assert const["std"] == 0.0 and const["ci_low"] == const["ci_high"] == 4.0
    with_nan = mean_std_ci([1.0, float("nan"), 3.0, float("inf")])
    assert with_nan["n"] == 2 and with_nan["mean"] == 2.0
