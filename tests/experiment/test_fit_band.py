"""lorasum.experiment.stats.fit_band against numpy's weighted least squares covariance and a coverage check."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lorasum.experiment.stats import fit_band


@pytest.mark.parametrize("n", [3, 8, 50])
def test_band_matches_polyfit_covariance(n):
    rng = np.random.default_rng(n)
    x = rng.uniform(0, 0.2, n)
    y = 120 * x + rng.normal(0, 2, n)
    at = np.linspace(-0.1, 0.3, 7)
    got = fit_band(x, y, at, confidence=0.9)
    # independent: numpy's polyfit with the residual-scaled covariance of (slope, intercept)
    coef, cov = np.polyfit(x, y, 1, cov=True)
    design = np.stack([at, np.ones_like(at)], axis=1)  # (m, 2)
    se = np.sqrt(np.einsum("mi,ij,mj->m", design, cov, design))
    t = stats.t.ppf(0.95, n - 2)
    np.testing.assert_allclose(got["fit"], design @ coef, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got["high"] - got["fit"], t * se, rtol=1e-7)
    np.testing.assert_allclose(got["fit"] - got["low"], t * se, rtol=1e-7)
    assert np.argmin(got["high"] - got["low"]) == np.argmin(np.abs(at - x.mean()))  # narrowest near x̄


def test_band_covers_true_line_about_95_percent():
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 12)
    at = np.array([0.1, 0.9])
    hits = []
    for _ in range(2000):
        y = 2.0 + 3.0 * x + rng.normal(0, 0.5, x.size)
        b = fit_band(x, y, at)
        truth = 2.0 + 3.0 * at
        hits.append((b["low"] <= truth) & (truth <= b["high"]))
    coverage = np.mean(hits, axis=0)
    assert np.all(np.abs(coverage - 0.95) < 0.02), coverage


def test_band_degenerate_input_is_nan():
    at = np.array([0.0, 1.0])
    for x, y in (([1.0, 2.0], [1.0, 2.0]), ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([1, np.nan, 2, 3], [1, 2, np.nan, 4])):
        b = fit_band(x, y, at)
        assert np.isnan(b["fit"]).all() and np.isnan(b["low"]).all()
    with pytest.raises(ValueError):
        fit_band([1, 2, 3], [1, 2], at)
