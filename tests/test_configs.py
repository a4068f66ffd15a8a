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
        ("a: [1, 2\nb: 3\n", "invalid YAML: line 2, column 2: expected ',' or ']'"),
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


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("data:\n  max_length: true\n", "data.max_length: Input should be a valid integer"),
        ("data:\n  max_length: 512.0\n", "data.max_length: Input should be a valid integer"),
        ("data:\n  max_length: '512'\n", "data.max_length: Input should be a valid integer"),
        ("data:\n  split_seed: false\n", "data.split_seed"),
        ("lora:\n  r: true\n", "lora.r"),
        ("train:\n  batch_size: yes\n", "train.batch_size"),
        ("train:\n  checkpoint_every: true\n", "train.checkpoint_every"),
        ("eval:\n  stride: true\n", "eval.stride"),
        ("seeds: [true, 2]\n", "seeds.0: Input should be a valid integer"),
        ("seeds: [0, -1]\n", "seeds.1: Input should be greater than or equal to 0"),
        (f"seeds: [{2 ** 63}]\n", "seeds.0: Input should be less than"),
        ("custom_domains:\n  legal:\n    max_length: true\n    sources: [{format: tabular, path: x.jsonl}]\n",
         "custom_domains.legal.max_length"),
    ],
)
def test_integer_keys_are_strict_and_seeds_not_negative(tmp_path, text, fragment):
    """YAML's true is not 1 and 512.0 is not an integer: pydantic's lax mode would take both silently; a negative
    seed would be wrapped by torch onto another one (-1 trains as 2**64 - 1)."""
    path = tmp_path / "c.yaml"
    path.write_text("domains: [math, medicine]\n" + text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: ") and fragment in str(e.value), str(e.value)


def test_integer_keys_take_integers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("domains: [math, medicine]\nseeds: [0, 7]\ndata: {max_length: 64, split_seed: 3}\n"
                    "train: {batch_size: 2, checkpoint_every: null}\n")
    cfg = load_config(path)
    assert (cfg.seeds, cfg.data.max_length, cfg.data.split_seed, cfg.train.batch_size) == ([0, 7], 64, 3, 2)
    assert cfg.train.checkpoint_every is None


def test_an_unknown_domain_fails_with_the_config_not_after_the_model_loads(tmp_path):
    """reproduce made the run folder and loaded the model before it found an unknown domain."""
    from lorasum.config import load_config
    from lorasum.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("model: smollm2-135m\ndomains: [math, nosuch]\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown domain 'nosuch'; known domains: math"):
        load_config(path)
    path.write_text("model: smollm2-135m\ndomains: [math, legal]\ncustom_domains:\n  legal:\n    sources: "
                    "[{format: tabular, path: legal.jsonl, question_field: q, answer_field: a}]\n")
    assert load_config(path).domains == ["math", "legal"]  # a custom domain is known
