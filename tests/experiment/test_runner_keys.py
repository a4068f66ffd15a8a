"""Cache keys of trained adapters (lorasum.experiment.runner._Context._train_key)."""

from __future__ import annotations

from types import SimpleNamespace

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
