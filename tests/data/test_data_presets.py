"""Domain presets and load_domain on a tiny fake data root."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from datafiles import write_jsonl

from lorasum.data import DOMAINS, DomainData, load_domain
from lorasum.errors import ConfigError, DataError


def _disjoint(dd: DomainData) -> None:
    splits = (dd.train, dd.validation, dd.test)
    assert all(splits)
    groups = [{r.split_key for r in s} for s in splits]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    ids = [r.id for s in splits for r in s]
    assert len(ids) == len(set(ids))


def _hash(dd: DomainData) -> str:
    h = hashlib.sha256()
    for split, recs in (("train", dd.train), ("validation", dd.validation), ("test", dd.test)):
        for r in recs:
            h.update((json.dumps([split, r.id, r.question, r.context, r.answer], ensure_ascii=False) + "\n").encode())
    return h.hexdigest()


@pytest.mark.parametrize("name", DOMAINS)
def test_each_preset_loads(fake_root, name):
    dd = load_domain(name, fake_root)
    _disjoint(dd)
    assert dd.name == name and all(r.domain == name for r in dd.train + dd.validation + dd.test)
    assert dd.content_hash == _hash(dd)
    for src in dd.sources:
        path = fake_root / src["path"]
        assert path.exists() and src["records"] > 0
        if path.is_file():
            assert src["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    again = load_domain(name, fake_root)
    assert again.content_hash == dd.content_hash and again.report == dd.report
    s = dd.report["sizes"]
    assert (s["train"], s["validation"], s["test"]) == (len(dd.train), len(dd.validation), len(dd.test))


def test_official_splits_and_counts(fake_root):
    math = load_domain("math", fake_root)
    assert len(math.test) == 10 and len(math.train) + len(math.validation) == 40
    assert all(r.id.startswith("gsm8k/test/") for r in math.test) and "<<" not in math.train[0].answer
    fin = load_domain("finance", fake_root)
    assert len(fin.test) == 6 and {r.group for r in fin.test} == {"tatqa/test0", "tatqa/test1", "tatqa/test2"}
    assert len(fin.train) + len(fin.validation) == 24 and fin.report["test_fraction"] is None
    pub = load_domain("pubmedqa", fake_root)
    assert sorted(r.id for r in pub.test) == sorted(f"pubmedqa/{1000 + i}" for i in range(0, 40, 2))
    med = load_domain("medicine", fake_root)
    assert med.report["loaded"] == 24 and med.report["empty_answers"] == 8 and med.report["pairs"] == 32
    assert med.report["official_test"] is False
    assert [s["path"] for s in med.sources] == ["medquad/1_Alpha_QA", "medquad/2_Beta_QA"]


def test_sizes_and_seed(fake_root):
    dd = load_domain("math", fake_root, train_size=5, validation_size=1, test_size=3, split_seed=4)
    assert (len(dd.train), len(dd.validation), len(dd.test)) == (5, 1, 3)
    assert dd.report["available"]["test"] == 10
    other = load_domain("math", fake_root, train_size=5, validation_size=1, test_size=3, split_seed=5)
    assert other.content_hash != dd.content_hash
    full = load_domain("medicine", fake_root, validation_fraction=0.2, test_fraction=0.25)
    assert len(full.test) >= round(0.25 * 24) and len(full.validation) >= round(0.2 * 24)


def test_duplicates_dropped_from_pool_not_test(fake_root):
    path = fake_root / "gsm8k/grade_school_math/data/train.jsonl"
    test_row = json.loads((path.parent / "test.jsonl").read_text().splitlines()[0])
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    write_jsonl(path, rows + [rows[0], {"question": test_row["question"].upper(), "answer": test_row["answer"]}])
    dd = load_domain("math", fake_root)
    c = dd.report["cleaning"]
    assert (c["input"], c["exact_duplicates"], c["normalized_duplicates"], c["output"]) == (52, 1, 1, 50)
    assert len(dd.test) == 10 and len(dd.train) + len(dd.validation) == 40


def test_unknown_domain(fake_root):
    with pytest.raises(ConfigError, match="unknown domain 'law'; known domains: math, medicine, finance, pubmedqa"):
        load_domain("law", fake_root)


def test_missing_root_and_files(fake_root, tmp_path):
    with pytest.raises(DataError, match="nowhere: data folder not found; set LORASUM_DATA_ROOT"):
        load_domain("math", tmp_path / "nowhere")
    (fake_root / "tatqa/dataset_raw/tatqa_dataset_test_gold.json").unlink()
    with pytest.raises(DataError, match=r"tatqa_dataset_test_gold\.json: not found under data root .*LORASUM_DATA_ROOT"):
        load_domain("finance", fake_root)
    shutil.rmtree(fake_root / "medquad")
    with pytest.raises(DataError, match=r"medquad: not found .*LORASUM_DATA_ROOT"):
        load_domain("medicine", fake_root)
    (fake_root / "medquad").mkdir()
    with pytest.raises(DataError, match=r"medquad: no MedQuAD XML subset folders"):
        load_domain("medicine", fake_root)


def test_medquad_flat_fallback(fake_root):
    shutil.rmtree(fake_root / "medquad")
    rows = [{"qtype": "information", "Question": f"What is D{i} ?", "Answer": f"D{i} is a disease.", "Focus": f"D{i // 2}"}
            for i in range(40)]
    write_jsonl(fake_root / "medquad/medquad.jsonl", rows)
    dd = load_domain("medicine", fake_root)
    _disjoint(dd)
    assert dd.sources[0]["path"] == "medquad/medquad.jsonl" and dd.sources[0]["records"] == 40


def test_bad_file_in_preset_names_it(fake_root):
    (fake_root / "pubmedqa/data/ori_pqal.json").write_bytes(b'{"1": {"QUESTION": "q", "LONG_ANSWER": "a"}}')
    with pytest.raises(DataError, match=r"ori_pqal\.json: record 1: missing field 'final_decision'"):
        load_domain("pubmedqa", fake_root)
    (fake_root / "pubmedqa/data/ori_pqal.json").write_text(
        json.dumps({"1": {"QUESTION": "q", "LONG_ANSWER": "a", "final_decision": "no"}}))
    with pytest.raises(DataError, match=r"test_ground_truth\.json: 20 test id\(s\) not in ori_pqal\.json"):
        load_domain("pubmedqa", fake_root)
    (fake_root / "medquad/2_Beta_QA/0000001.xml").write_text("<Document><QAPairs>")
    with pytest.raises(DataError, match=r"2_Beta_QA/0000001\.xml: XML parse error"):
        load_domain("medicine", fake_root)


_CHILD = """
import sys
sys.path.insert(0, {src!r})
from lorasum.data import DOMAINS, load_domain
print(" ".join(load_domain(d, {root!r}, split_seed=3).content_hash for d in DOMAINS))
"""


def test_load_domain_independent_of_pythonhashseed(fake_root):
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))
    code = _CHILD.format(src=src, root=str(fake_root))
    outs = [subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": hs},
                           capture_output=True, text=True, check=True).stdout.split() for hs in ("1", "999")]
    here = [load_domain(d, fake_root, split_seed=3).content_hash for d in DOMAINS]
    assert outs[0] == outs[1] == here
