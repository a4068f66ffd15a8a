"""`lorasum train` warns per domain and split whose examples are cut at max_length: how many, what they lose
(answer tokens, or only context and question) and how to avoid it, before training starts; a command that
fails then ends with its one-line error."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from lorasum.cli import main
from lorasum.data.records import Record
from lorasum.errors import UserError
from tiny_models import save_tiny_gpt2

LONG_ANSWER = " ".join(["apples"] * 60)
LONG_CONTEXT = " ".join(["the cat is red"] * 20)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def _rec(i, domain, context="", answer="yes"):
    return Record(id=f"{domain}-{i}", domain=domain, question="what is the dose ?", answer=answer, context=context)


def _domain(name, train, validation, max_length=None):
    return SimpleNamespace(name=name, train=train, validation=validation, test=[], sources=[], content_hash="0" * 64,
                           report={"long_rows": {"policy": "truncate"}}, max_length=max_length)


@pytest.fixture
def fake_training(monkeypatch):
    """train_adapter returns at once (``seen["raise"]``, if set, is raised instead) and no manifest is
    written; ``seen["max_length"]`` is the limit training was given."""
    import lorasum.storage
    import lorasum.train

    seen = {}

    def train_adapter(*args, **kwargs):
        seen["max_length"] = kwargs["max_length"]
        if "raise" in seen:
            raise seen["raise"]
        return SimpleNamespace(steps=1, tokens=10, seconds=0.1, final_loss=1.0, val_loss=None)

    monkeypatch.setattr(lorasum.train, "train_adapter", train_adapter)
    monkeypatch.setattr(lorasum.storage, "write_manifest", lambda *a, **k: None)
    return seen


def _run(argv, capsys, rc=0) -> list[str]:
    """The command's stderr lines (warnings), less the last one for a failed command."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == rc, err
    return err.strip("\n").splitlines()


def test_train_warns_per_domain_and_split(tiny_model_dir, tmp_path, monkeypatch, capsys,
                                                           fake_training):
    import lorasum.cli.train as train_cli

    math = _domain("math", [_rec(i, "math", answer=LONG_ANSWER if i < 3 else "yes") for i in range(4)],
                   [_rec(9, "math", answer=LONG_ANSWER)])
    finance = _domain("finance", [_rec(i, "finance", context=LONG_CONTEXT) for i in range(2)],
                      [_rec(9, "finance")])
    monkeypatch.setattr(train_cli, "_load_data", lambda cfg, names: [math, finance])
    warnings = _run(["train", "-q", "--domain", "math,finance", "--model", str(tiny_model_dir), "--out",
                     str(tmp_path / "a"), "--max-length", "48", "--device", "cpu"], capsys)
    assert fake_training["max_length"] == 48
    assert len(warnings) == 3, warnings  # finance validation is whole
    by = {w.split(":")[0]: w for w in warnings}
    assert set(by) == {"data math train", "data math validation", "data finance train"}
    assert by["data math train"].startswith("data math train: 3 of 4 examples (75.0 %) are longer than 48 tokens "
                                            "(data.max_length) and are cut: 3 lose the end of their answer (")
    assert "never trained on" in by["data math train"]
    assert "1 of 1 examples (100.0 %)" in by["data math validation"]
    assert "left out of the validation loss" in by["data math validation"]
    assert "2 of 2 examples (100.0 %)" in by["data finance train"]
    assert "2 lose only context or question tokens (their answer is whole)" in by["data finance train"]
    for w in warnings:
        assert "raise data.max_length (--max-length)" in w and "data.long_rows: drop" in w


def test_train_says_nothing_when_nothing_is_cut(tiny_model_dir, tmp_path, monkeypatch, capsys, fake_training):
    import lorasum.cli.train as train_cli

    math = _domain("math", [_rec(i, "math") for i in range(3)], [_rec(9, "math")])
    monkeypatch.setattr(train_cli, "_load_data", lambda cfg, names: [math])
    assert _run(["train", "-q", "--domain", "math", "--model", str(tiny_model_dir), "--out", str(tmp_path / "a"),
                 "--max-length", "48", "--device", "cpu"], capsys) == []


