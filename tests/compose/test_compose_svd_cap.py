"""svd with a target rank above the summed rank Σ rᵢ: capped there, exact, and said once (a warning on the
``lorasum`` logger), not silently."""

from __future__ import annotations

import logging

import pytest
import torch
from compose_fixtures import rand_adapter

from lorasum.compose import compose, compose_sum, compose_svd_report


def _warnings(caplog):
    return [r for r in caplog.records if r.name == "lorasum" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("rank, where, most", [(7, "every module", 6), (5, "2 of 3 modules", 4)])
def test_rank_above_the_summed_rank_is_capped_with_one_warning(caplog, rank, where, most):
    """rand_adapter's modules have ranks 2, 3, 2: two adapters sum to 4, 6, 4 (below the shapes' 7)."""
    sources = [rand_adapter(1, shape=(8, 7)), rand_adapter(2, shape=(8, 7))]
    with caplog.at_level(logging.WARNING, logger="lorasum"):
        result, report = compose_svd_report(sources, rank=rank)
    (record,) = _warnings(caplog)
    msg = record.getMessage()
    assert "\n" not in msg and f"rank {rank} capped at the summed rank" in msg
    assert f"at most {most} per module" in msg and where in msg
    assert {m: r.rank_in for m, r in report.items()} == {"l.0.q": 4, "l.0.v": 6, "l.1.q": 4}
    exact = compose_sum(sources)
    for m, f in result.factors.items():
        assert f.rank == min(rank, report[m].rank_in)
        if report[m].rank_in <= rank:
            torch.testing.assert_close(f.delta(), exact.factors[m].delta(), rtol=1e-5, atol=1e-5)


def test_the_registry_path_warns_too(caplog):
    with caplog.at_level(logging.WARNING, logger="lorasum"):
        compose([rand_adapter(1), rand_adapter(2)], "svd", rank=100)
    assert len(_warnings(caplog)) == 1 and "at most 6 per module" in _warnings(caplog)[0].getMessage()


@pytest.mark.parametrize("rank", [1, 4])
def test_a_rank_within_every_summed_rank_does_not_warn(caplog, rank):
    with caplog.at_level(logging.WARNING, logger="lorasum"):
        compose_svd_report([rand_adapter(1), rand_adapter(2)], rank=rank)
    assert _warnings(caplog) == []
