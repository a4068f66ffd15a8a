"""The report says per domain how many training and test examples were cut at data.max_length (results.json's
data.<domain>.truncation); results.json files without the counts still render, without the columns."""

from __future__ import annotations

import copy

import pytest
from report_fixtures import make_results, md_tables

from lorasum.report import write_report
from lorasum.report.render import verdict


def _counts(examples, truncated, answer_cut, **extra):
    return {"examples": examples, "truncated": truncated, "answer_cut": answer_cut,
            "prompt_only": truncated - answer_cut, "question_cut": 0, "answer_tokens": 100,
            "answer_tokens_cut": 10 * answer_cut, "dropped": 0, **extra}


def _with_truncation(results):
    results = copy.deepcopy(results)
    splits = {"math": (_counts(64, 38, 38), _counts(32, 24, 24)),
              "medicine": (_counts(64, 43, 40), _counts(32, 0, 0)),
              "finance": (_counts(64, 64, 0), _counts(32, 32, 0))}
    for dom, (train, test) in splits.items():
        results["data"][dom]["truncation"] = {"max_length": 128, "long_rows": "truncate", "splits": {
            "train": train, "validation": _counts(16, 0, 0), "test": test}}
    return results


def _report(results, tmp_path):
    written = write_report(results, tmp_path)
    return written["report.md"].read_text(encoding="utf-8"), written["report.html"].read_text(encoding="utf-8")


def test_data_table_counts_cut_training_and_test_examples(tmp_path):
    md, html = _report(_with_truncation(make_results()), tmp_path)
    rows = {r[0]: r for r in md_tables(md)["Data"]}
    assert rows["math"][6:] == ["38 of 64 (59 %), 38 answers cut", "24 of 32 (75 %), 24 answers cut"]
    assert rows["medicine"][6:] == ["43 of 64 (67 %), 40 answers cut", "0 of 32"]
    assert rows["finance"][6:] == ["64 of 64 (100 %), context/question only", "32 of 32 (100 %), context/question only"]
    assert "| train cut | test cut |" in md
    assert "examples longer than data.max_length (128 tokens), cut to fit it" in md
    assert '<th class="r">train cut</th>' in html and "38 of 64 (59 %), 38 answers cut" in html


def test_verdict_warns_when_answers_were_cut():
    text = verdict(_with_truncation(make_results()))
    assert ("examples longer than data.max_length (128 tokens) were cut, and the end of the answer was lost in "
            "math (59 % of its training and 75 % of its test examples) and medicine (62 % of its training "
            "examples)") in text
    assert "and finance" not in text.split("the end of the answer was lost in")[1]  # its answers are whole


def test_results_without_the_counts_render_as_before(tmp_path):
    """results.json of earlier runs (and schema 1) has no truncation counts: no columns, no caveat."""
    for results in (make_results(), make_results(version=1)):
        md, _ = _report(results, tmp_path)
        header = next(line for line in md.splitlines() if line.startswith("| domain | train |"))
        assert header == "| domain | train | validation | test | content hash | sources (records) |"
        assert "train cut" not in md and "answer was lost" not in md


@pytest.mark.parametrize("bad", [None, "many", {"splits": "x"}, {"splits": {"train": {"examples": 3, "truncated": 5}}},
                                 {"splits": {"train": {"examples": -1, "truncated": 0}}},
                                 {"splits": {"train": {"examples": 4, "truncated": True}}}])
def test_malformed_counts_show_a_dash(bad, tmp_path):
    results = _with_truncation(make_results())
    results["data"]["math"]["truncation"] = bad
    md, _ = _report(results, tmp_path)
    rows = {r[0]: r for r in md_tables(md)["Data"]}
    assert rows["math"][6:] == ["—", "—"]
    assert rows["finance"][7] == "32 of 32 (100 %), context/question only"


def test_sliding_windows_and_dropped_rows(tmp_path):
    results = _with_truncation(make_results())
    splits = results["data"]["math"]["truncation"]["splits"]
    splits["test"] = _counts(32, 0, 0, sliding_windows=True)
    splits["train"] = _counts(60, 0, 0, dropped=4)
    md, _ = _report(results, tmp_path)
    rows = {r[0]: r for r in md_tables(md)["Data"]}
    assert rows["math"][6:] == ["0 of 60; 4 dropped", "0 (sliding windows)"]
