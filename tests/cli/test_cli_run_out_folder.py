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


def _not_a_checkpoint(work, kind):
    """Put something of the user's at ``adapter.ckpt`` (train's checkpoint path for --out adapter); returns a
    function giving what is there (to check it is unchanged) and the words the message must use for it."""
    ckpt = work / "adapter.ckpt"
    if kind == "file":
        ckpt.write_text("my notes\n")
        return lambda: ckpt.read_text(), "(a file)"
    if kind == "folder":  # no state.json: not a checkpoint, whatever its other files are called
        ckpt.mkdir()
        (ckpt / "rng.safetensors").write_bytes(b"mine")
        (ckpt / "notes.txt").write_text("mine")
        return lambda: sorted((p.name, p.read_bytes()) for p in ckpt.iterdir()), "(a folder holding files that a " \
            "checkpoint does not have: notes.txt)"
    if kind == "folder-own-state":  # a state.json of the user's (not lorasum's format), nothing else
        ckpt.mkdir()
        (ckpt / "state.json").write_text('{"format": "my-tool/2"}')
        return lambda: (ckpt / "state.json").read_text(), "(a folder whose state.json is not a lorasum checkpoint's)"
    if kind == "fifo":
        os.mkfifo(ckpt)
        return lambda: ckpt.is_fifo(), "(a named pipe (FIFO))"
    (work / "target").mkdir()
    (work / "target" / "keep.txt").write_text("mine")
    ckpt.symlink_to(work / "target")
    return lambda: (ckpt.is_symlink(), (work / "target" / "keep.txt").read_text()), "(a symbolic link)"


@pytest.mark.parametrize("kind", ["file", "folder", "folder-own-state", "fifo", "symlink"])
def test_train_never_deletes_what_is_not_a_checkpoint_at_out_ckpt(kind, work, capsys):
    """--overwrite (and --resume) used to delete whatever was at OUT.ckpt: a file, a folder of the user's, a
    FIFO. Only a lorasum checkpoint may go; anything else is refused before the data or the model, with or
    without the flags, and a plain file is no longer called "a checkpoint"."""
    if kind == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    what, words = _not_a_checkpoint(work, kind)
    before = what()
    for flags in ([], ["--overwrite"], ["--resume"], ["--resume", "--overwrite"]):
        line = _refused([*_train("adapter"), *flags], capsys,
                        f"adapter.ckpt: exists and is not a lorasum training checkpoint {words}; move it away")
        assert "pass --resume" not in line, line
        assert what() == before, flags
    assert not (work / "adapter").exists()
