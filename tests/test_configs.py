"""Every shipped config validates against the schema; the schema refuses bad input clearly."""

from pathlib import Path

import pytest

from lorasum.config import load_config
from lorasum.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


def test_configs_found():
    assert CONFIGS, "no configs/ found"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    cfg = load_config(path)
    assert len(cfg.domains) >= 2
    assert cfg.lora.r > 0


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model: gpt2\nbogus: 1\n", "bogus"),
        ("lora:\n  r: -1\n", "lora.r"),
        ("domains: [math]\n", "domains"),
        ("domains: [math, math]\n", "domains"),
        ("train:\n  learning_rate: fast\n", "train.learning_rate"),
        ("- a\n- b\n", "mapping"),
        ("model: [unclosed\n", "invalid YAML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_non_utf8_config(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(bad)


def test_overrides_apply_before_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("domains: [math, medicine]\n")
    assert load_config(path, seeds=[3, 4]).seeds == [3, 4]
    with pytest.raises(ConfigError):
        load_config(path, seeds=[1, 1])
