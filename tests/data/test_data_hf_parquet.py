"""Optional back-ends: Hugging Face hub data sets (``datasets``) and Parquet (``pyarrow``); financial-qa-10K.

No test touches the network: a fake ``datasets`` module stands in for the real one.
"""

from __future__ import annotations

import json
import re
import sys
import types

import pytest

from lorasum.data import load_financial_qa_10k, load_hf_dataset, load_tabular
from lorasum.errors import DataError

FIN_ROWS = [
    {"question": "What was Acme's revenue in 2023?", "answer": "$5.2 billion.", "context": "Revenue was $5.2 billion.",
     "ticker": "ACME", "filing": "2023_10K"},
    {"question": "Who audits Acme?", "answer": "Big Four LLP.", "context": "Our auditor is Big Four LLP.",
     "ticker": "ACME", "filing": "2023_10K"},
    {"question": "Where is Beta based?", "answer": "Austin, Texas.", "context": "Beta is based in Austin, Texas.",
     "ticker": "BETA", "filing": "2023_10K"},
]


def _fake_datasets(monkeypatch, load_dataset):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hf_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match=re.escape("hf:virattt/financial-qa-10K: reading Hugging Face hub data sets "
                                                  "needs the optional 'datasets' package; pip install 'lorasum[datasets]'")):
        list(load_hf_dataset("virattt/financial-qa-10K", domain="finance"))


def test_hf_load_failure_is_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub (LocalEntryNotFoundError)\nmore detail")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(DataError) as e:
        list(load_hf_dataset("x/y", domain="d", split="test"))
    msg = str(e.value)
    assert msg.startswith("hf:x/y: cannot load config None split 'test' (ConnectionError: Couldn't reach")
    assert "HF_DATASETS_OFFLINE=1" in msg and "\n" not in msg


def test_hf_rows_become_records(monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return list(FIN_ROWS) + [{"question": "q", "answer": None, "context": "", "ticker": "Z", "filing": ""}]

    _fake_datasets(monkeypatch, load_dataset)
    stats = {}
    recs = list(load_hf_dataset("virattt/financial-qa-10K", domain="finance", config="default", revision="abc",
                                context_field="context", group_field="ticker", skip_bad_rows=True, stats=stats))
    assert calls == [("virattt/financial-qa-10K", "default", "train", "abc")]
    assert [(r.question, r.answer, r.context) for r in recs] == [(x["question"], x["answer"], x["context"]) for x in FIN_ROWS]
    assert recs[0].id == "virattt/financial-qa-10K/train/0"
    assert recs[0].group == recs[1].group != recs[2].group
    assert stats["records"] == 3 and stats["bad_rows"] == 1
    assert "hf:virattt/financial-qa-10K[train]: row 3: missing field 'answer'" in stats["bad_row_examples"][0]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_financial_qa_10k_groups_by_ticker(tmp_path, suffix):
    path = tmp_path / f"Financial-QA-10k{suffix}"
    if suffix == ".csv":
        import csv

        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(FIN_ROWS[0]))
            w.writeheader()
            w.writerows(FIN_ROWS)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in FIN_ROWS))
    recs = list(load_financial_qa_10k(path))
    assert [r.context for r in recs] == [r["context"] for r in FIN_ROWS]
    assert [r.group for r in recs] == ["Financial-QA-10k/group/ACME"] * 2 + ["Financial-QA-10k/group/BETA"]
    by_passage = list(load_financial_qa_10k(path, group_field="context"))
    assert len({r.group for r in by_passage}) == 3 and all(r.domain == "finance" for r in recs)
    no_ticker = tmp_path / "no_ticker.json"
    no_ticker.write_text(json.dumps([{k: v for k, v in FIN_ROWS[0].items() if k != "ticker"}]))
    with pytest.raises(DataError, match=re.escape(f"{no_ticker}: record 0: missing field 'ticker'")):
        list(load_financial_qa_10k(no_ticker))


def test_long_group_values_are_hashed(tmp_path):
    path = tmp_path / "t.jsonl"
    long_ctx = "word " * 50
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": "a", "c": long_ctx}) + "\n" for i in range(2)))
    a, b = load_tabular(path, domain="x", group_field="c")
    assert a.group == b.group and a.group.startswith("t/group/sha256:") and len(a.group) < 40


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=re.escape(f"{path}: reading Parquet needs pyarrow, which is not installed; "
                                                  "pip install pyarrow")):
        list(load_tabular(path, domain="x"))
    with pytest.raises(DataError, match="nope.parquet: file not found"):
        list(load_tabular(tmp_path / "nope.parquet", domain="x"))


def test_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "fin.parquet"
    pq.write_table(pa.Table.from_pylist(FIN_ROWS + [{**FIN_ROWS[0], "answer": None}]), path)
    stats = {}
    recs = list(load_financial_qa_10k(path, skip_bad_rows=True, stats=stats))
    assert [(r.question, r.answer) for r in recs] == [(r["question"], r["answer"]) for r in FIN_ROWS]
    assert recs[2].source == "fin.parquet:row 2" and stats["bad_rows"] == 1
    assert "fin.parquet: row 3: missing field 'answer'" in stats["bad_row_examples"][0]
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=re.escape(f"{bad}: malformed Parquet")):
        list(load_tabular(bad, domain="x"))
