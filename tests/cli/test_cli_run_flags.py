"""Flag values and output paths on the command line: every mistake is one stderr line, exit 2, naming the
flag (or the path), and nothing is written. No model or data is loaded by any of these."""

from __future__ import annotations

import pytest

from lorasum.cli import main

CONFIG = "domains: [math, medicine]\nmodel: /nonexistent-model\ndevice: cpu\n"


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder holding ``config.yaml`` and ``keep.txt``, as the current folder; the data root is an
    empty folder (never read: every case fails before)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text(CONFIG)
    (work / "keep.txt").write_text("mine")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("LORASUM_DATA_ROOT", str(tmp_path / "data"))
    return work


def _files(work) -> list[str]:
    return sorted(p.relative_to(work.parent).as_posix() for p in work.parent.rglob("*"))


def _one_line(err: str, *fragments: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _parse_error(argv, capsys) -> str:
    """A flag the parser refuses: SystemExit(2), one line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def _user_error(argv, capsys) -> str:
    """A value the config schema refuses: exit 2, one ``lorasum: error:`` line."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("lorasum: error: "), err
    return err


@pytest.mark.parametrize("out", [".", "..", "/", "./"])
def test_reproduce_out_that_names_no_folder(out, work, capsys):
    """(An empty --out is refused by the parser: test_empty_values_are_refused_by_the_parser.)"""
    before = _files(work)
    for extra in ([], ["--overwrite"]):
        err = _user_error(["reproduce", "-q", "--config", "config.yaml", "--out", out, *extra], capsys)
        _one_line(err, "output path", repr(out), "give a file or folder name, e.g. --out NAME")
    assert _files(work) == before


@pytest.mark.parametrize("out", [".", "./"])
def test_train_out_that_names_no_folder(out, work, capsys):
    before = _files(work)
    err = _user_error(["train", "-q", "--domain", "math", "--out", out, "--overwrite", "--device", "cpu"], capsys)
    _one_line(err, "output path", repr(out))
    assert _files(work) == before


def test_reproduce_out_that_is_a_file(work, capsys):
    err = _user_error(["reproduce", "-q", "--config", "config.yaml", "--out", "keep.txt"], capsys)
    _one_line(err, "keep.txt: exists and is not a folder")
    assert (work / "keep.txt").read_text() == "mine"
    err = _user_error(["reproduce", "-q", "--config", "config.yaml", "--out", "keep.txt/run"], capsys)
    _one_line(err, "keep.txt/run: cannot create the run folder")


@pytest.mark.parametrize(("argv", "flag"), [
    (["reproduce", "--config", "config.yaml", "--out", "r", "--seeds", "1,,2"], "argument --seeds: empty item"),
    (["reproduce", "--config", "config.yaml", "--out", "r", "--seeds", "1,"], "argument --seeds: empty item"),
    (["reproduce", "--config", "config.yaml", "--out", "r", "--seeds", ","], "argument --seeds: expected a comma"),
    (["reproduce", "--config", "config.yaml", "--out", "r", "--seeds", "x"],
     "argument --seeds: expected comma-separated integers, got 'x'"),
    (["reproduce", "--config", "config.yaml", "--out", "r", "--domains", "math,,medicine"],
     "argument --domains: empty item"),
    (["train", "--domain", "math", "--out", "a", "--batch-size", "abc"],
     "argument --batch-size: invalid int value: 'abc'"),
    (["train", "--domain", "math", "--out", "a", "--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["train", "--domain", "math,", "--out", "a"], "argument --domain: empty item"),
    (["train", "--domain", "math,math", "--out", "a"], "argument --domain: 'math' listed twice in 'math,math'"),
    (["reproduce", "--config", "config.yaml", "--out", "r", "--seeds", "1,1"], "argument --seeds: '1' listed twice"),
    (["eval", "--domain", "finance, math,finance"], "argument --domain: 'finance' listed twice"),
    (["data", "stats", "--max-length", "1.5"], "argument --max-length: invalid int value: '1.5'"),
    (["train", "--out", "a"], "the following arguments are required: --domain"),
])
def test_values_the_parser_refuses_are_one_line_naming_the_flag(argv, flag, work, capsys):
    before = _files(work)
    line = _one_line(_parse_error(argv, capsys), flag)
    assert line.startswith(f"lorasum {argv[0]}") and line.endswith("--help)")
    assert _files(work) == before


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--domain", "math", "--out", "a", "--batch-size", "0"], "--batch-size 0: Input should be greater than"),
    (["train", "--domain", "math", "--out", "a", "--batch-size", "-3"], "--batch-size -3: Input should be greater"),
    (["train", "--domain", "math", "--out", "a", "--lr", "nan"], "--lr nan (train.learning_rate): Input should be a finite number"),
    (["train", "--domain", "math", "--out", "a", "--r", "0"], "--r 0 (lora.r): Input should be greater than 0"),
    (["train", "--domain", "math", "--out", "a", "--max-length", "4"], "--max-length 4 (data.max_length): Input should be greater"),
    (["train", "--domain", "math", "--out", "a", "--lora-dropout", "1.5"], "--lora-dropout 1.5 (lora.lora_dropout): Input should be less"),
    (["train", "--domain", "math", "--out", "a", "--test-size", "0"], "--test-size 0 (data.test_size): Input should be greater"),
    (["eval", "--domain", "math", "--batch-size", "0"], "--batch-size 0: Input should be greater than 0"),
    (["data", "stats", "--no-tokens", "--max-length", "2"], "--max-length 2 (data.max_length): Input should be greater than 8"),
    (["reproduce", "--config", "config.yaml", "--out", "r", "--domains", "math"],
     "--domains math: List should have at least 2 items"),
])
def test_values_the_config_refuses_name_the_flag(argv, message, work, capsys):
    before = _files(work)
    _one_line(_user_error(argv, capsys), message)
    assert _files(work) == before


def test_a_flag_in_a_config_file_is_named_by_the_file(work, capsys):
    """A bad value in the --config file of train is reported as the file's, not as a flag's."""
    (work / "bad.yaml").write_text(CONFIG + "train: {batch_size: 0}\n")
    err = _user_error(["train", "--config", "bad.yaml", "--domain", "math", "--out", "a"], capsys)
    _one_line(err, "bad.yaml: train.batch_size: Input should be greater than 0")
    # a bad flag over a good file is the flag's (shown as parsed: --epochs is a float)
    err = _user_error(["train", "--config", "config.yaml", "--domain", "math", "--out", "a", "--epochs", "0"], capsys)
    _one_line(err, "--epochs 0.0 (train.epochs): Input should be greater than 0")
