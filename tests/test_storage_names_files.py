"""storage: output paths with no name of their own, the permissions of folders written by atomic_dir, and
reading only regular files (devices, pipes and folders are refused before a byte is read)."""

from __future__ import annotations

import os
import stat

import pytest

from lorasum.errors import ConfigError, UserError
from lorasum.storage import check_output_name, atomic_dir, check_output, read_regular_file


@pytest.fixture
def umask():
    """Set the process umask for the test (``umask(0o022)``) and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- names -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["", " ", "\t", ".", "..", "/", "./", "a/..", "runs/x/..", b""])
def test_output_paths_that_name_nothing_are_refused(path):
    with pytest.raises(UserError, match="output path .* (is empty or blank|names no file or folder of its own)"):
        check_output_name(path)


@pytest.mark.parametrize("path", ["x", "runs/x", "runs/x/", "runs/x/.", "./x", "/tmp/x", "..x", "a b"])
def test_output_paths_with_a_name_are_accepted(path):
    check_output_name(path)


@pytest.mark.parametrize("path", ["", ".", ".."])
def test_check_output_and_atomic_dir_refuse_before_touching_anything(path, tmp_path, monkeypatch):
    """``--out ""`` would be the current folder: with --overwrite it would be replaced. Refused, and nothing is
    created or removed, with or without overwrite."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    for overwrite in (False, True):
        with pytest.raises(UserError, match="output path"):
            check_output(path, overwrite=overwrite)
        with pytest.raises(UserError, match="output path"), atomic_dir(path, overwrite=overwrite) as tmp:
            (tmp / "new.txt").write_text("x")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.txt", "work"]


# -- permissions -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("mask", "file_mode", "exe_mode", "dir_mode"), [(0o022, 0o644, 0o755, 0o755),
                                                                         (0o077, 0o600, 0o700, 0o700),
                                                                         (0o002, 0o664, 0o775, 0o775)])
def test_atomic_dir_gives_the_usual_permissions(tmp_path, umask, mask, file_mode, exe_mode, dir_mode):
    """safetensors' save_file writes 0600 files: an adapter folder would be unreadable to the group and others
    although every other file lorasum writes follows the umask. The finished folder follows the umask."""
    umask(mask)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    os.chmod(outside, 0o600)
    with atomic_dir(tmp_path / "adapter") as tmp:
        os.close(os.open(tmp / "private.bin", os.O_WRONLY | os.O_CREAT, 0o600))
        os.close(os.open(tmp / "tool.sh", os.O_WRONLY | os.O_CREAT, 0o700))
        (tmp / "sub").mkdir(mode=0o700)
        os.close(os.open(tmp / "sub" / "deep.json", os.O_WRONLY | os.O_CREAT, 0o400))
        (tmp / "link").symlink_to(outside)
    out = tmp_path / "adapter"
    assert _mode(out) == dir_mode and _mode(out / "sub") == dir_mode
    assert _mode(out / "private.bin") == file_mode and _mode(out / "sub" / "deep.json") == file_mode
    assert _mode(out / "tool.sh") == exe_mode
    assert _mode(outside) == 0o600  # a symlink is not followed


def test_a_safetensors_file_in_an_atomic_dir_is_readable_as_the_umask_says(tmp_path, umask):
    import torch
    from safetensors.torch import save_file

    umask(0o022)
    with atomic_dir(tmp_path / "adapter") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "adapter_model.safetensors"))
    assert _mode(tmp_path / "adapter" / "adapter_model.safetensors") == 0o644
    assert _mode(tmp_path / "adapter") == 0o755


def test_a_saved_adapter_is_readable_as_the_umask_says(tmp_path, umask):
    """save_adapter writes adapter_model.safetensors with safetensors' save_file (0600 on its own)."""
    import torch

    from lorasum.adapters import Adapter, LoraFactor, save_adapter

    umask(0o022)
    adapter = Adapter(factors={"transformer.h.0.attn.c_attn": LoraFactor(A=torch.ones(1, 4), B=torch.ones(4, 1),
                                                                          scaling=1.0)})
    out = save_adapter(adapter, tmp_path / "adapter")
    assert _mode(out) == 0o755
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert any(p.name == "adapter_model.safetensors" for p in files)
    assert {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}


# -- reading regular files only ----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_refused_before_reading(tmp_path, in_thread):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=r"data.jsonl: expected a regular file, found a named pipe \(FIFO\); "
                                        "refused before reading"):
        in_thread(lambda: read_regular_file(fifo))
    link = tmp_path / "link.jsonl"
    link.symlink_to(fifo)
    with pytest.raises(ConfigError, match="named pipe"):
        in_thread(lambda: read_regular_file(link, error=ConfigError))


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_a_symlink_to_a_device_is_refused(tmp_path, in_thread):
    link = tmp_path / "train.jsonl"
    link.symlink_to("/dev/zero")
    with pytest.raises(UserError, match=r"train.jsonl: expected a regular file, found a character device"):
        in_thread(lambda: read_regular_file(link))


def test_missing_folder_loop_and_a_good_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        read_regular_file(tmp_path / "nope.yaml", error=ConfigError, what="config file")
    with pytest.raises(UserError, match="expected a file, found a folder"):
        read_regular_file(tmp_path)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(UserError, match=r"loop: cannot read \("):
        read_regular_file(tmp_path / "loop")
    (tmp_path / "ok.txt").write_bytes(b"abc\n")
    (tmp_path / "ok-link").symlink_to(tmp_path / "ok.txt")
    assert read_regular_file(tmp_path / "ok.txt") == read_regular_file(tmp_path / "ok-link") == b"abc\n"


@pytest.mark.parametrize("name", ["a" * 255, "é" * 127 + "x", "d" * 246 + ".json"])
def test_names_up_to_the_file_system_limit_are_written(tmp_path, name):
    """The temporary sibling (.NAME.<8 random>.tmp) of a long name was over 255 bytes: an output name of 242 to
    255 bytes failed only when the result was written (after training). The temporary's name is cut instead."""
    from lorasum.storage import atomic_dir, atomic_write_text, check_output

    assert len(name.encode()) == 255 or name.endswith(".json")
    check_output(tmp_path / name)
    if name.endswith(".json"):
        atomic_write_text(tmp_path / name, "{}")
        assert (tmp_path / name).read_text() == "{}"
    else:
        with atomic_dir(tmp_path / name) as tmp:
            (tmp / "f").write_text("x")
        with atomic_dir(tmp_path / name, overwrite=True) as tmp:  # the .old holder too
            (tmp / "f").write_text("y")
        assert (tmp_path / name / "f").read_text() == "y"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left


def test_a_name_longer_than_the_file_system_allows_is_refused_up_front(tmp_path):
    from lorasum.errors import UserError
    from lorasum.storage import check_output

    with pytest.raises(UserError, match="is 256 bytes long, more than the 255 a file system allows in one name"):
        check_output(tmp_path / ("b" * 256) / "adapter")