def test_the_warnings_come_before_training_and_before_a_failures_one_line_error(tiny_model_dir, tmp_path, monkeypatch,
                                                                               capsys, fake_training):
    import signal

    import lorasum.cli.train as train_cli
    from lorasum.train.checkpoint import TrainingStopped

    math = _domain("math", [_rec(0, "math", answer=LONG_ANSWER)], [])
    monkeypatch.setattr(train_cli, "_load_data", lambda cfg, names: [math])
    argv = ["train", "-q", "--domain", "math", "--model", str(tiny_model_dir), "--out", str(tmp_path / "a"),
            "--max-length", "48", "--device", "cpu"]
    fake_training["raise"] = UserError("training diverged")
    lines = _run(argv, capsys, rc=2)
    assert lines[0].startswith("data math train: 1 of 1 examples (100.0 %)") and len(lines) == 2, lines
    assert lines[-1] == "lorasum: error: training diverged"  # the error is still one line, and the last
    fake_training["raise"] = TrainingStopped(signal.SIGINT, tmp_path / "a")
    lines = _run(argv, capsys, rc=130)
    assert lines[0].startswith("data math train: 1 of 1 examples (100.0 %)") and len(lines) == 2, lines


def test_a_custom_domains_own_limit_is_named(tiny_model_dir, tmp_path, monkeypatch, capsys, fake_training):
    import lorasum.cli.train as train_cli

    legal = _domain("legal", [_rec(0, "legal", answer=LONG_ANSWER)], [], max_length=32)
    monkeypatch.setattr(train_cli, "_load_data", lambda cfg, names: [legal])
    warnings = _run(["train", "-q", "--domain", "legal", "--model", str(tiny_model_dir), "--out",
                     str(tmp_path / "a"), "--device", "cpu"], capsys)
    assert fake_training["max_length"] == 32
    assert len(warnings) == 1 and "longer than 32 tokens (custom_domains.legal.max_length)" in warnings[0]
    assert "raise custom_domains.legal.max_length (" in warnings[0]


def test_train_on_real_data_warns_and_still_trains(tiny_model_dir, tmp_path, capsys):
    """GSM8K at 48 tokens: most answers lose their end (their final '#### N'); the warning comes, the adapter
    is written."""
    import json

    if not os.environ.get("LORASUM_DATA_ROOT"):
        pytest.skip("LORASUM_DATA_ROOT is not set")
    out = tmp_path / "math"
    rc = main(["train", "-q", "--domain", "math", "--model", str(tiny_model_dir), "--out", str(out),
               "--train-size", "6", "--validation-size", "2", "--test-size", "3", "--max-length", "48",
               "--batch-size", "3", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    meta = json.loads((out / "lorasum.json").read_text())
    assert meta["n_truncated"] > 0
    line = next(w for w in err.splitlines() if w.startswith("data math train: "))
    assert line.startswith(f"data math train: {meta['n_truncated']} of 6 examples")
    assert "lose the end of their answer" in line


def test_eval_warns_when_test_examples_are_cut(tiny_model_dir, monkeypatch, capsys):
    """`lorasum eval` scored cut answers without a word (a perplexity from 2 of 331 answer tokens); now it says so
    per domain, as train does, and still scores."""
    import lorasum.cli.evaluate as eval_cli

    math = _domain("math", [], [])
    math.test = [_rec(i, "math", answer=LONG_ANSWER if i < 2 else "yes") for i in range(3)]
    monkeypatch.setattr(eval_cli, "_load_data", lambda cfg, names: [math])
    argv = ["eval", "-q", "--domain", "math", "--model", str(tiny_model_dir), "--max-length", "48", "--device", "cpu"]
    warnings = _run(argv, capsys)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("data math test: 2 of 3 examples (66.7 %) are longer than 48 tokens "
                                  "(data.max_length) and are cut: 2 lose the end of their answer (")
    assert "never scored" in warnings[0] and "raise data.max_length (--max-length)" in warnings[0]
    math.test = [_rec(i, "math") for i in range(3)]
    assert _run(argv, capsys) == []  # nothing cut, nothing said
