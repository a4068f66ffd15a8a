"""An output is never the model, the data or the config a command reads, nor inside or above them, even with
--overwrite (which would replace them): exit 2, one line naming both, everything left as it was."""

from __future__ import annotations

import pytest
from tiny_models import save_tiny_gpt2

from hostile_fixtures import assert_user_error, run_cli, snapshot, write_adapter, write_gsm8k


@pytest.fixture()
def inputs(tmp_path):
    """A tiny GPT-2 folder, a data root with GSM8K, a config file, each in a folder of its own."""
    model = save_tiny_gpt2(tmp_path / "models" / "gpt2")
    root = write_gsm8k(tmp_path / "data")
    config = tmp_path / "configs" / "exp.yaml"
    config.parent.mkdir()
    config.write_text(f"domains: [math, finance]\nseeds: [0]\nmodel: {model}\ndata: {{root: {root}, max_length: 64}}\n")
    return model, root, config


def _train(model, root, out, *extra):
    return ["train", "--domain", "math", "--model", model, "--data-root", root, "--out", out, "--device", "cpu",
            "--overwrite", *extra]


@pytest.mark.parametrize("where", ["model", "model/sub", "data", "data/gsm8k", "data/new", "models"])
def test_train_refuses_an_output_over_its_model_or_data(inputs, where, tmp_path, capsys):
    model, root, _ = inputs
    out = {"model": model, "model/sub": model / "sub", "data": root, "data/gsm8k": root / "gsm8k",
           "data/new": root / "new", "models": model.parent}[where]
    before = {"model": snapshot(model), "data": snapshot(root)}
    rc, _, err = run_cli(_train(model, root, out), capsys)
    assert_user_error(rc, err, out, "overlaps the input")
    assert {"model": snapshot(model), "data": snapshot(root)} == before
    assert not (model / "sub").exists() and not (root / "new").exists()


def test_train_refuses_its_config_file_as_the_output(inputs, capsys):
    model, root, config = inputs
    text = config.read_text()
    rc, _, err = run_cli(["train", "--config", config, "--domain", "math", "--out", config, "--overwrite",
                          "--device", "cpu"], capsys)
    assert_user_error(rc, err, config, "overlaps the input")
    assert config.is_file() and config.read_text() == text


def test_reproduce_refuses_a_run_folder_that_holds_its_config(inputs, capsys):
    _, _, config = inputs
    rc, _, err = run_cli(["reproduce", "--config", config, "--out", config.parent, "--overwrite"], capsys)
    assert_user_error(rc, err, config.parent, "overlaps the input")
    assert sorted(p.name for p in config.parent.iterdir()) == ["exp.yaml"]


@pytest.mark.parametrize("inside", [False, True])
def test_merge_into_base_refuses_the_base_model_folder(inputs, inside, tmp_path, capsys):
    model, _, _ = inputs
    adapter = write_adapter(tmp_path / "adapters" / "a", base=str(model))
    out = model / "merged" if inside else model
    before = snapshot(model)
    rc, _, err = run_cli(["compose", adapter, "--out", out, "--merge-into-base", "--model", model, "--overwrite"],
                         capsys)
    assert_user_error(rc, err, out, "overlaps the input")
    assert snapshot(model) == before


def test_an_output_beside_the_inputs_is_fine(inputs, tmp_path, capsys):
    """Only overlaps are refused: a model called like the output's folder elsewhere, or a hub id, is no input."""
    model, root, _ = inputs
    adapter = write_adapter(tmp_path / "adapters" / "a", base=str(model))
    rc, out, err = run_cli(["compose", adapter, "--out", tmp_path / "gpt2", "--merge-into-base", "--model", model],
                           capsys)
    assert rc == 0, err
    assert (tmp_path / "gpt2" / "config.json").is_file()
