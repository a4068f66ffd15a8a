from itertools import combinations
from math import comb

import pytest

from lorasum.experiment.grid import adapter_name, plan


def _subsets(domains):
    return {c for k in range(2, len(domains) + 1) for c in combinations(domains, k)}


@pytest.mark.parametrize("n_domains", [2, 3, 4, 5])
def test_plan_has_every_subset_as_sum_and_merged(n_domains):
    domains = [f"d{i}" for i in range(n_domains)]
    p = plan(domains, [0, 1], hybrids=False)
    expected = _subsets(domains)
    assert set(p.subsets) == expected
    assert len(expected) == 2**n_domains - n_domains - 1
    for seed in (0, 1):
        kinds = {(a.kind, a.domains) for a in p.adapters if a.seed == seed}
        assert {("single", (d,)) for d in domains} <= kinds
        assert {("merged", s) for s in expected} <= kinds
        assert {("sum", s) for s in expected} <= kinds
        assert len(kinds) == n_domains + 2 * len(expected)


@pytest.mark.parametrize("n_domains", [2, 3, 4, 5])
def test_hybrids_one_per_subset_of_three_or_more_and_held_out_domain(n_domains):
    domains = tuple(f"d{i}" for i in range(n_domains))
    p = plan(domains, [7])
    hybrids = [a for a in p.adapters if a.kind == "hybrid"]
    # independent count: sum over k >= 3 of C(n, k) subsets times k choices of d
    assert len(hybrids) == sum(comb(n_domains, k) * k for k in range(3, n_domains + 1))
    assert {(a.domains, a.single) for a in hybrids} == {(s, d) for s in _subsets(domains) if len(s) >= 3 for d in s}
    for a in hybrids:
        rest = tuple(d for d in a.domains if d != a.single)
        assert a.method == "sum" and a.seed == 7
        assert a.sources == (f"merged-{'+'.join(rest)}", a.single)
        evals = {e.eval_domain for e in p.evaluations if e.model == a.name}
        assert evals == set(a.domains)  # evaluated on S's domains, like the sums
    assert len({a.name for a in hybrids}) == len(hybrids)


def test_hybrids_switch_off():
    p = plan(["a", "b", "c", "d"], [0], hybrids=False)
    assert not [a for a in p.adapters if a.kind == "hybrid"]
    assert not [e for e in p.evaluations if e.kind == "hybrid"]


def test_methods_add_one_composition_per_subset_with_params():
    domains = ["a", "b", "c"]
    p = plan(domains, [0, 1], methods=["ties", "sum", "svd"], method_params={"ties": {"density": 0.3},
                                                                            "svd": {"rank": 2}})
    assert p.methods == ("sum", "ties", "svd")
    for m, params in (("ties", (("density", 0.3),)), ("svd", (("rank", 2),))):
        jobs = [a for a in p.adapters if a.kind == "composed" and a.method == m]
        assert {(a.domains, a.seed) for a in jobs} == {(s, seed) for s in _subsets(domains) for seed in (0, 1)}
        assert all(a.params == params and a.sources == a.domains for a in jobs)
        assert all(a.name == f"{m}-{'+'.join(a.domains)}" for a in jobs)
        for a in jobs:
            assert {e.eval_domain for e in p.evaluations if e.model == a.name and e.seed == a.seed} == set(a.domains)
            assert all(e.method == m for e in p.evaluations if e.model == a.name)
    # sum is always planned (the headline), also when methods omit it
    assert any(a.kind == "sum" for a in plan(domains, [0], methods=["ties"]).adapters)


def test_sources_come_before_their_compositions_and_names_are_unique():
    p = plan(["a", "b", "c", "d"], [0, 1], methods=["sum", "mean"])
    seen = set()
    for job in p.adapters:
        for src in job.sources:
            assert (src, job.seed) in seen, f"{job.name} planned before its source {src}"
        assert (job.name, job.seed) not in seen
        seen.add((job.name, job.seed))
    assert p.compositions(0) == tuple(a for a in p.adapters if a.seed == 0 and not a.trained)


def test_evaluations_cover_transfer_matrix_and_own_domains():
    domains = ["a", "b", "c"]
    p = plan(domains, [0])
    evals = {(e.model, e.eval_domain) for e in p.evaluations}
    for m in ["base", "a", "b", "c"]:
        assert {(m, d) for d in domains} <= evals
    assert ("sum-a+b", "a") in evals and ("sum-a+b", "b") in evals
    assert ("sum-a+b", "c") not in evals
    assert {("merged-a+b+c", d) for d in domains} <= evals
    # one model's evaluations are contiguous (the runner loads each adapter once)
    order = [e.model for e in p.evaluations]
    assert all(order.index(m) + order.count(m) - 1 == len(order) - 1 - order[::-1].index(m) for m in set(order))


def test_adapter_names():
    assert adapter_name("single", ("math",)) == "math"
    assert adapter_name("sum", ("a", "b")) == "sum-a+b"
    assert adapter_name("composed", ("a", "b"), "ties") == "ties-a+b"
    assert adapter_name("hybrid", ("a", "b", "c"), single="b") == "hybrid-merged-a+c+single-b"


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError):
        plan(["a"], [0])
    with pytest.raises(ValueError):
        plan(["a", "b"], [])
    with pytest.raises(ValueError):
        plan(["a", "a"], [0])
    with pytest.raises(ValueError):
        plan(["a", "b"], [0], methods=["ties", "ties"])
