"""An --out that cannot be written (a file above it, /proc, a read-only folder) is refused before the data,
the model or any training: one stderr line naming the path, exit 2, nothing written."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest

from lorasum.cli import main

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
CONFIG = "domains: [math, medicine]\nmodel: /nonexistent-model\ndevice: cpu\n"


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The current folder, with ``config.yaml`` and a file ``afile``; loading a model, data or training fails
    the test (the refusal must come first)."""
    import lorasum.data
    import lorasum.models
    import lorasum.train
    from lorasum.cli import _options

    def called(*a, **k):
        pytest.fail("reached a slow step before the output was checked")

    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text(CONFIG)
    (work / "afile").write_text("mine")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("LORASUM_DATA_ROOT", str(tmp_path / "data"))
    for module, name in ((lorasum.models, "load_model"), (lorasum.train, "train_adapter"),
                         (lorasum.data, "load_domains"), (_options, "load_data")):
        monkeypatch.setattr(module, name, called)
    return work


def _files(work) -> list[str]:
    return sorted(p.relative_to(work.parent).as_posix() for p in work.parent.rglob("*"))


def _refused(argv, capsys, *fragments) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorasum: error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _train(out):
    return ["train", "-q", "--domain", "math", "--out", out, "--device", "cpu"]


@pytest.mark.parametrize("out", ["afile/x", "afile/x/y"])
def test_train_out_below_a_file(out, work, capsys):
    before = _files(work)
    _refused(_train(out), capsys, f"{out}: cannot write: afile is a file, not a folder")
    assert _files(work) == before and (work / "afile").read_text() == "mine"


@pytest.mark.parametrize("out", ["/proc/lorasum-x", "/proc/lorasum-x/y"])
def test_train_out_in_proc(out, work, capsys):
    """The user report: `--out /proc/x` trained, then failed writing /proc/.x.*.tmp. /proc takes no new entry
    even from root."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    _refused(_train(out), capsys, f"{out}: cannot write: the folder /proc does not accept new files")


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_train_out_in_a_read_only_folder(work, capsys):
    (work / "ro").mkdir()
    (work / "ro").chmod(0o555)
    try:
        _refused(_train("ro/a/b"), capsys, "ro/a/b: cannot write: the folder ro does not accept", "Permission denied")
    finally:
        (work / "ro").chmod(0o755)


def test_train_out_in_a_folder_that_refuses_entries_simulated(work, capsys, monkeypatch):
    """The read-only case, simulated so that it also runs as root."""
    real = tempfile.mkdtemp

    def refuse(*args, **kw):
        if os.path.realpath(str(kw.get("dir"))) == os.path.realpath(work / "ro"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, **kw)

    (work / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    _refused(_train("ro/adapter"), capsys, "ro/adapter: cannot write", "Read-only file system")
    assert list((work / "ro").iterdir()) == []


def test_train_nested_out_in_a_missing_folder_gets_past_the_check(work, capsys, monkeypatch):
    """`--out runs/a/b` with no runs/ yet is fine (the folders are made when the adapter is written): the
    command goes on to load the data."""
    import lorasum.cli.train as train_cli
    from lorasum.errors import UserError

    def load_data(*a, **k):
        raise UserError("reached the data")

    monkeypatch.setattr(train_cli, "_load_data", load_data)
    _refused(_train("runs/a/b"), capsys, "reached the data")
    assert not (work / "runs").exists()


def test_compose_out_in_proc_is_refused_before_the_adapters_are_read(work, capsys):
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    _refused(["compose", "missing-a", "missing-b", "--out", "/proc/lorasum-x"], capsys,
             "/proc/lorasum-x: cannot write: the folder /proc does not accept new files")
    _refused(["compose", "missing-a", "missing-b", "--out", "afile/sum"], capsys,
             "afile/sum: cannot write: afile is a file, not a folder")


@pytest.mark.parametrize("out", ["/proc/lorasum-x", "afile/run"])
def test_reproduce_out_that_cannot_be_made_is_refused_before_the_model(out, work, capsys):
    if out.startswith("/proc") and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    _refused(["reproduce", "-q", "--config", "config.yaml", "--out", out], capsys, f"{out}: cannot create the run "
             "folder")
