"""lorasum.storage: manifests, free-space checks, file-system errors as one-line UserErrors,
symlink-safe atomic folders, the pickle switch and the header-only safetensors reader."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections import namedtuple
from importlib.metadata import version

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lorasum import storage
from lorasum.errors import UserError
from lorasum.storage import (
    allow_pickle, atomic_dir, atomic_write_bytes, check_free_space, pickle_allowed, read_safetensors_header,
    write_manifest,
)


def _tree_hash(folder):
    lines = sorted(f"{p.relative_to(folder).as_posix()} {hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                   for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def test_manifest_hashes_inputs_and_outputs(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"q": 1}\n')
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "w.bin").write_bytes(os.urandom(1000))
    run = tmp_path / "run"
    (run / "adapters" / "math").mkdir(parents=True)
    (run / "adapters" / "math" / "a.safetensors").write_bytes(b"xyz")
    (run / "results.json").write_text('{"ok": true}')
    path = write_manifest(run, config={"lora": {"r": 4}, "out": run}, inputs={"data": data, "model": model,
                          "gone": tmp_path / "nope"}, outputs=[run / "results.json", run / "adapters"])
    m = json.loads(path.read_text())
    assert path == run / "manifest.json" and m["format"] == "lorasum.manifest.v1"
    assert m["packages"]["torch"] == version("torch") and m["packages"]["safetensors"] == version("safetensors")
    assert m["config"] == {"lora": {"r": 4}, "out": str(run)}
    assert m["inputs"]["data"] == {"path": str(data), "kind": "file", "bytes": 9,
                                   "sha256": hashlib.sha256(b'{"q": 1}\n').hexdigest()}
    assert m["inputs"]["model"]["sha256"] == _tree_hash(model) and m["inputs"]["model"]["files"] == 2
    assert m["inputs"]["gone"]["kind"] == "missing" and m["inputs"]["gone"]["sha256"] is None
    outs = {o["path"]: o for o in m["outputs"]}
    assert outs["results.json"]["sha256"] == hashlib.sha256(b'{"ok": true}').hexdigest()
    assert outs["adapters"]["sha256"] == _tree_hash(run / "adapters")
    # the manifest never hashes itself: writing again (folder output) gives the same digest
    again = json.loads(write_manifest(run, config={}, inputs={}, outputs=[run]).read_text())
    third = json.loads(write_manifest(run, config={}, inputs={}, outputs=[run]).read_text())
    assert again["outputs"][0]["path"] == "." and again["outputs"][0]["sha256"] == third["outputs"][0]["sha256"]


def test_free_space_check(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100, 50, 2_000_000))
    check_free_space(tmp_path / "not" / "yet", 1_000_000)
    with pytest.raises(UserError, match=r"yet: not enough free disk space: the model needs about 3\.0 MB, "
                                         r"2\.0 MB free on " + str(tmp_path)):
        check_free_space(tmp_path / "not" / "yet", 3_000_000, what="the model")


def test_no_space_is_a_user_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=r"r\.json: cannot write: No space left on device"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_write_under_a_file_is_a_user_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        atomic_write_bytes(tmp_path / "f" / "g.json", b"{}")
    with pytest.raises(UserError, match="cannot write"):
        with atomic_dir(tmp_path / "f" / "d"):
            pass


@pytest.mark.parametrize("kind", ["file", "symlink", "broken_symlink"])
def test_atomic_dir_replaces_files_and_symlinks_cleanly(tmp_path, kind):
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("x")
    else:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "keep").write_text("k")
        os.symlink("elsewhere" if kind == "symlink" else "missing", target)
    with pytest.raises(storage.OutputExistsError):
        with atomic_dir(target):
            pass
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("n")
    assert target.is_dir() and not target.is_symlink() and (target / "new").read_text() == "n"
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if kind == "file" else ["elsewhere", "out"])
    if kind == "symlink":
        assert (tmp_path / "elsewhere" / "keep").read_text() == "k"


def test_atomic_dir_restores_the_old_folder_if_the_final_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("o")
    real = os.replace

    def flaky(src, dst):
        if ".tmp" in str(src):
            raise OSError(errno.EXDEV, "cross-device link")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "new").write_text("n")
    assert (target / "old").read_text() == "o" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_allow_pickle_context():
    assert not pickle_allowed()
    with allow_pickle():
        assert pickle_allowed() and not pickle_allowed(False)
        with allow_pickle(False):
            assert not pickle_allowed()
        assert pickle_allowed()
    assert not pickle_allowed() and pickle_allowed(True)


def test_header_reader_matches_safetensors(tmp_path):
    path = tmp_path / "t.safetensors"
    tensors = {"a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.int8), "c": torch.zeros((), dtype=torch.bfloat16)}
    save_file(tensors, str(path), metadata={"k": "v"})
    header = read_safetensors_header(path)
    with safe_open(str(path), "pt") as fh:
        expected = {k: (tuple(fh.get_slice(k).get_shape()), fh.get_slice(k).get_dtype()) for k in fh.keys()}
    assert header == expected
    for bad in (b"", b"\x01\x00", (10**9).to_bytes(8, "little"), (4).to_bytes(8, "little") + b"[1]x",
                (8).to_bytes(8, "little") + b'{"a": 1}'):
        path.write_bytes(bad)
        with pytest.raises(ValueError):
            read_safetensors_header(path)


def test_atomic_dir_overwrite_never_touches_other_names(tmp_path):
    """The old copy waits under a fresh name while the new folder moves in: a user's folder that happens to be
    called ``.out.old`` next to the output survives a replacement (it was deleted before)."""
    target, sibling = tmp_path / "out", tmp_path / ".out.old"
    target.mkdir()
    (target / "old").write_text("o")
    sibling.mkdir()
    (sibling / "important.txt").write_text("backup")
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("n")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert (sibling / "important.txt").read_text() == "backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out"]


def test_overwrite_refuses_what_is_neither_file_nor_folder(tmp_path):
    """``--overwrite`` replaces files, folders and symlinks, never a device, pipe or socket (``/dev/null`` was
    replaced by a folder when run as root)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(storage.OutputExistsError, match="neither a file nor a folder"):
        with atomic_dir(fifo, overwrite=True):
            pass
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_check_no_links_names_the_first_link_below_the_root(tmp_path):
    """A folder lorasum owns (a run folder) is never written through a symbolic link below it; the root
    itself may be one (the user chose it); missing parts are fine."""
    from lorasum.errors import OutputExistsError
    from lorasum.storage import check_no_links, check_tree_no_links

    (tmp_path / "real").mkdir()
    (tmp_path / "root").symlink_to(tmp_path / "real")
    root = tmp_path / "root"
    (root / "a").mkdir()
    (tmp_path / "mine").mkdir()
    (root / "a" / "b").symlink_to(tmp_path / "mine")
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    assert check_no_links(root, root / "new" / "x.json") == root / "new" / "x.json"
    with pytest.raises(OutputExistsError, match=f"^{root / 'a' / 'b'}: is a symbolic link; lorasum writes only"):
        check_no_links(root, root / "a" / "b" / "c" / "x.json")
    with pytest.raises(OutputExistsError, match="dangling: is a symbolic link"):
        check_no_links(root, root / "dangling")
    with pytest.raises(OutputExistsError, match=f"{root / 'a' / 'b'}: is a symbolic link"):
        check_tree_no_links(root, ("missing", "a"))
    check_tree_no_links(root, ("missing",))
    assert list((tmp_path / "mine").iterdir()) == []


