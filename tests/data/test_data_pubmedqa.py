"""PubMedQA PQA-L reader and official test ids."""

from __future__ import annotations

import re

import pytest
from datafiles import write_json

from lorasum.data import load_pubmedqa, load_pubmedqa_test_ids
from lorasum.errors import DataError

REC = {"QUESTION": "Does X help?", "CONTEXTS": ["Background.", " Methods. "], "LABELS": ["B", "M"],
       "LONG_ANSWER": "X helped in most patients.", "final_decision": "yes"}


def test_load_pubmedqa(tmp_path):
    path = write_json(tmp_path / "ori_pqal.json", {"123": REC, "456": {**REC, "final_decision": "maybe", "QUESTION": "Is Y safe?"}})
    recs = list(load_pubmedqa(path))
    assert [r.id for r in recs] == ["pubmedqa/123", "pubmedqa/456"]
    assert recs[0].answer == "Yes. X helped in most patients."
    assert recs[1].answer == "Maybe. X helped in most patients."
    assert recs[0].context == "" and recs[0].group == "pubmedqa/123" and recs[0].source == "ori_pqal.json:123"
    with_ctx = next(iter(load_pubmedqa(path, include_contexts=True)))
    assert with_ctx.context == "Background.\nMethods."


def test_test_ids(tmp_path):
    path = write_json(tmp_path / "test_ground_truth.json", {"1": "yes", "2": "no"})
    assert load_pubmedqa_test_ids(path) == {"1", "2"}
    with pytest.raises(DataError, match="t.json: expected a JSON object keyed by PMID, got list"):
        load_pubmedqa_test_ids(write_json(tmp_path / "t.json", ["1"]))
    with pytest.raises(DataError, match="e.json: no test ids"):
        load_pubmedqa_test_ids(write_json(tmp_path / "e.json", {}))


@pytest.mark.parametrize(
    "rec, expected",
    [
        ({k: v for k, v in REC.items() if k != "LONG_ANSWER"}, "record 123: missing field 'LONG_ANSWER'"),
        ({**REC, "final_decision": "perhaps"}, "record 123: field 'final_decision' is 'perhaps'"),
        ({**REC, "QUESTION": ["q"]}, "record 123: field 'QUESTION' must be a string, got list"),
        ("text", "record 123: expected an object, got str"),
    ],
)
def test_bad_records(tmp_path, rec, expected):
    path = write_json(tmp_path / "ori_pqal.json", {"123": rec})
    with pytest.raises(DataError, match=re.escape(f"{path}: {expected}")):
        list(load_pubmedqa(path, include_contexts=True))


def test_bad_contexts(tmp_path):
    path = write_json(tmp_path / "ori_pqal.json", {"9": {**REC, "CONTEXTS": "one"}})
    assert next(iter(load_pubmedqa(path))).context == ""  # not read unless asked for
    with pytest.raises(DataError, match="record 9: field 'CONTEXTS' must be a list of strings"):
        list(load_pubmedqa(path, include_contexts=True))
