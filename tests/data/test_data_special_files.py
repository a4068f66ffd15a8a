"""Data files that would hang or crash a reader: JSON nested too deeply for Python's parser, and paths that
are named pipes or symlinks to devices (refused before a byte is read), through the readers and
``lorasum data stats``; and a data root that is a file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lorasum.cli import main
from lorasum.config import SourceSpec
from lorasum.data import load_domain
from lorasum.data.formats import read_source, resolve_path
from lorasum.data.sources._io import iter_jsonl, iter_rows, load_json
from lorasum.errors import DataError

DEEP = "[" * 100_000
GSM_TRAIN = "gsm8k/grade_school_math/data/train.jsonl"
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")


def _stats(capsys, in_thread, root: Path, domain: str = "math") -> tuple[int, str]:
    """``lorasum data stats`` on ``root`` in a thread (it must not block); (exit code, stderr)."""
    capsys.readouterr()
    rc = in_thread(lambda: main(["data", "stats", "-q", "--no-tokens", "--domains", domain,
                                  "--data-root", str(root)]))
    return rc, capsys.readouterr().err


def _one_line_error(rc: int, err: str, *fragments: str) -> None:
    lines = err.strip("\n").splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("lorasum: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# -- JSON nested too deeply ----------------------------------------------------------------------------

def test_deep_json_file_is_a_data_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(DataError, match=f"{path}: JSON nested too deeply to read"):
        load_json(path)
    with pytest.raises(DataError, match="nested too deeply"):
        list(iter_rows(path))


def test_deep_json_line_is_a_bad_row_naming_its_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n' + DEEP + "\n")
    with pytest.raises(DataError, match=f"{path}:2: JSON nested too deeply to read"):
        list(iter_jsonl(path))
    stats: dict = {}
    assert [n for n, _ in iter_jsonl(path, skip_bad_rows=True, stats=stats)] == [1]
    assert stats["bad_rows"] == 1


def test_data_stats_on_deep_json_is_one_line(fake_root, capsys, in_thread):
    (fake_root / "tatqa/dataset_raw/tatqa_dataset_dev.json").write_text(DEEP)
    rc, err = _stats(capsys, in_thread, fake_root, "finance")
    _one_line_error(rc, err, "tatqa_dataset_dev.json", "nested too deeply")


# -- pipes and devices ---------------------------------------------------------------------------------

@needs_fifo
def test_a_fifo_data_file_is_refused_before_reading(fake_root, capsys, in_thread):
    train = fake_root / GSM_TRAIN
    train.unlink()
    os.mkfifo(train)
    t0 = time.perf_counter()
    rc, err = _stats(capsys, in_thread, fake_root)
    _one_line_error(rc, err, str(train), "named pipe (FIFO)", "refused before reading")
    assert time.perf_counter() - t0 < 15


@needs_dev_zero
def test_a_symlink_to_dev_zero_is_refused_before_reading(fake_root, capsys, in_thread):
    train = fake_root / GSM_TRAIN
    train.unlink()
    train.symlink_to("/dev/zero")
    rc, err = _stats(capsys, in_thread, fake_root)
    _one_line_error(rc, err, str(train), "character device")
    with pytest.raises(DataError, match="character device"):
        in_thread(lambda: load_domain("math", fake_root))


@needs_fifo
@pytest.mark.parametrize(("fmt", "name"), [("tabular", "rows.jsonl"), ("tabular", "rows.csv"), ("tatqa", "t.json"),
                                           ("pubmedqa", "p.json"), ("medquad", "m.csv"), ("gsm8k", "g.jsonl"),
                                           ("mathqa", "m.json")])
def test_every_reader_refuses_a_fifo(tmp_path, fmt, name, in_thread):
    """Each format's reader goes through the checked read (MedQuAD's path, which may be a folder, too)."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=f"{fifo}: expected a regular file, found a named pipe"):
        in_thread(lambda: read_source(SourceSpec(format=fmt, path=name), tmp_path, "d", skip_bad_rows=True))


@needs_fifo
def test_a_medquad_path_that_is_a_fifo_is_not_taken_for_a_folder(tmp_path, in_thread):
    fifo = tmp_path / "medquad"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=f"{fifo}: unknown format"):  # read as a flat file: refused by its name
        in_thread(lambda: read_source(SourceSpec(format="medquad", path="medquad"), tmp_path, "d", skip_bad_rows=True))


# -- the data root ---------------------------------------------------------------------------------------

def test_a_data_root_that_is_a_file(tmp_path, capsys, in_thread):
    afile = tmp_path / "root.txt"
    afile.write_text("x")
    with pytest.raises(DataError, match=f"{afile}: not a folder; the data folder must be a folder"):
        resolve_path("gsm8k/x.jsonl", afile)
    rc, err = _stats(capsys, in_thread, afile)
    _one_line_error(rc, err, str(afile), "is a file", "must be a folder", "--data-root")
