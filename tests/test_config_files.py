"""Reading experiment configs: keys written twice, YAML nested too deeply, configs that are not regular
files, values given by flags, and data folders that are files."""

from __future__ import annotations

import os

import pytest

from lorasum.config import DataSpec, data_root, load_config
from lorasum.errors import ConfigError

BASE = "domains: [math, medicine]\n"


def _write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "key", "line", "first"), [
    (BASE + "seeds: [0]\nseeds: [1]\n", "seeds", 3, 2),
    (BASE + "train:\n  batch_size: 2\n  learning_rate: 0.1\n  batch_size: 3\n", "batch_size", 5, 3),
    (BASE + "train: {batch_size: 2, batch_size: 3}\n", "batch_size", 2, 2),
    (BASE + "custom_domains:\n  legal:\n    sources: [{format: tabular, path: a.jsonl, path: b.jsonl}]\n",
     "path", 4, 4),
    ("domains: [math, medicine]\ndomains: [math, finance]\n", "domains", 2, 1),
])
def test_a_key_written_twice_is_refused_naming_the_file_key_and_lines(tmp_path, text, key, line, first):
    """PyYAML keeps the last value of a repeated key: one of the two settings would be lost silently."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: line {line}: key {key!r} is written twice in one mapping (also at line {first})")
    assert "\n" not in msg


def test_merge_keys_may_be_overridden(tmp_path):
    """``<<: *base`` then a key of base is YAML's way of overriding it, not a duplicate."""
    path = _write(tmp_path, BASE + "eval: &e {batch_size: 2}\ntrain:\n  <<: *e\n  batch_size: 5\n  epochs: 2\n")
    cfg = load_config(path)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.eval.batch_size) == (5, 2, 2)


def test_the_same_key_in_different_mappings_is_fine(tmp_path):
    path = _write(tmp_path, BASE + "train: {batch_size: 2}\neval: {batch_size: 3}\n")
    cfg = load_config(path)
    assert (cfg.train.batch_size, cfg.eval.batch_size) == (2, 3)


@pytest.mark.parametrize("text", ["[" * 100_000, "a:\n" + "".join(" " * i + "- \n" for i in range(3000)),
                                  "{a: " * 50_000])
def test_yaml_nested_too_deeply_is_a_config_error(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"{path}: (YAML nested too deeply to read|invalid YAML)"):
        load_config(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_config_that_is_a_pipe_or_device_is_refused_without_waiting(tmp_path, in_thread):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=f"{fifo}: expected a regular file, found a named pipe"):
        in_thread(lambda: load_config(fifo))
    if os.path.exists("/dev/zero"):
        (tmp_path / "zero.yaml").symlink_to("/dev/zero")
        with pytest.raises(ConfigError, match="found a character device"):
            in_thread(lambda: load_config(tmp_path / "zero.yaml"))


def test_values_given_by_flags_are_reported_as_the_flags(tmp_path):
    path = _write(tmp_path, BASE)
    flags = {"seeds": "--seeds", "domains": "--domains"}
    with pytest.raises(ConfigError, match=r"^--seeds 1,1: seeds listed twice: \[1, 1\]$"):
        load_config(path, flags=flags, seeds=[1, 1])
    with pytest.raises(ConfigError, match=r"^--domains math: List should have at least 2 items"):
        load_config(path, flags=flags, domains=["math"])
    with pytest.raises(ConfigError, match=rf"^{path}: seeds: Value error, seeds listed twice"):
        load_config(_write(tmp_path, BASE + "seeds: [2, 2]\n"), flags=flags)  # the file's own value
    assert load_config(path, flags=flags, seeds=[3]).seeds == [3]


def test_a_data_folder_that_is_a_file_says_it_must_be_a_folder(tmp_path, monkeypatch):
    afile = tmp_path / "root.txt"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=rf"{afile}: is a file; the data folder \(from data.root or --data-root\) "
                                          "must be a folder"):
        data_root(DataSpec(root=str(afile)))
    monkeypatch.setenv("LORASUM_DATA_ROOT", str(afile))
    with pytest.raises(ConfigError, match=r"is a file; the data folder \(from LORASUM_DATA_ROOT\) must be a folder"):
        data_root(None)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="is a broken symlink"):
        data_root(DataSpec(root=str(tmp_path / "dangling")))
    with pytest.raises(ConfigError, match="data folder does not exist"):
        data_root(DataSpec(root=str(tmp_path / "none")))
    assert data_root(DataSpec(root=str(tmp_path))) == tmp_path
