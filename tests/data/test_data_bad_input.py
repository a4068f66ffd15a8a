"""Bad input in every reader: one-line DataError naming the file, line / record and field; or, with
skip_bad_rows, the row skipped and counted (never silently)."""

from __future__ import annotations

import json
import re

import pytest
from datafiles import medquad_xml, tatqa_context, write_json

from lorasum.data import (
    load_gsm8k,
    load_mathqa,
    load_medquad_flat,
    load_medquad_xml,
    load_pubmedqa,
    load_tabular,
    load_tatqa,
)
from lorasum.errors import DataError

GOOD_GSM = b'{"question": "q1", "answer": "a\\n#### 1"}\n'
GOOD_ROW = b'{"question": "q1", "answer": "a1"}\n'
GOOD_MATHQA = b'{"Problem": "p", "Rationale": "\\"r\\"", "options": "a ) 1", "correct": "a"}\n'
GOOD_MEDQUAD = b'{"Question": "q1", "Answer": "a1"}\n'

# (reader, file name, a good line, a bad line, expected message after "<file>:2: ")
CASES = [
    (load_gsm8k, "train.jsonl", GOOD_GSM, b'{"question": "q", "answer": \n', "malformed JSON"),
    (load_gsm8k, "train.jsonl", GOOD_GSM, b'{"question": "q"}\n', "missing field 'answer'"),
    (load_gsm8k, "train.jsonl", GOOD_GSM, b'{"question": ["q"], "answer": "a\\n#### 1"}\n',
     "field 'question' must be a string, got list"),
    (load_gsm8k, "train.jsonl", GOOD_GSM, b'{"question": "caf\xe9", "answer": "a\\n#### 1"}\n', "invalid UTF-8"),
    (load_tabular, "t.jsonl", GOOD_ROW, b"[1, 2]\n", "expected a JSON object, got list"),
    (load_tabular, "t.jsonl", GOOD_ROW, b'{"question": "q"}\n', "missing field 'answer'"),
    (load_tabular, "t.jsonl", GOOD_ROW, b'{"question": "q", "answer": 3.5}\n', "field 'answer' must be a string, got float"),
    (load_tabular, "t.jsonl", GOOD_ROW, b'{"question": "\xff", "answer": "a"}\n', "invalid UTF-8"),
    (load_mathqa, "m.jsonl", GOOD_MATHQA, b'{"Problem": "p", "options": "", "correct": "a"}\n',
     "missing field 'Rationale'"),
    (load_mathqa, "m.jsonl", GOOD_MATHQA, b'{"Problem": "p", "Rationale": "r", "options": "", "correct": "f"}\n',
     "field 'correct' is 'f'"),
    (load_medquad_flat, "mq.jsonl", GOOD_MEDQUAD, b'{"Question": "q"}\n', "missing field 'Answer'"),
    (load_medquad_flat, "mq.jsonl", GOOD_MEDQUAD, b'{"Question": "q", "Answer": {"x": 1}}\n',
     "field 'Answer' must be a string, got dict"),
]


def _kw(reader):
    return {} if reader in (load_gsm8k, load_mathqa, load_medquad_flat) else {"domain": "x"}


@pytest.mark.parametrize("reader, name, good, bad, expected", CASES)
def test_bad_line_names_file_line_and_field(tmp_path, reader, name, good, bad, expected):
    path = tmp_path / name
    path.write_bytes(good + bad + good.replace(b"q1", b"q3"))
    with pytest.raises(DataError) as e:
        list(reader(path, **_kw(reader)))
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: ") and expected in msg and "\n" not in msg


@pytest.mark.parametrize("reader, name, good, bad, expected", CASES)
def test_skip_bad_rows_counts_instead(tmp_path, reader, name, good, bad, expected):
    path = tmp_path / name
    path.write_bytes(good + bad + good.replace(b"q1", b"q3").replace(b'"p"', b'"p3"'))
    stats = {}
    recs = list(reader(path, skip_bad_rows=True, stats=stats, **_kw(reader)))
    assert len(recs) == 2 and stats["bad_rows"] == 1
    assert stats["bad_row_examples"][0].startswith(f"{path}:2: ") and expected in stats["bad_row_examples"][0]
    assert [r.source for r in recs] == [f"{name}:1", f"{name}:3"]


def test_skip_bad_rows_keeps_at_most_three_examples(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(GOOD_ROW + b"{bad\n" * 5)
    stats = {}
    assert len(list(load_tabular(path, domain="x", skip_bad_rows=True, stats=stats))) == 1
    assert stats["bad_rows"] == 5 and len(stats["bad_row_examples"]) == 3


def test_all_rows_bad_is_still_an_error(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"{bad\n{worse\n")
    with pytest.raises(DataError, match="no usable line"):
        list(load_gsm8k(path, skip_bad_rows=True))
    with pytest.raises(DataError, match="no rows with a non-empty"):
        list(load_tabular(path, domain="x", skip_bad_rows=True))


@pytest.mark.parametrize("reader", [load_gsm8k, load_tabular, load_mathqa, load_medquad_flat])
@pytest.mark.parametrize("content", [b"", b"  \n\n"])
def test_empty_file(tmp_path, reader, content):
    path = tmp_path / "e.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(f"{path}: empty file")):
        list(reader(path, **_kw(reader)))


@pytest.mark.parametrize("reader", [load_tabular, load_mathqa, load_medquad_flat])
def test_unknown_format(tmp_path, reader):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=re.escape(f"{path}: unknown format '.xlsx' (expected one of .jsonl")):
        list(reader(path, **_kw(reader)))


