"""MathQA (AllenAI release): Problem -> Rationale, JSON and CSV, quotes, and bad input."""

from __future__ import annotations

import csv
import json
import re

import pytest

from lorasum.data import load_mathqa
from lorasum.data.sources.mathqa import strip_quotes
from lorasum.errors import DataError

# rows as in the AllenAI train.json (rationales wrapped in double quotes, options one string)
ROWS = [
    {"Problem": "the banker ' s gain of a certain sum due 3 years hence at 10 % per annum is rs . 36 . "
                "what is the present worth ?",
     "Rationale": "\"explanation : t = 3 years r = 10 % td = ( bg × 100 ) / tr = ( 36 × 100 ) / ( 3 × 10 ) = 12 × 10 "
                  "= rs . 120 pw = 1200 / 3 = rs . 400 answer : option a\"",
     "options": "a ) rs . 400 , b ) rs . 300 , c ) rs . 500 , d ) rs . 350 , e ) none of these",
     "correct": "a", "annotated_formula": "divide(36, 3)", "linear_formula": "divide(n0,n1)|", "category": "gain"},
    {"Problem": "average age of students of an adult school is 40 years . find the number of students ?",
     "Rationale": "\"let original strength = y then , 40 y + 120 x 32 = ( y + 120 ) x 36 ⇒ y = 120 answer : d\"",
     "options": "['a ) 1200', 'b ) 120', 'c ) 360', 'd ) 240', 'e ) none of these']",
     "correct": "d", "annotated_formula": "", "linear_formula": "", "category": "general"},
    {"Problem": "   ", "Rationale": "\"x\"", "options": "a ) 1", "correct": "b", "annotated_formula": "",
     "linear_formula": "", "category": "other"},
]


def _write(path, rows):
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_strip_quotes():
    assert strip_quotes(' "a b" ') == "a b"
    assert strip_quotes('"') == '"' and strip_quotes('say "hi"') == 'say "hi"'


@pytest.mark.parametrize("name", ["train.json", "train.csv"])
def test_problem_to_rationale(tmp_path, name):
    stats = {}
    recs = list(load_mathqa(_write(tmp_path / name, ROWS), stats=stats))
    assert [r.question for r in recs] == [ROWS[0]["Problem"], ROWS[1]["Problem"]]
    assert recs[0].answer == ROWS[0]["Rationale"][1:-1] and recs[1].answer.endswith("answer : d")
    assert [r.id for r in recs] == ["mathqa/train/0", "mathqa/train/1"]
    assert all(r.group == r.id and r.context == "" and r.domain == "math" for r in recs)
    assert stats == {"records": 2, "empty": 1}
    src = "train.json:record 1" if name.endswith("json") else "train.csv:3"
    assert recs[1].source == src


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"Rationale": "r", "options": "", "correct": "a"}, "record 0: missing field 'Problem'"),
        ({"Problem": "p", "Rationale": "r", "correct": "a"}, "record 0: missing field 'options'"),
        ({"Problem": "p", "Rationale": 4, "options": "", "correct": "a"}, "record 0: field 'Rationale' must be a string, got int"),
        ({"Problem": "p", "Rationale": "r", "options": "", "correct": "z"},
         "record 0: field 'correct' is 'z', expected one of a, b, c, d, e"),
    ],
)
def test_bad_rows(tmp_path, row, expected):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([row]))
    with pytest.raises(DataError, match=re.escape(f"{path}: {expected}")):
        list(load_mathqa(path))


def test_not_mathqa(tmp_path):
    path = _write(tmp_path / "x.json", [ROWS[2]])
    with pytest.raises(DataError, match="no rows with a non-empty 'Problem' and 'Rationale' \\(not MathQA\\?\\)"):
        list(load_mathqa(path))
