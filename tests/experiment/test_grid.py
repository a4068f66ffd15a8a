from itertools import combinations

import pytest

from lorasum.experiment.grid import plan


@pytest.mark.parametrize("n_domains", [2, 3, 4])
def test_plan_has_every_subset_as_sum_and_merged(n_domains):
    domains = [f"d{i}" for i in range(n_domains)]
    p = plan(domains, [0, 1])
    expected = {c for k in range(2, n_domains + 1) for c in combinations(domains, k)}
    assert set(p.subsets) == expected
    for seed in (0, 1):
        kinds = {(a.kind, a.domains) for a in p.adapters if a.seed == seed}
        assert {("single", (d,)) for d in domains} <= kinds
        assert {("merged", s) for s in expected} <= kinds
        assert {("sum", s) for s in expected} <= kinds
        assert len(kinds) == n_domains + 2 * len(expected)


def test_sums_come_after_their_sources():
    p = plan(["a", "b", "c"], [0])
    seen = set()
    for job in p.adapters:
        for src in job.sources:
            assert (src, job.seed) in seen, f"{job.name} planned before its source {src}"
        seen.add((job.name, job.seed))


def test_evaluations_cover_transfer_matrix_and_own_domains():
    domains = ["a", "b", "c"]
    p = plan(domains, [0])
    evals = {(e.model, e.eval_domain) for e in p.evaluations}
    for m in ["base", "a", "b", "c"]:
        assert {(m, d) for d in domains} <= evals
    assert ("sum-a+b", "a") in evals and ("sum-a+b", "b") in evals
    assert ("sum-a+b", "c") not in evals
    assert {("merged-a+b+c", d) for d in domains} <= evals


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError):
        plan(["a"], [0])
    with pytest.raises(ValueError):
        plan(["a", "b"], [])
