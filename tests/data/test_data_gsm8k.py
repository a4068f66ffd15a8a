"""GSM8K reader: calculator annotations, ids, and bad input."""

from __future__ import annotations

import json
import re

import pytest
from datafiles import write_jsonl

from lorasum.data import load_gsm8k, strip_calculator_annotations
from lorasum.errors import DataError

ANSWER = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


def test_strip_annotations_examples():
    assert strip_calculator_annotations(ANSWER) == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72"
    )
    assert strip_calculator_annotations("$<<12/60=0.2>>0.2 per minute") == "$0.2 per minute"
    assert strip_calculator_annotations("no annotation\n#### 5") == "no annotation\n#### 5"


def test_load_gsm8k_records(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"question": "Q0?", "answer": ANSWER}, {"question": "Q1?", "answer": "x\n#### 1"}])
    # a blank line between records is skipped but line numbers stay true
    path.write_text(path.read_text().replace("\n", "\n\n", 1))
    stats = {}
    recs = list(load_gsm8k(path, stats=stats))
    assert [r.id for r in recs] == ["gsm8k/train/0", "gsm8k/train/1"]
    assert [r.source for r in recs] == ["train.jsonl:1", "train.jsonl:3"]
    assert all(r.group == r.id and r.domain == "math" and r.context == "" for r in recs)
    assert "<<" not in recs[0].answer and recs[0].answer.endswith("#### 72")
    assert stats == {"records": 2}
    kept = next(iter(load_gsm8k(path, strip_annotations=False, split="x", domain="d")))
    assert kept.answer == ANSWER and kept.id == "gsm8k/x/0" and kept.domain == "d"


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'{"question": "a", "answer": "b\\n#### 1"}\n{"question": "a", "answer": \n', "train.jsonl:2: malformed JSON"),
        (b'{"question": "a"}\n', "train.jsonl:1: missing field 'answer'"),
        (b'{"question": 3, "answer": "x\\n#### 1"}\n', "field 'question' must be a string, got int"),
        (b'["question", "answer"]\n', "train.jsonl:1: expected a JSON object"),
        (b'{"question": "a", "answer": "no final line"}\n', "train.jsonl:1: field 'answer' has no final"),
        (b'{"question": "caf\xe9", "answer": "x"}\n', "train.jsonl:1: invalid UTF-8 (invalid continuation byte at column 18)"),
        (b"\n  \n", "train.jsonl: empty file"),
    ],
)
def test_load_gsm8k_bad_input(tmp_path, content, expected):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(expected)) as e:
        list(load_gsm8k(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_load_gsm8k_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list(load_gsm8k(tmp_path / "nope.jsonl"))


def test_real_line_is_json(tmp_path):
    # the reader accepts exactly what json.dumps writes, including unicode escapes
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "Caf\u00e9 \u2013 cost?", "answer": "5\n#### 5"}])
    assert json.loads(path.read_text())["question"] == next(iter(load_gsm8k(path))).question
