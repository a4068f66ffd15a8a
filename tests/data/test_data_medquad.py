"""MedQuAD readers: XML tree and flat mirror; empty answers, grouping, bad input."""

from __future__ import annotations

import csv
import json

import pytest
from datafiles import medquad_xml

from lorasum.data import load_medquad, load_medquad_flat, load_medquad_xml
from lorasum.errors import DataError


def _tree(tmp_path):
    sub = tmp_path / "medquad" / "1_Test_QA"
    sub.mkdir(parents=True)
    (sub / "0000001.xml").write_text(medquad_xml("0000001", "Flu", [
        ("What is (are) Flu ?", "Flu is   an\n\t illness.\n    - fever  - cough"),
        ("What causes Flu ?", "  \n "),
        ("How to treat Flu ?", "Rest &amp; fluids."),
    ]))
    (sub / "0000002.xml").write_text(medquad_xml("0000002", "Cold", [("What is a cold ?", "A cold is mild.")]))
    (sub / "0000003.xml").write_text('<?xml version="1.0"?>\n<Document id="0000003"><QAPairs>\n</QAPairs></Document>')
    return sub


def test_xml_records_whitespace_and_counts(tmp_path):
    sub = _tree(tmp_path)
    stats = {}
    recs = list(load_medquad_xml(sub, stats=stats))
    assert [r.question for r in recs] == ["What is (are) Flu ?", "How to treat Flu ?", "What is a cold ?"]
    assert recs[0].answer == "Flu is an illness. - fever - cough"
    assert recs[1].answer == "Rest & fluids."
    assert [r.id for r in recs] == ["medquad/1_Test_QA/0000001-1", "medquad/1_Test_QA/0000001-3", "medquad/1_Test_QA/0000002-1"]
    assert recs[0].group == recs[1].group == "medquad/1_Test_QA/0000001" != recs[2].group
    assert recs[0].source == "1_Test_QA/0000001.xml:1" and all(r.domain == "medicine" for r in recs)
    assert stats["files"] == 3 and stats["pairs"] == 4 and stats["empty_answers"] == 1
    assert stats["files_without_pairs"] == 1 and stats["skipped_files"] == ["1_Test_QA/0000003.xml"]
    assert len(stats["tree_sha256"]) == 64
    # the whole tree (folder above the subsets) reads the same records
    assert [r.id for r in load_medquad(tmp_path / "medquad")] == [r.id for r in recs]


def test_xml_tree_hash_changes_with_content(tmp_path):
    sub = _tree(tmp_path)
    a, b = {}, {}
    list(load_medquad_xml(sub, stats=a))
    (sub / "0000002.xml").write_text(medquad_xml("0000002", "Cold", [("What is a cold ?", "A cold is mild!")]))
    list(load_medquad_xml(sub, stats=b))
    assert a["tree_sha256"] != b["tree_sha256"]


def test_xml_parse_error_names_file(tmp_path):
    sub = _tree(tmp_path)
    (sub / "0000009.xml").write_text("<Document><QAPairs><QAPair></Document>")
    with pytest.raises(DataError, match=r"0000009\.xml: XML parse error .*line 1") as e:
        list(load_medquad_xml(sub))
    assert "\n" not in str(e.value)


def test_xml_entity_bomb_refused(tmp_path):
    sub = tmp_path / "s"
    sub.mkdir()
    (sub / "bomb.xml").write_text('<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY a "aaaa">]>\n<Document>&a;</Document>')
    with pytest.raises(DataError, match="bomb.xml: unsafe XML refused"):
        list(load_medquad_xml(sub))


def test_xml_without_any_pairs_is_an_error(tmp_path):
    sub = tmp_path / "s"
    sub.mkdir()
    (sub / "a.xml").write_text("<Document id='1'><Focus>x</Focus></Document>")
    with pytest.raises(DataError, match=r"s: no answered QAPairs/QAPair in 1 XML files"):
        list(load_medquad_xml(sub))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty: no MedQuAD XML files"):
        list(load_medquad_xml(empty))
    with pytest.raises(DataError, match="missing: MedQuAD folder not found"):
        list(load_medquad_xml(tmp_path / "missing"))


ROWS = [
    {"qtype": "information", "Question": "What is Flu ?", "Answer": "Flu  is\nan illness.", "Focus": "Flu"},
    {"qtype": "causes", "Question": "What causes Flu ?", "Answer": "", "Focus": "flu"},
    {"qtype": "treatment", "Question": "How to treat Flu ?", "Answer": "Rest.", "Focus": "FLU"},
    {"qtype": "information", "Question": "What is a cold ?", "Answer": "Mild.", "Focus": "Cold"},
]


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_flat_mirror(tmp_path, suffix):
    path = tmp_path / f"medquad{suffix}"
    if suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(ROWS[0]))
            w.writeheader()
            w.writerows(ROWS)
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    stats = {}
    recs = list(load_medquad(path, stats=stats))
    assert [r.question for r in recs] == ["What is Flu ?", "How to treat Flu ?", "What is a cold ?"]
    assert recs[0].answer == "Flu is an illness."
    assert recs[0].group == recs[1].group == "medquad/focus/flu" != recs[2].group
    assert stats["empty_answers"] == 1 and stats["pairs"] == 4


def test_flat_without_focus_groups_by_id(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"Question": "q?", "Answer": "a."}) + "\n" + json.dumps({"question": "r?", "answer": "b."}) + "\n")
    recs = list(load_medquad_flat(path))
    assert [r.group for r in recs] == [r.id for r in recs] == ["medquad/m/0", "medquad/m/1"]


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("m.jsonl", '{"Answer": "a"}\n', "m.jsonl:1: missing field 'Question'"),
        ("m.jsonl", '{"Question": "q", "Answer": ["a"]}\n', "m.jsonl:1: field 'Answer' must be a string"),
        ("m.json", '{"Question": "q"}', "m.json: expected a JSON list"),
        ("m.xlsx", "x", "m.xlsx: unknown format '.xlsx'"),
        ("m.csv", "Question,Answer\nq,\n", "m.csv: no rows with a non-empty Answer"),
    ],
)
def test_flat_bad_input(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=expected.replace(".", r"\.").replace("[", r"\[")):
        list(load_medquad_flat(path))
