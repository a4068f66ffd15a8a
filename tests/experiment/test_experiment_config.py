"""ExperimentConfig's hybrids / methods / method_params: defaults, validation against lorasum.compose.METHODS."""

from __future__ import annotations

import pytest

from lorasum.compose import METHODS
from lorasum.config import load_config
from lorasum.errors import ConfigError
from lorasum.experiment import plan_of


def _load(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text("domains: [math, medicine, finance]\n" + text)
    return load_config(path)


def test_defaults_are_sum_with_hybrids(tmp_path):
    cfg = _load(tmp_path, "")
    assert cfg.methods == ["sum"] and cfg.method_params == {} and cfg.hybrids is True
    kinds = {a.kind for a in plan_of(cfg).adapters}
    assert kinds == {"single", "merged", "sum", "hybrid"}


def test_methods_with_params_reach_the_plan(tmp_path):
    cfg = _load(tmp_path, "methods: [sum, svd, ties, dare_ties]\n"
                          "method_params: {svd: {rank: 4}, ties: {density: 0.2}}\nhybrids: false\n")
    grid = plan_of(cfg)
    assert grid.methods == ("sum", "svd", "ties", "dare_ties") and not grid.hybrids
    assert {a.params for a in grid.adapters if a.method == "svd"} == {(("rank", 4),)}
    assert {a.params for a in grid.adapters if a.method == "dare_ties"} == {()}


@pytest.mark.parametrize("text, fragments", [
    ("methods: [sum, bogus]\n", ["methods", "bogus", *sorted(METHODS)]),
    ("methods: [svd]\n", ["method_params", "svd", "rank"]),
    ("methods: [ties]\nmethod_params: {ties: {densty: 0.2}}\n", ["method_params", "densty", "density"]),
    ("method_params: {ties: {density: 0.2}}\n", ["method_params", "ties", "not listed"]),
    ("methods: [ties, ties]\n", ["methods", "twice"]),
    ("methods: [ties]\nmethod_params: {ties: {weights: [1, 2]}}\n", ["weights"]),
    ("methods: []\n", ["methods"]),
    ("hybrids: maybe\n", ["hybrids"]),
])
def test_bad_methods_are_config_errors_naming_file_and_key(tmp_path, text, fragments):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    msg = str(e.value)
    assert str(tmp_path / "c.yaml") in msg and "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)


@pytest.mark.parametrize("params,fragment", [
    ("{svd: {rank: abc}}", "method_params.svd: svd: rank must be a positive integer"),
    ("{svd: {rank: 2}, ties: {density: 5}}", "method_params.ties: density must lie in (0, 1]"),
])
def test_bad_method_parameter_values_fail_when_the_config_is_read(tmp_path, params, fragment):
    """Found by a hostile tester: these used to surface only after all the training of an experiment."""
    from lorasum.config import load_config
    from lorasum.errors import ConfigError

    path = tmp_path / "m.yaml"
    path.write_text(f"methods: [sum, svd, ties]\nmethod_params: {params}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and fragment in str(e.value)


@pytest.mark.parametrize("key", ["parallel_adapters", "parallel_max_tokens"])
@pytest.mark.parametrize("value", ["false", "true", '"2"', "1.5", "-1"])
def test_parallel_keys_take_integers_only(tmp_path, key, value):
    """YAML booleans must not pass as 0 / 1 (parallel_adapters: false would mean 'all together')."""
    path = tmp_path / "c.yaml"
    path.write_text(f"train: {{{key}: {value}}}\n")
    with pytest.raises(ConfigError, match=rf"c.yaml: train.{key}"):
        load_config(path)
    path.write_text(f"train: {{{key}: 3}}\n")
    assert getattr(load_config(path).train, key) == 3
