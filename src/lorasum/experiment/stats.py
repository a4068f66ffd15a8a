"""Summary statistics for experiment results: seed means with bootstrap CIs, correlations.

Pure numpy/scipy. Every function returns plain ``float``/``int`` values and never raises on
degenerate input (too few points, constant values): the undefined fields are ``NaN``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["mean_std_ci", "correlation", "fit_band"]

_NAN = float("nan")



def _finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    """x and y as float arrays, keeping the positions where both are finite.

    Raises:
        ValueError: ``x`` and ``y`` differ in length.
    """
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y differ in length: {xa.size} != {ya.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep]

def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def mean_std_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean, sample standard deviation and percentile-bootstrap CI of the mean.

    Args:
        values: 1-D sequence of numbers (e.g. one Δ perplexity % per seed); NaN and inf
            entries are dropped before anything is computed.
        confidence: two-sided confidence level of the interval, in (0, 1).
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap's random generator (same seed, same interval).

    Returns:
        ``{"mean", "std", "ci_low", "ci_high", "n"}``: ``std`` uses ddof=1; the interval is the
        percentile bootstrap of the mean (Efron & Tibshirani 1993, ch. 13) computed with
        ``scipy.stats.bootstrap(method="percentile")``. ``n`` counts the finite values.
        With n = 0 everything but ``n`` is NaN; with n = 1, ``std`` and the CI are NaN.
        Constant values give a zero-width interval at the value.
    """
    arr = _finite(values)
    n = int(arr.size)
    out = {"mean": _NAN, "std": _NAN, "ci_low": _NAN, "ci_high": _NAN, "n": n}
    if n == 0:
        return out
    out["mean"] = float(arr.mean())
    if n == 1:
        return out
    out["std"] = float(arr.std(ddof=1))
    if np.ptp(arr) == 0:
        out["ci_low"] = out["ci_high"] = float(arr[0])
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (arr,),
            np.mean,
            n_resamples=n_boot,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    out["ci_low"] = float(res.confidence_interval.low)
    out["ci_high"] = float(res.confidence_interval.high)
    return out


def _as_float(v: object) -> float:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _NAN
    return f if math.isfinite(f) else _NAN


def correlation(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """Pearson and Spearman correlation and the least-squares line y ≈ intercept + slope·x.

    Used for the paper's claim that RMS cosine (x) grows roughly linearly with the
    perplexity change (y) (arXiv 2508.11985).

    Args:
        x, y: equal-length 1-D sequences; pairs where either value is NaN/inf are dropped.
        confidence: two-sided level of the slope interval.

    Returns:
        ``{"n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "slope", "intercept",
        "slope_ci_low", "slope_ci_high", "slope_p"}`` from ``scipy.stats.pearsonr``,
        ``spearmanr`` and ``linregress``. The slope interval is
        slope ± t_{(1+confidence)/2, n-2} · stderr (Student t with n − 2 degrees of freedom).
        With n < 3 every field but ``n`` is NaN (two points always give r = ±1 and no error
        estimate). Constant x gives NaN everywhere; constant y gives NaN correlations and
        p-values while the line is flat (slope 0, intercept = the constant). Never raises on
        such input; scipy's warnings are silenced.

    Raises:
        ValueError: ``x`` and ``y`` differ in length.
    """
    xa, ya = _finite_pairs(x, y)
    n = int(xa.size)
    keys = ("pearson_r", "pearson_p", "spearman_rho", "spearman_p", "slope", "intercept",
            "slope_ci_low", "slope_ci_high", "slope_p")
    out: dict[str, float] = {"n": n, **dict.fromkeys(keys, _NAN)}
    if n < 3 or np.ptp(xa) == 0:
        return out
    y_const = np.ptp(ya) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not y_const:
            pr = stats.pearsonr(xa, ya)
            sr = stats.spearmanr(xa, ya)
            out.update(pearson_r=_as_float(pr.statistic), pearson_p=_as_float(pr.pvalue),
                       spearman_rho=_as_float(sr.statistic), spearman_p=_as_float(sr.pvalue))
        lr = stats.linregress(xa, ya)
    out["slope"], out["intercept"] = _as_float(lr.slope), _as_float(lr.intercept)
    if y_const:
        return out
    t = stats.t.ppf(0.5 + confidence / 2, n - 2)
    se = _as_float(lr.stderr)
    out.update(slope_ci_low=out["slope"] - t * se, slope_ci_high=out["slope"] + t * se,
               slope_p=_as_float(lr.pvalue))
    return out


def fit_band(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    at: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """Least-squares line y ≈ a + b·x and the pointwise confidence band of its mean at ``at``.

    The band is ŷ(x₀) ± t_{(1+confidence)/2, n−2} · s · sqrt(1/n + (x₀ − x̄)² / Σ(xᵢ − x̄)²), with
    s² = Σ residual² / (n − 2): the interval for the *mean* response of ordinary least squares
    (e.g. Montgomery, Peck & Vining, Introduction to Linear Regression Analysis, eq. 2.43); it
    is not a prediction interval for new points.

    Args:
        x, y: equal-length 1-D sequences; pairs with a NaN/inf are dropped.
        at: x values, shape (m,), where the line and band are evaluated.
        confidence: two-sided level, in (0, 1).

    Returns:
        ``{"x", "fit", "low", "high"}``, each an (m,) float array. With fewer than 3 finite
        points or constant x every array but ``x`` is NaN.

    Raises:
        ValueError: ``x`` and ``y`` differ in length.
    """
    xa, ya = _finite_pairs(x, y)
    x0 = np.asarray(at, dtype=float).ravel()
    nan = np.full(x0.shape, np.nan)
    n = xa.size
    if n < 3 or np.ptp(xa) == 0:
        return {"x": x0, "fit": nan, "low": nan, "high": nan}
    xbar = xa.mean()
    sxx = float(((xa - xbar) ** 2).sum())
    slope = float(((xa - xbar) * (ya - ya.mean())).sum()) / sxx
    intercept = float(ya.mean()) - slope * xbar
    resid = ya - (intercept + slope * xa)
    s = math.sqrt(float((resid**2).sum()) / (n - 2))
    fit = intercept + slope * x0
    half = stats.t.ppf(0.5 + confidence / 2, n - 2) * s * np.sqrt(1.0 / n + (x0 - xbar) ** 2 / sxx)
    return {"x": x0, "fit": fit, "low": fit - half, "high": fit + half}