def test_invalid_utf8_in_whole_file_formats_names_line(tmp_path):
    path = tmp_path / "t.csv"
    data = b"question,answer\nq,a\nq2,\xff\n"
    path.write_bytes(data)
    offset = data.index(b"\xff")  # 0-based, as Python's UnicodeDecodeError reports it
    with pytest.raises(DataError, match=re.escape(f"{path}: invalid UTF-8 at line 3 (invalid start byte at byte {offset})")):
        list(load_tabular(path, domain="x"))


def test_json_list_item_not_object_skippable(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"question": "q", "answer": "a"}, 7]))
    with pytest.raises(DataError, match=re.escape(f"{path}: record 1: expected a JSON object, got int")):
        list(load_tabular(path, domain="x"))
    stats = {}
    assert len(list(load_tabular(path, domain="x", skip_bad_rows=True, stats=stats))) == 1
    assert stats["bad_rows"] == 1


def test_csv_extra_cells_skippable(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("question,answer\nq,a\nq2,a2,extra\n")
    stats = {}
    assert len(list(load_tabular(path, domain="x", skip_bad_rows=True, stats=stats))) == 1
    assert stats["bad_row_examples"] == [f"{path}:3: more cells than header columns"]


def test_tatqa_bad_question_and_context(tmp_path):
    good = tatqa_context("c0", 2, tag="zero")
    no_table = {"paragraphs": [], "questions": []}
    bad_q = tatqa_context("c2", 2, tag="two")
    del bad_q["questions"][1]["answer"]
    path = write_json(tmp_path / "tat.json", [good, no_table, bad_q])
    with pytest.raises(DataError, match=re.escape(f"{path}: context 1: missing field 'table'")):
        list(load_tatqa(path))
    stats = {}
    recs = list(load_tatqa(path, skip_bad_rows=True, stats=stats))
    assert [r.id for r in recs] == ["tatqa/c0-q0", "tatqa/c0-q1", "tatqa/c2-q0"]
    assert stats["bad_rows"] == 2
    assert stats["bad_row_examples"][1] == f"{path}: context 2 question c2-q1: missing field 'answer'"


def test_pubmedqa_bad_record(tmp_path):
    ok = {"QUESTION": "q", "LONG_ANSWER": "a", "final_decision": "yes"}
    path = write_json(tmp_path / "ori_pqal.json", {"1": ok, "2": {**ok, "final_decision": "perhaps"}, "3": ok})
    with pytest.raises(DataError, match=re.escape(f"{path}: record 2: field 'final_decision' is 'perhaps'")):
        list(load_pubmedqa(path))
    stats = {}
    assert [r.id for r in load_pubmedqa(path, skip_bad_rows=True, stats=stats)] == ["pubmedqa/1", "pubmedqa/3"]
    assert stats["bad_rows"] == 1


def _medquad_folder(tmp_path):
    sub = tmp_path / "1_X_QA"
    sub.mkdir()
    (sub / "0001.xml").write_text(medquad_xml("0001", "F", [("What is A ?", "A is a thing.")]))
    return sub


def test_xml_parse_error_skippable_but_entity_bomb_never(tmp_path):
    sub = _medquad_folder(tmp_path)
    (sub / "0002.xml").write_text("<Document><QAPairs>")
    with pytest.raises(DataError, match=r"0002\.xml: XML parse error"):
        list(load_medquad_xml(sub))
    stats = {}
    assert len(list(load_medquad_xml(sub, skip_bad_rows=True, stats=stats))) == 1
    assert stats["bad_rows"] == 1 and "0002.xml: XML parse error" in stats["bad_row_examples"][0]
    bomb = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
            '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><Document id="x"><QAPairs><QAPair pid="1">'
            "<Question>q</Question><Answer>&c;</Answer></QAPair></QAPairs></Document>")
    (sub / "0002.xml").write_text(bomb)
    for skip in (False, True):
        with pytest.raises(DataError, match=r"0002\.xml: unsafe XML refused \(EntitiesForbidden\)"):
            list(load_medquad_xml(sub, skip_bad_rows=skip))


def test_xml_external_entity_refused(tmp_path):
    sub = _medquad_folder(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (sub / "0003.xml").write_text(
        f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<Document id="y"><QAPairs><QAPair pid="1"><Question>q</Question><Answer>&x;</Answer></QAPair>'
        "</QAPairs></Document>")
    with pytest.raises(DataError, match=r"0003\.xml: unsafe XML refused"):
        list(load_medquad_xml(sub))


def test_xml_without_qapairs_names_a_file(tmp_path):
    sub = tmp_path / "2_Y_QA"
    sub.mkdir()
    (sub / "0009.xml").write_text('<Document id="9"><Focus>F</Focus></Document>')
    with pytest.raises(DataError, match=re.escape("no answered QAPairs/QAPair in 1 XML files, e.g. 2_Y_QA/0009.xml "
                                                  "has none (not MedQuAD XML?)")):
        list(load_medquad_xml(sub))