def test_a_dotdot_through_a_missing_folder_leaves_no_empty_folder_behind(tmp_path, monkeypatch):
    """The fuzzing report: `--out newp/../c2` wrote c2 but left an empty newp; and the check that c2 exists
    could not see through the missing newp (the OS cannot), so an existing c2 was not noticed."""
    from lorasum.errors import OutputExistsError
    from lorasum.storage import atomic_write_json, check_output, make_folders, settle_path

    monkeypatch.chdir(tmp_path)
    with atomic_dir("newp/../c2") as tmp:
        (tmp / "a.txt").write_text("x")
    atomic_write_json("q/../r/s.json", {"k": 1})
    assert make_folders("a/b/../c/./d") == tmp_path.joinpath("a", "c", "d").relative_to(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "a", "a/c", "a/c/d", "c2", "c2/a.txt", "r", "r/s.json"]
    (tmp_path / "mine.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="mine.txt: already exists"):
        check_output("x/y/../../mine.txt")
    with pytest.raises(OutputExistsError, match="c2: already exists"):
        with atomic_dir("newp/../c2"):
            pass
    assert (tmp_path / "mine.txt").read_text() == "mine" and not (tmp_path / "newp").exists()
    assert str(settle_path("runs/x")) == "runs/x" and str(settle_path("../up/new")) == "../up/new"
