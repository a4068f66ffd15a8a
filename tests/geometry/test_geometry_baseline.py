"""Random-baseline formulas against an independent dense Monte Carlo in numpy (seeded)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lorasum.geometry import (expected_abs_cosine, expected_abs_cosine_dense, expected_cos2, expected_rms_cosine,
                              monte_carlo_cosine)

SAMPLES = 4000  # |cos| has a coefficient of variation ≈ 0.8: standard error ≈ 1.3 % of the mean


def _dense_mc(d_out, d_in, r1, r2, seed, samples=SAMPLES, full_rank=False):
    """cos of independent ΔW = B·A with Gaussian factors (or full Gaussian matrices), formed densely."""
    rng = np.random.default_rng(seed)
    if full_rank:
        X, Y = rng.standard_normal((2, samples, d_out, d_in))
    else:
        X = rng.standard_normal((samples, d_out, r1)) @ rng.standard_normal((samples, r1, d_in))
        Y = rng.standard_normal((samples, d_out, r2)) @ rng.standard_normal((samples, r2, d_in))
    c = np.einsum("sij,sij->s", X, Y) / (np.linalg.norm(X, axis=(1, 2)) * np.linalg.norm(Y, axis=(1, 2)))
    return c


@pytest.mark.parametrize("d_out, d_in, r1, r2", [(12, 9, 1, 1), (12, 9, 2, 3), (20, 16, 4, 4), (6, 5, 8, 8)])
def test_formulas_against_dense_monte_carlo(d_out, d_in, r1, r2):
    c = _dense_mc(d_out, d_in, r1, r2, seed=d_out + r1)
    se_abs = np.abs(c).std() / math.sqrt(c.size)
    se_sq = (c ** 2).std() / math.sqrt(c.size)
    # E[cos²] = 1/(d_out d_in) is exact: only Monte Carlo noise
    assert abs((c ** 2).mean() - expected_cos2(d_out, d_in)) < 4 * se_sq
    # E|cos| is an approximation (≤ 1.3 % off in the module docstring's checks)
    assert abs(np.abs(c).mean() - expected_abs_cosine(d_out, d_in, r1, r2)) < 4 * se_abs + 0.015 * np.abs(c).mean()
    mc = monte_carlo_cosine(d_out, d_in, r1, r2, samples=SAMPLES, seed=1)
    assert mc["samples"] == SAMPLES
    assert abs(mc["mean_abs"] - np.abs(c).mean()) < 4 * math.hypot(se_abs, mc["se_abs"])
    assert abs(mc["mean_sq"] - (c ** 2).mean()) < 4 * math.hypot(se_sq, mc["se_sq"])


def test_dense_full_rank_exact_and_rank_limits():
    c = _dense_mc(7, 5, 0, 0, seed=9, full_rank=True)
    assert abs(np.abs(c).mean() - expected_abs_cosine_dense(7, 5)) < 4 * np.abs(c).std() / math.sqrt(c.size)
    D = 768 * 768
    assert expected_abs_cosine_dense(768, 768) == pytest.approx(math.sqrt(2 / (math.pi * D)), rel=1e-5)
    assert expected_abs_cosine(30, 40, 1) == pytest.approx(2 / math.pi / math.sqrt(1200), rel=1e-12)
    vals = [expected_abs_cosine(768, 768, r) for r in (1, 2, 4, 16, 64)]
    assert vals == sorted(vals) and vals[-1] < math.sqrt(2 / math.pi) / 768
    assert vals[-1] == pytest.approx(math.sqrt(2 / math.pi) / 768, rel=1e-3)


def test_expected_rms_cosine_and_errors():
    assert expected_rms_cosine([(4, 8), (2, 2), None]) == pytest.approx(math.sqrt((1 / 32 + 1 / 4 + 0) / 3))
    assert expected_rms_cosine([(768, 768)]) == pytest.approx(1 / 768)
    with pytest.raises(ValueError):
        expected_rms_cosine([])
    with pytest.raises(ValueError):
        expected_abs_cosine(0, 3, 1)
    with pytest.raises(ValueError):
        monte_carlo_cosine(3, 3, 1, samples=0)
    a = monte_carlo_cosine(5, 4, 2, samples=50, seed=3)
    assert a == monte_carlo_cosine(5, 4, 2, samples=50, seed=3)
    assert a != monte_carlo_cosine(5, 4, 2, samples=50, seed=4)
