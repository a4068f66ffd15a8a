"""The real data under $LORASUM_DATA_ROOT: published record counts and the presets' splits.

Skipped (with the reason) when LORASUM_DATA_ROOT is unset or missing. The expected counts
come from each data set's PROVENANCE.md / paper, not from lorasum.
"""

from __future__ import annotations

import pytest

from lorasum.data import (
    DOMAINS,
    check_cross_domain,
    check_leakage,
    load_domain,
    load_gsm8k,
    load_pubmedqa,
    load_pubmedqa_test_ids,
    load_tatqa,
)


@pytest.fixture(scope="module")
def domains(real_root):
    """Every preset loaded once (MedQuAD's 5,497 XML files are parsed once per module)."""
    return {name: load_domain(name, real_root) for name in DOMAINS}


def test_gsm8k_counts(real_root):
    base = real_root / "gsm8k/grade_school_math/data"
    train, test = list(load_gsm8k(base / "train.jsonl")), list(load_gsm8k(base / "test.jsonl"))
    assert (len(train), len(test)) == (7473, 1319)
    assert not any("<<" in r.answer or ">>" in r.answer for r in train + test)
    assert all(r.answer.splitlines()[-1].startswith("#### ") for r in train + test)


def test_tatqa_counts(real_root):
    base = real_root / "tatqa/dataset_raw"
    s_dev, s_test = {}, {}
    dev = list(load_tatqa(base / "tatqa_dataset_dev.json", stats=s_dev))
    test = list(load_tatqa(base / "tatqa_dataset_test_gold.json", stats=s_test))
    assert (len(dev), len(test)) == (1668, 1663)
    assert (s_dev["contexts"], s_test["contexts"]) == (278, 277)
    assert not {r.group for r in dev} & {r.group for r in test}


def test_pubmedqa_counts(real_root):
    base = real_root / "pubmedqa/data"
    recs = list(load_pubmedqa(base / "ori_pqal.json"))
    test_ids = load_pubmedqa_test_ids(base / "test_ground_truth.json")
    assert len(recs) == 1000 and len(test_ids) == 500
    assert test_ids <= {r.id.split("/", 1)[1] for r in recs}
    assert {r.answer.split(".", 1)[0] for r in recs} == {"Yes", "No", "Maybe"}


def test_medquad_counts(domains):
    report = domains["medicine"].report
    assert report["files"] == 5497
    assert report["pairs"] == 16412 and report["empty_answers"] == 5
    assert report["loaded"] == 16407  # answered pairs before deduplication
    assert report["cleaning"]["exact_duplicates"] == 48


@pytest.mark.parametrize("name", DOMAINS)
def test_presets_split_cleanly(domains, name):
    dd = domains[name]
    assert dd.train and dd.validation and dd.test
    check_leakage({"train": dd.train, "validation": dd.validation, "test": dd.test})
    assert len({r.id for r in dd.train + dd.validation + dd.test}) == len(dd.train) + len(dd.validation) + len(dd.test)
    official = {"math": 1319, "pubmedqa": 500}
    if name in official:
        assert len(dd.test) == official[name]


def test_no_question_shared_across_domains(domains):
    check_cross_domain({k: v.train + v.validation + v.test for k, v in domains.items()})
