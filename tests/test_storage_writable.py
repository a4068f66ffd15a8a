"""An output whose folder cannot take it is refused by :func:`check_output` before any work, with one line
naming the path; a missing folder that lorasum would create (``--out runs/a/b``) is still fine."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest

from lorasum.errors import UserError
from lorasum.storage import atomic_dir, check_output, check_writable_parent

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_missing_folders_above_the_output_are_fine_and_created_later(tmp_path):
    out = tmp_path / "runs" / "a" / "b"
    assert check_output(out) == out
    assert _entries(tmp_path) == []  # nothing made by the check, and its trial folder is gone
    with atomic_dir(out) as tmp:
        (tmp / "f").write_text("x")
    assert (out / "f").read_text() == "x"


def test_a_relative_output_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output("out") == check_output("out", overwrite=True)
    assert _entries(tmp_path) == []


@pytest.mark.parametrize("below", ["x", "x/y/z"])
def test_a_file_where_a_folder_should_be(tmp_path, below):
    (tmp_path / "afile").write_text("keep")
    out = tmp_path / "afile" / below
    for overwrite in (False, True):
        with pytest.raises(UserError) as e:
            check_output(out, overwrite)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{out}: cannot write: ")
        assert f"{tmp_path / 'afile'} is a file, not a folder" in msg
    assert (tmp_path / "afile").read_text() == "keep"


def test_a_broken_symlink_where_a_folder_should_be(tmp_path):
    os.symlink("missing", tmp_path / "link")
    with pytest.raises(UserError, match="is a broken symlink, not a folder"):
        check_output(tmp_path / "link" / "out")


@pytest.mark.parametrize("out", ["/proc/lorasum-x", "/proc/lorasum-x/nested/out"])
def test_a_folder_that_takes_no_new_entry_even_for_root(out):
    """/proc accepts no new file, whoever asks (root passes os.access on it: a trial entry tells)."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    with pytest.raises(UserError) as e:
        check_output(out)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{out}: cannot write: the folder /proc does not accept new files")
    assert "choose another output path" in msg


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for out in (ro / "x", ro / "missing" / "x"):
            with pytest.raises(UserError, match=rf"{out}: cannot write: the folder {ro} .*Permission denied"):
                check_output(out)
    finally:
        ro.chmod(0o755)


def test_a_folder_that_refuses_entries_simulated(tmp_path, monkeypatch):
    """The read-only case, simulated so that it also runs as root."""
    real = tempfile.mkdtemp

    def refuse(*args, **kw):
        if str(kw.get("dir")) == str(tmp_path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, **kw)

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(UserError, match=r"cannot write: the folder .* \(Read-only file system\)"):
        check_output(tmp_path / "a" / "b")
    with pytest.raises(UserError, match="Read-only file system"):
        check_writable_parent(tmp_path / "c")


def test_an_existing_empty_folder_in_a_folder_that_refuses_entries(tmp_path, monkeypatch):
    """An empty output folder is replaced by a rename too: its parent must take the temporary folder."""
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: (_ for _ in ()).throw(PermissionError(
        errno.EACCES, os.strerror(errno.EACCES))))
    with pytest.raises(UserError, match="Permission denied"):
        check_output(tmp_path / "empty")
