import json

import pytest

from lorasum.errors import OutputExistsError, UserError
from lorasum.storage import atomic_dir, atomic_write_bytes, atomic_write_json, check_output, sha256_file, sha256_json


def test_atomic_write_json_roundtrip_and_no_temp_left(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "x.json", {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "adapter"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.safetensors").write_bytes(b"12")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_to_clobber_and_keeps_old_content(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_dir(target):
            pass
    assert (target / "keep.txt").read_text() == "mine"
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("killed")
    assert (target / "keep.txt").read_text() == "mine", "a failed overwrite must keep the old folder"
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_check_output_accepts_empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty") == tmp_path / "empty"
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError):
        check_output(tmp_path / "f")


def test_hashes_are_canonical(tmp_path):
    assert sha256_json({"a": 1, "b": 2}) == sha256_json({"b": 2, "a": 1})
    assert sha256_json({"a": 1}) != sha256_json({"a": 2})
    import hashlib

    p = tmp_path / "f.bin"
    p.write_bytes(b"abc" * 1000)
    assert sha256_file(p) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        f = atomic_write_json(tmp_path / "r.json", {})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_atomic_write_to_a_folder_names_the_folder_not_a_temporary_file(tmp_path):
    (tmp_path / "plot.png").mkdir()
    (tmp_path / "plot.png" / "mine.txt").write_text("kept")
    with pytest.raises(UserError, match=r"plot\.png: cannot write: is a folder; give a file name$") as info:
        atomic_write_bytes(tmp_path / "plot.png", b"data")
    assert ".tmp" not in str(info.value)
    assert [p.name for p in tmp_path.rglob("*")] == ["plot.png", "mine.txt"]  # nothing left behind
    assert (tmp_path / "plot.png" / "mine.txt").read_text() == "kept"


def test_a_failed_overwrite_keeps_the_old_folder_and_leaves_no_holder(tmp_path, monkeypatch):
    """The old output cannot be moved aside (a read-only folder, simulated): it stays as it was and neither
    the new folder nor the hidden holder of the old copy is left behind."""
    import errno
    import os

    import lorasum.storage as storage

    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real = os.replace

    def refuse_old(src, dst):
        if os.fspath(src) == os.fspath(out):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(src))
        return real(src, dst)

    monkeypatch.setattr(storage.os, "replace", refuse_old)
    with pytest.raises(UserError, match=r"o: cannot write: Permission denied"):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_a_refused_temporary_file_is_reported_as_its_folder(tmp_path, monkeypatch):
    import errno
    import tempfile

    def refuse(prefix, suffix, dir):
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}x1y2.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UserError) as info:
        atomic_write_bytes(tmp_path / "report" / "plot.png", b"x")
    assert str(info.value) == f"{tmp_path / 'report' / 'plot.png'}: cannot write: Permission denied (in the folder " \
                              f"{tmp_path / 'report'})"
