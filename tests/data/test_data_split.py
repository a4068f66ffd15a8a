"""Group-aware seeded splits, subsampling and leakage checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorasum.data import (
    Record,
    carve_validation,
    check_cross_domain,
    check_leakage,
    find_cross_domain_overlap,
    split_records,
    subsample,
)
from lorasum.errors import ConfigError, DataError


def make(n_groups=60, per_group=(1, 5), domain="d"):
    out, i = [], 0
    for g in range(n_groups):
        for _ in range(per_group[0] + g % (per_group[1] - per_group[0] + 1)):
            out.append(Record(id=f"{domain}/{i}", domain=domain, question=f"q{i}?", answer=f"a{i}", group=f"g{g}"))
            i += 1
    return out


def ids(splits):
    return {k: [r.id for r in v] for k, v in splits.as_dict().items()}


def test_groups_never_straddle_and_fractions_close():
    records = make()
    s = split_records(records, seed=3, validation_fraction=0.1, test_fraction=0.2)
    where = {}
    for name, recs in s.as_dict().items():
        for r in recs:
            where.setdefault(r.group, set()).add(name)
    assert all(len(v) == 1 for v in where.values())
    assert sorted(r.id for v in s.as_dict().values() for r in v) == sorted(r.id for r in records)
    n, biggest = len(records), max(Counter(r.group for r in records).values())
    assert round(0.2 * n) <= len(s.test) < round(0.2 * n) + biggest
    assert round(0.1 * n) <= len(s.validation) < round(0.1 * n) + biggest
    # each split keeps the input order
    pos = {r.id: i for i, r in enumerate(records)}
    assert all([pos[r.id] for r in v] == sorted(pos[r.id] for r in v) for v in s.as_dict().values())
    check_leakage(s)


@settings(max_examples=40, deadline=None)
@given(groups=st.lists(st.integers(0, 15), min_size=4, max_size=80), seed=st.integers(0, 2**31))
def test_split_property(groups, seed):
    records = [Record(id=f"r{i}", domain="d", question=f"q{i}", answer="a", group=f"g{g}") for i, g in enumerate(groups)]
    if len(set(groups)) < 3:
        return
    s = split_records(records, seed=seed, validation_fraction=0.1, test_fraction=0.1)
    seen = [{r.group for r in v} for v in s.as_dict().values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert len(s.train) + len(s.validation) + len(s.test) == len(records) and s.train


def test_deterministic_and_seed_dependent():
    records = make()
    a = ids(split_records(records, seed=0))
    assert a == ids(split_records(list(records), seed=0))
    assert a != ids(split_records(records, seed=1))
    # independent of input order of groups: shuffling the records gives the same group assignment
    rev = ids(split_records(records[::-1], seed=0))
    assert {k: sorted(v) for k, v in rev.items()} == {k: sorted(v) for k, v in a.items()}


_CHILD = """
import json, sys
sys.path.insert(0, {src!r})
from lorasum.data import Record, split_records, subsample
recs = [Record(id=f"r{{i}}", domain="d", question=f"q{{i}}", answer="a", group=f"g{{i % 37}}") for i in range(300)]
s = split_records(recs, seed=7)
print(json.dumps([[r.id for r in v] for v in (s.train, s.validation, s.test)] + [[r.id for r in subsample(recs, 25, seed=7)]]))
"""


def test_independent_of_pythonhashseed():
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    outs = []
    for hs in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hs}
        proc = subprocess.run([sys.executable, "-c", _CHILD.format(src=os.path.abspath(src))], env=env,
                              capture_output=True, text=True, check=True)
        outs.append(json.loads(proc.stdout))
    recs = [Record(id=f"r{i}", domain="d", question=f"q{i}", answer="a", group=f"g{i % 37}") for i in range(300)]
    s = split_records(recs, seed=7)
    here = [[r.id for r in v] for v in (s.train, s.validation, s.test)] + [[r.id for r in subsample(recs, 25, seed=7)]]
    assert outs[0] == outs[1] == here


def test_carve_validation():
    train, val = carve_validation(make(), seed=0, validation_fraction=0.1)
    assert val and train and not {r.group for r in train} & {r.group for r in val}
    assert carve_validation(make(), validation_fraction=0.0)[1] == []


@pytest.mark.parametrize("vf, tf", [(-0.1, 0.1), (0.5, 0.5), (0.1, 1.0)])
def test_bad_fractions(vf, tf):
    with pytest.raises(ConfigError):
        split_records(make(), validation_fraction=vf, test_fraction=tf)


def test_too_few_groups():
    with pytest.raises(DataError, match="no records"):
        split_records([])
    two = [Record(id=f"r{i}", domain="d", question="q", answer="a", group=f"g{i}") for i in range(2)]
    with pytest.raises(DataError, match="no group left for training"):
        split_records(two, validation_fraction=0.1, test_fraction=0.1)


def test_subsample():
    records = make()
    sub = subsample(records, 20, seed=1, purpose="train")
    assert len(sub) == 20 and len({r.id for r in sub}) == 20
    pos = {r.id: i for i, r in enumerate(records)}
    assert [pos[r.id] for r in sub] == sorted(pos[r.id] for r in sub)
    assert sub == subsample(records, 20, seed=1, purpose="train")
    assert sub != subsample(records, 20, seed=2, purpose="train")
    assert sub != subsample(records, 20, seed=1, purpose="test")
    assert subsample(records, None) == records and subsample(records, 10**6) == records
    with pytest.raises(ConfigError):
        subsample(records, 0)


def _r(i, q, a, group):
    return Record(id=f"x/{i}", domain="d", question=q, answer=a, group=group)


def test_leakage_caught():
    clean = {"train": [_r(0, "q0", "a0", "g0")], "validation": [_r(1, "q1", "a1", "g1")], "test": [_r(2, "q2", "a2", "g2")]}
    check_leakage(clean)
    same_group = {**clean, "test": [_r(2, "q2", "a2", "g0")]}
    with pytest.raises(DataError, match="leakage: 1 group value.* train and test, e.g. x/0 and x/2"):
        check_leakage(same_group)
    same_pair = {**clean, "validation": [_r(1, "Q0 ?", "A0.", "g1")]}  # same pair up to case / punctuation
    with pytest.raises(DataError, match="question\\+answer value.* train and validation"):
        check_leakage(same_pair)
    same_id = {**clean, "test": [_r(0, "q2", "a2", "g2")]}
    with pytest.raises(DataError, match="id value"):
        check_leakage(same_id)


def test_cross_domain():
    a = [Record(id="a/0", domain="a", question="What is X?", answer="1"), Record(id="a/1", domain="a", question="Y?", answer="2")]
    b = [Record(id="b/0", domain="b", question="what is x", answer="other")]
    assert find_cross_domain_overlap({"a": a, "b": b}) == [("a", "a/0", "b", "b/0")]
    with pytest.raises(DataError, match=r"cross-domain overlap: 1 question.*a/0 \(a\) and b/0 \(b\)"):
        check_cross_domain({"a": a, "b": b})
    check_cross_domain({"a": a, "b": [Record(id="b/1", domain="b", question="Z?", answer="1")]})
