"""Generic table reader (users' own data, financial-qa-10K style) and its bad-input errors."""

from __future__ import annotations

import csv
import json
import re

import pytest

from lorasum.data import load_tabular
from lorasum.errors import DataError

ROWS = [
    {"question": "What was revenue?", "answer": "$5 million.", "context": "Revenue was $5 million.", "doc": "A"},
    {"question": "What was profit?", "answer": "", "context": "n/a", "doc": "A"},
    {"question": "Who is CEO?", "answer": "Jane Doe.", "context": "Jane Doe leads.", "doc": "B"},
    {"question": "Where is HQ?", "answer": "Paris.", "context": "Based in Paris.", "doc": "A"},
]


def _write(path, rows):
    if path.suffix in (".csv", ".tsv"):
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="," if path.suffix == ".csv" else "\t")
            w.writeheader()
            w.writerows(rows)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl"])
def test_formats_give_same_records(tmp_path, suffix):
    path = _write(tmp_path / f"fin{suffix}", ROWS)
    stats = {}
    recs = list(load_tabular(path, domain="finance", context_field="context", group_field="doc", stats=stats))
    assert [(r.question, r.answer, r.context) for r in recs] == [
        (row["question"], row["answer"], row["context"]) for row in ROWS if row["answer"]
    ]
    assert [r.id for r in recs] == ["fin/0", "fin/2", "fin/3"]
    assert recs[0].group == recs[2].group == "fin/group/A" != recs[1].group
    assert stats == {"empty": 1, "records": 3}


def test_field_mapping_and_default_group(tmp_path):
    path = _write(tmp_path / "mine.jsonl", [{"Q": "a?", "A": "b"}])
    (r,) = load_tabular(path, domain="x", question_field="Q", answer_field="A", id_prefix="own")
    assert (r.id, r.group, r.context, r.source) == ("own/0", "own/0", "", "mine.jsonl:1")


@pytest.mark.parametrize(
    "name, content, kwargs, expected",
    [
        ("d.jsonl", b'{"question": "q", "answer": "a"}\n{oops}\n', {}, "d.jsonl:2: malformed JSON"),
        ("d.jsonl", b'{"question": "q"}\n', {}, "d.jsonl:1: missing field 'answer'"),
        ("d.jsonl", b'{"question": "q", "answer": 7}\n', {}, "d.jsonl:1: field 'answer' must be a string, got int"),
        ("d.jsonl", b'{"question": "q", "answer": "a"}\n', {"context_field": "ctx"}, "d.jsonl:1: missing field 'ctx'"),
        ("d.jsonl", b'{"question": "q", "answer": "a", "g": [1]}\n', {"group_field": "g"}, "field 'g' must be a string or integer"),
        ("d.json", b'[{"question": "q", "answer": "a"}, 5]', {}, "d.json: record 1: expected a JSON object, got int"),
        ("d.json", b'{"question": "q"}', {}, "d.json: expected a JSON list of objects, got dict"),
        ("d.csv", b"question,answer\nq,a,extra\n", {}, "d.csv:2: more cells than header columns"),
        ("d.csv", b"question,answer\nq\n", {}, "d.csv:2: missing field 'answer'"),
        ("d.csv", b'question,answer\n"q,a\n', {}, "d.csv: malformed CSV near line 2 (unexpected end of data)"),
        ("d.csv", b"question,answer\n\xff\xfe,a\n", {}, "d.csv: invalid UTF-8"),
        ("d.csv", b"", {}, "d.csv: empty file"),
        ("d.jsonl", b"   \n\n", {}, "d.jsonl: empty file"),
        ("d.xlsx", b"PK", {}, "d.xlsx: unknown format '.xlsx'"),
        ("d", b"x", {}, "d: unknown format '(no extension)'"),
        ("d.jsonl", b'{"question": "", "answer": "a"}\n', {}, "d.jsonl: no rows with a non-empty 'question' and 'answer'"),
    ],
)
def test_bad_input(tmp_path, name, content, kwargs, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(expected)) as e:
        list(load_tabular(path, domain="x", **kwargs))
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg


def test_missing_and_folder(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        list(load_tabular(tmp_path / "nope.csv", domain="x"))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="dir.csv: expected a file, found a folder"):
        list(load_tabular(tmp_path / "dir.csv", domain="x"))
