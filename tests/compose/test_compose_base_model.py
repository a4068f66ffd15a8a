"""Composition and the base-model record; svd without rounding-level directions; parameter checks and the
warning when trimming keeps no entry."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from compose_fixtures import dense_np, rand_adapter

from lorasum.adapters import Adapter, BaseModelRecord, LoraFactor
from lorasum.compose import (compose, compose_magnitude_prune, compose_sum, compose_svd, compose_svd_report,
                             compose_task_arithmetic, compose_ties)
from lorasum.errors import AdapterError, ConfigError

BASE = BaseModelRecord(name="tiny", source="/models/tiny", arch="gpt2", config_hash="a" * 64)
COPY = BaseModelRecord(name="tiny", source="/copy/tiny", arch="gpt2", config_hash="a" * 64)
OTHER = BaseModelRecord(name="tiny", source="/models/tiny", arch="gpt2", config_hash="b" * 64)


def recorded(seed, record, **kw):
    a = rand_adapter(seed, **kw)
    a.base_record, a.base_model = record, "tiny"
    return a


@pytest.mark.parametrize("method, params", [("sum", {}), ("mean", {}), ("task_arithmetic", {"scale": 0.5}),
                                            ("svd", {"rank": 2})])
def test_low_rank_results_carry_the_first_record(method, params):
    out = compose([rand_adapter(1), recorded(2, BASE), recorded(3, COPY)], method, **params)
    assert out.base_record == BASE and out.base_model == "tiny"
    assert compose([rand_adapter(1), rand_adapter(2)], method, **params).base_record is None


@pytest.mark.parametrize("method, params", [("sum", {}), ("svd", {"rank": 2}), ("ties", {}),
                                            ("magnitude_prune", {}), ("dare_linear", {})])
def test_every_method_refuses_different_base_models(method, params):
    """Same name, same source, but another config hash: a different model (e.g. the folder was replaced)."""
    with pytest.raises(AdapterError, match=r"different base models: adapter #0 on /models/tiny \(model_type gpt2, "
                                           r"config aaaaaaaaaaaa\), adapter #1 on /models/tiny \(model_type gpt2, "
                                           r"config bbbbbbbbbbbb\)"):
        compose([recorded(1, BASE), recorded(2, OTHER)], method, **params)


def test_a_copy_of_the_base_model_is_composed_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="lorasum"):
        compose_sum([recorded(1, BASE), recorded(2, COPY)])
    assert any("same config" in r.getMessage() and "/copy/tiny" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf, "x", None, True])
def test_task_arithmetic_refuses_a_bad_scale(scale):
    with pytest.raises(ConfigError, match="scale must be a"):
        compose_task_arithmetic([rand_adapter(1), rand_adapter(2)], scale=scale)


def test_task_arithmetic_scale_is_exact_against_numpy():
    srcs = [rand_adapter(1), rand_adapter(2)]
    out = compose_task_arithmetic(srcs, scale=-0.7)
    for m, f in out.factors.items():
        want = -0.7 * (dense_np(srcs[0], m) + dense_np(srcs[1], m))
        np.testing.assert_allclose(f.delta().double().numpy(), want, rtol=1e-5, atol=1e-6)


# -- svd: rounding-level singular values are dropped -------------------------------------------------------


def _numerical_rank(x: np.ndarray) -> int:
    return int(np.linalg.matrix_rank(x))  # tolerance σ₁·max(shape)·ε, independently of lorasum


@pytest.mark.parametrize("weights", [[1.0, 1.0], [0.3, 0.7], [2.0, -1.0], [1e-3, 5.0]])
def test_svd_of_a_sum_with_shared_directions_keeps_only_its_rank(weights):
    """w₁ a + w₂ a has the rank r of a: asking for more keeps r directions (numpy's matrix_rank agrees),
    and ΔW = (w₁ + w₂) ΔW_a with the directions of ΔW_a."""
    a = rand_adapter(5, shape=(40, 24), rank=3)
    out, report = compose_svd_report([a, a], rank=10, weights=weights)
    for m, f in out.factors.items():
        want = sum(weights) * dense_np(a, m)
        assert f.rank == report[m].rank == _numerical_rank(want) == a.factors[m].rank
        assert report[m].rank_in == 2 * a.factors[m].rank
        np.testing.assert_allclose(f.delta().double().numpy(), want, rtol=0, atol=1e-5 * np.abs(want).max())
        # the kept directions span ΔW_a's column space: projecting B_a onto them loses nothing
        q, _ = np.linalg.qr(f.B.double().numpy())
        Ba = a.factors[m].B.double().numpy()
        assert np.linalg.norm(Ba - q @ (q.T @ Ba)) < 1e-6 * np.linalg.norm(Ba)
        s = report[m].singular_values
        assert all(x <= report[m].tolerance for x in s[f.rank:]) and s[f.rank - 1] > 1e3 * report[m].tolerance


def test_svd_of_overlapping_sources_matches_numpy_rank():
    """a + b + (a − b)/2: rank r_a + r_b, not 3 blocks' worth of directions."""
    a, b = rand_adapter(1, shape=(30, 20)), rand_adapter(2, shape=(30, 20))
    out, report = compose_svd_report([a, b, a, b], rank=50, weights=[1.0, 1.0, 0.5, -0.5])
    for m, f in out.factors.items():
        want = 1.5 * dense_np(a, m) + 0.5 * dense_np(b, m)
        assert f.rank == _numerical_rank(want) == a.factors[m].rank + b.factors[m].rank
        np.testing.assert_allclose(f.delta().double().numpy(), want, rtol=0, atol=1e-5 * np.abs(want).max())
        assert report[m].rel_error == pytest.approx(0.0, abs=1e-12)


def test_svd_of_a_sum_that_cancels_is_exactly_zero():
    """a − a is 0: no direction is kept (not σ₁-relative noise); the module is still written as one zero
    direction, and the report says rank 0, no error, all energy."""
    a = rand_adapter(7, shape=(16, 12))
    out, report = compose_svd_report([a, a], rank=4, weights=[0.3, -0.3])
    for m, f in out.factors.items():
        assert f.rank == 1 and float(f.delta().abs().max()) == 0.0
        assert report[m].rank == 0 and report[m].rel_error == 0.0 and report[m].energy == 1.0


def test_svd_truncation_still_below_the_numerical_rank():
    """k below the numerical rank truncates to exactly k (Eckart–Young, as before)."""
    srcs = [rand_adapter(s, shape=(9, 7)) for s in (1, 2, 3)]
    out = compose_svd(srcs, rank=2)
    assert {f.rank for f in out.factors.values()} == {2}


def test_svd_report_is_json_ready():
    import json

    _, report = compose_svd_report([rand_adapter(1), rand_adapter(2)], rank=2)
    for r in report.values():
        d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
        assert d["tolerance"] == r.tolerance > 0 and d["rank"] == 2


# -- trimming that keeps nothing ------------------------------------------------------------------------


def _small(seed):
    """Modules of 4×3 = 12 and 8×6 = 48 entries."""
    g = torch.Generator().manual_seed(seed)
    return Adapter(factors={"l.0.q": LoraFactor(A=torch.randn(2, 3, generator=g), B=torch.randn(4, 2, generator=g),
                                                scaling=1.0),
                            "l.0.v": LoraFactor(A=torch.randn(2, 6, generator=g), B=torch.randn(8, 2, generator=g),
                                                scaling=1.0)})


@pytest.mark.parametrize("fn", [compose_ties, compose_magnitude_prune])
def test_trimming_to_zero_is_a_warning_not_an_error(fn, caplog):
    srcs = [_small(1), _small(2)]
    with caplog.at_level(logging.WARNING, logger="lorasum"):
        dd = fn(srcs, density=0.05)  # ⌊0.6⌋ = 0 of 12, ⌊2.4⌋ = 2 of 48
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "keeps no entry in 1 of 2 modules (l.0.q" in msgs[0]
    assert "at least 0.0833" in msgs[0]  # 1/12
    assert float(dd.deltas["l.0.q"].abs().max()) == 0.0 and int((dd.deltas["l.0.v"] != 0).sum()) >= 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lorasum"):
        dd = fn(srcs, density=0.01)
    assert "any of the 2 modules" in caplog.records[0].getMessage()
    assert all(float(d.abs().max()) == 0.0 for d in dd.deltas.values())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lorasum"):
        fn(srcs, density=0.1)  # ⌊1.2⌋ = 1: every module keeps an entry
    assert not caplog.records
