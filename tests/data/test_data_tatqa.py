"""TAT-QA reader: answer formatting with scales, context rendering, grouping, bad input."""

from __future__ import annotations

import re

import pytest
from datafiles import tatqa_context, write_json

from lorasum.data import format_tatqa_answer, load_tatqa
from lorasum.data.sources.tatqa import format_number, render_context
from lorasum.errors import DataError


@pytest.mark.parametrize(
    "answer, scale, expected",
    [
        (12.5, "million", "12.5 million"),
        (27.0, "", "27"),
        (152, "thousand", "152 thousand"),
        (-12.6, "percent", "-12.6%"),
        (21, "percent", "21%"),
        (2.0, "billion", "2 billion"),
        (1e-05, "", "0.00001"),
        (["$1,496.5"], "million", "$1,496.5 million"),
        (["73,260", "57,768"], "thousand", "73,260 thousand, 57,768 thousand"),
        (["(66)%", "(223)%"], "percent", "(66)%, (223)%"),
        (["fixed-price type", "cost-plus type"], "", "fixed-price type, cost-plus type"),
        (["Altium Designer subscriptions"], "percent", "Altium Designer subscriptions"),
        ("4", "", "4"),
        ([" 2019 ", 2018], "", "2019, 2018"),
    ],
)
def test_format_answer(answer, scale, expected):
    assert format_tatqa_answer(answer, scale) == expected


def test_format_number_round_trips():
    for x in (0.1, -0.2, 995684.5, 13237.4, 0.05, 1234567.0, 3):
        assert float(format_number(x)) == x and "e" not in format_number(x)


@pytest.mark.parametrize("answer, scale, msg", [(True, "", "got bool"), ({"a": 1}, "", "got dict"), (1, "dozen", "'scale' is 'dozen'")])
def test_format_answer_rejects(answer, scale, msg):
    with pytest.raises(DataError, match=re.escape(msg)):
        format_tatqa_answer(answer, scale, "f.json: q1")


def test_render_context():
    table = [["", "2019", "2018"], ["Revenue", " $ 1,200.5", "1,100"], ["", "", ""]]
    paragraphs = [{"uid": "b", "order": 2, "text": "Second."}, {"uid": "a", "order": 1, "text": "First."}]
    assert render_context(table, paragraphs) == " | 2019 | 2018\nRevenue | $ 1,200.5 | 1,100\n\nFirst.\nSecond."
    assert render_context([["a", "b"]], []) == "a | b"


def test_load_tatqa(tmp_path):
    path = write_json(tmp_path / "tatqa_dataset_dev.json", [tatqa_context("t1", 3, tag="one"), tatqa_context("t2", 2, tag="two")])
    stats = {}
    recs = list(load_tatqa(path, stats=stats))
    assert stats == {"contexts": 2, "records": 5}
    assert [r.id for r in recs][:2] == ["tatqa/t1-q0", "tatqa/t1-q1"]
    assert {r.group for r in recs[:3]} == {"tatqa/t1"} and {r.group for r in recs[3:]} == {"tatqa/t2"}
    assert recs[1].answer == "1,000 thousand" and recs[1].domain == "finance"
    assert recs[0].context.endswith("First paragraph one.\nSecond paragraph one.")
    assert recs[0].context.startswith(" | 2019 | 2018\nRevenue | $ 1,200.5 | 1,100\n\n")
    assert recs[0].source == "tatqa_dataset_dev.json:t1-q0"


def _bad(ctx_patch):
    ctx = tatqa_context("t1", 1, tag="x")
    ctx_patch(ctx)
    return [ctx]


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"table": {}}, "expected a JSON list of contexts, got dict"),
        ([3], "context 0: expected an object, got int"),
        (_bad(lambda c: c.pop("table")), "context 0: missing field 'table'"),
        (_bad(lambda c: c["table"].pop("uid")), "context 0 table: missing field 'uid'"),
        (_bad(lambda c: c["questions"][0].pop("answer")), "context 0 question t1-q0: missing field 'answer'"),
        (_bad(lambda c: c["questions"][0].update(question=5)), "question t1-q0: field 'question' must be a string, got int"),
        (_bad(lambda c: c.update(paragraphs="text")), "context 0: field 'paragraphs' must be a list, got str"),
        (_bad(lambda c: c["paragraphs"][0].pop("text")), "context 0 paragraph 0: missing field 'text'"),
        (_bad(lambda c: c["questions"][0].update(scale="lots")), "field 'scale' is 'lots'"),
    ],
)
def test_load_tatqa_bad_input(tmp_path, data, expected):
    path = write_json(tmp_path / "bad.json", data)
    with pytest.raises(DataError, match=re.escape(expected)) as e:
        list(load_tatqa(path))
    assert str(e.value).startswith(str(path))


def test_load_tatqa_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"table": ')
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON .*line 1 column"):
        list(load_tatqa(path))
