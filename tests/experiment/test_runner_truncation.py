"""`lorasum reproduce` warns per domain and split whose examples are cut at data.max_length, and records the
counts in results.json (data.<domain>.truncation), which the report shows."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorasum.data.records import Record

LONG_ANSWER = " ".join(["apples"] * 60)
LONG_CONTEXT = " ".join(["the cat is red"] * 20)


def _rec(i, answer="yes", context=""):
    return Record(id=f"r{i}", domain="math", question="what is the dose ?", answer=answer, context=context)


def _data():
    math = SimpleNamespace(train=[_rec(0, LONG_ANSWER), _rec(1)], validation=[_rec(2)],
                           test=[_rec(3, LONG_ANSWER), _rec(4, context=LONG_CONTEXT), _rec(5)],
                           report={"long_rows": {"policy": "truncate"}})
    return {"math": math}


@pytest.mark.parametrize("stride", [None, 16])
def test_truncation_counts_and_warnings(tiny_tokenizer, caplog, stride):
    from lorasum.config import ExperimentConfig
    from lorasum.experiment.runner import _truncation

    cfg = ExperimentConfig(domains=["math", "finance"], data={"max_length": 48},
                           eval={"stride": stride} if stride else {})
    with caplog.at_level(logging.WARNING, logger="lorasum"):
        out = _truncation(cfg, _data(), tiny_tokenizer)
    splits = out["math"]["splits"]
    assert out["math"]["max_length"] == 48 and out["math"]["long_rows"] == "truncate"
    assert (splits["train"]["examples"], splits["train"]["truncated"], splits["train"]["answer_cut"]) == (2, 1, 1)
    assert splits["validation"]["truncated"] == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("data math train: 1 of 2 examples (50.0 %) are longer than 48 tokens") for m in messages)
    assert not any(m.startswith("data math validation") for m in messages)
    if stride is None:
        assert (splits["test"]["truncated"], splits["test"]["answer_cut"], splits["test"]["prompt_only"]) == (2, 1, 1)
        test = next(m for m in messages if m.startswith("data math test: 2 of 3 examples (66.7 %)"))
        assert "1 lose the end of their answer" in test and "never scored" in test
        assert "1 lose only context or question tokens" in test
    else:  # scored whole, in sliding windows
        assert splits["test"]["sliding_windows"] is True and splits["test"]["truncated"] == 0
        assert not any(m.startswith("data math test") for m in messages)
    assert len(messages) == (1 if stride else 2)


def test_reproduce_warns_and_the_report_counts_the_cut_examples(tmp_path, capsys):
    root = os.environ.get("LORASUM_DATA_ROOT")
    if not root or not Path(root).is_dir():
        pytest.skip("LORASUM_DATA_ROOT is not set")
    from tiny_models import save_tiny_gpt2

    from lorasum.cli import main

    save_tiny_gpt2(tmp_path / "m")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"name: tiny\nmodel: {tmp_path / 'm'}\ndomains: [math, finance]\nseeds: [0]\ndevice: cpu\n"
                   "data: {max_length: 48, train_size: 4, validation_size: 2, test_size: 3}\n"
                   "train: {learning_rate: 1.0e-2, batch_size: 2}\neval: {batch_size: 3}\n")
    out = tmp_path / "run"
    rc = main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    for dom in ("math", "finance"):
        trunc = results["data"][dom]["truncation"]
        assert trunc["max_length"] == 48 and trunc["long_rows"] == "truncate"
        assert {s: trunc["splits"][s]["examples"] for s in trunc["splits"]} == {"train": 4, "validation": 2,
                                                                                  "test": 3}
        for split, c in trunc["splits"].items():
            if c["truncated"]:
                assert f"data {dom} {split}: {c['truncated']} of {c['examples']} examples" in err
            else:
                assert f"data {dom} {split}:" not in err
    # GSM8K at 48 tokens: answers lose their end; TAT-QA: every context is cut
    assert results["data"]["math"]["truncation"]["splits"]["train"]["answer_cut"] > 0
    assert results["data"]["finance"]["truncation"]["splits"]["train"]["truncated"] == 4
    md = (out / "report" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| domain | train | validation |"))
    assert header.endswith("| train cut | test cut |")
    c = results["data"]["finance"]["truncation"]["splits"]["test"]
    assert f"| {c['truncated']} of 3 (" in md and "examples longer than data.max_length (48 tokens)" in md
    assert "the end of the answer was lost in math" in md
