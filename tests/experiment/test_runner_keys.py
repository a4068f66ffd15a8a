"""Cache keys of trained adapters (lorasum.experiment.runner._Context._train_key)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lorasum.config import load_config
from lorasum.experiment.grid import plan
from lorasum.experiment.runner import _Context


def _key(train_update: dict) -> str:
    cfg = load_config("configs/quickstart.yaml")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=train_update)})
    ctx = _Context.__new__(_Context)  # only what _train_key reads
    ctx.cfg, ctx.info = cfg, SimpleNamespace(name="m", config_hash="c", weights_digest="w")
    ctx.hashes = {d: {"train": f"h-{d}", "test": "t"} for d in cfg.domains}
    job = next(j for j in plan(cfg.domains, cfg.seeds).adapters if j.trained)
    return ctx._train_key(job)


def test_attention_dropout_is_part_of_the_key_only_when_set():
    unset = _key({})
    assert _key({"attention_dropout": None}) == unset
    zero, tenth = _key({"attention_dropout": 0.0}), _key({"attention_dropout": 0.1})
    assert len({unset, zero, tenth}) == 3  # an adapter trained with another attention dropout is not reused
    assert _key({"parallel_max_tokens": 1024}) == unset  # memory only: same adapter
    assert _key({"learning_rate": 0.1234}) != unset  # and the key does see the train spec


def test_continuing_a_run_folder_with_another_model_or_lora_is_refused(tmp_path):
    """A run folder is continued only by the same model and LoRA settings: another one would silently replace
    every trained adapter of the run (hours of GPU work). --overwrite recomputes; other changes (evaluation,
    methods) continue the run."""
    from lorasum.config import load_config
    from lorasum.errors import OutputExistsError
    from lorasum.experiment.runner import _prepare_run_folder

    cfg = load_config("configs/quickstart.yaml")
    out = tmp_path / "run"
    assert _prepare_run_folder(out, cfg, overwrite=False) is False  # a new folder: nothing to reuse
    assert _prepare_run_folder(out, cfg, overwrite=False) is True
    made = out / "adapters" / "seed0" / "math"
    made.mkdir(parents=True)
    (made / "adapter_config.json").write_text("{}")  # the run has made something another model would replace
    other_model = cfg.model_copy(update={"model": "gpt2"})
    other_lora = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"r": cfg.lora.r + 1})})
    for changed, key in ((other_model, "model"), (other_lora, "lora")):
        with pytest.raises(OutputExistsError, match=f"a run with {key} "):
            _prepare_run_folder(out, changed, overwrite=False)
    other_eval = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"batch_size": cfg.eval.batch_size + 1})})
    assert _prepare_run_folder(out, other_eval, overwrite=False) is True
    assert _prepare_run_folder(out, other_model, overwrite=True) is False  # recomputed
    assert _prepare_run_folder(out, other_model, overwrite=False) is True  # now the run of that model


def test_a_run_folder_that_made_nothing_takes_another_model(tmp_path):
    """A run that stopped before making anything (its model failed to load: a hub id offline) leaves run.json
    alone; the corrected rerun with another model continues in that folder instead of being refused."""
    from lorasum.config import load_config
    from lorasum.errors import OutputExistsError
    from lorasum.experiment.runner import _prepare_run_folder

    cfg = load_config("configs/quickstart.yaml")
    out = tmp_path / "run"
    _prepare_run_folder(out, cfg.model_copy(update={"model": "gpt2"}), overwrite=False)
    (out / "cache").mkdir()  # empty folders are not something made
    assert _prepare_run_folder(out, cfg, overwrite=False) is True
    assert json.loads((out / "run.json").read_text())["config"]["model"] == cfg.model
    (out / "cache" / "x.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="a run with model "):
        _prepare_run_folder(out, cfg.model_copy(update={"model": "gpt2"}), overwrite=False)


def test_a_run_folder_that_is_a_file_is_a_user_error(tmp_path):
    """reproduce --out <a file> is refused with a one-line user error (it was an internal FileExistsError)."""
    from lorasum.errors import OutputExistsError
    from lorasum.experiment.runner import _prepare_run_folder

    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(OutputExistsError, match="exists and is not a folder"):
        _prepare_run_folder(afile, load_config("configs/quickstart.yaml"), overwrite=True)
    assert afile.read_text() == "mine"
