"""``train.parallel_adapters`` in a whole run: the same numbers as training one adapter after the other
(no dropout anywhere, so both see the same function), one shared pass, and the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from integration_run import DATA, DOMAINS

from lorasum.cli import main
from lorasum.report import load_results

pytestmark = pytest.mark.integration


def _config(tmp: Path, model: Path, parallel: int) -> Path:
    d = DATA
    path = tmp / f"par{parallel}.yaml"
    path.write_text(
        f"name: tiny\nmodel: {model}\ndomains: [{', '.join(DOMAINS)}]\nseeds: [0, 1]\ndevice: cpu\n"
        f"data: {{max_length: {d['max_length']}, train_size: {d['train_size']}, "
        f"validation_size: {d['validation_size']}, test_size: {d['test_size']}}}\n"
        "lora: {r: 4, lora_alpha: 8, lora_dropout: 0.0}\n"
        f"train: {{learning_rate: 1.0e-2, batch_size: 3, parallel_adapters: {parallel}}}\n"
        "eval: {batch_size: 3}\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = os.environ.get("LORASUM_DATA_ROOT")
    if not root or not Path(root).is_dir():
        pytest.skip("LORASUM_DATA_ROOT is not set to the shared data folder (e.g. ../shared/data/raw)")
    from tiny_models import save_tiny_gpt2

    tmp = tmp_path_factory.mktemp("par")
    save_tiny_gpt2(tmp / "m", dropout=0.0)
    out = {}
    for parallel in (1, 0, 5):
        assert main(["reproduce", "-q", "--config", str(_config(tmp, tmp / "m", parallel)),
                     "--out", str(tmp / f"run{parallel}")]) == 0
        out[parallel] = (tmp / f"run{parallel}", load_results(tmp / f"run{parallel}" / "results.json"))
    return out


def test_parallel_run_gives_the_numbers_of_the_sequential_run(runs):
    (_, seq), (out, par) = runs[1], runs[0]
    assert len(par["adapters"]) == len(seq["adapters"])
    for a, b in zip(seq["evaluations"], par["evaluations"]):
        assert (a["model"], a["seed"], a["eval_domain"]) == (b["model"], b["seed"], b["eval_domain"])
        assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-4)
    trained = [a for a in par["adapters"] if a["kind"] in ("single", "merged")]
    assert len(trained) == 14  # (3 singles + 3 pairs + 1 triple) x 2 seeds, all in one pass
    for a in trained:
        meta = json.loads((out / a["path"] / "lorasum.json").read_text())
        assert meta["parallel_adapters"] == 14 and meta["steps"] == a["train"]["steps"]
    # the default (1) keeps the keys of earlier runs; another value changes them
    assert {a["key"] for a in seq["adapters"]}.isdisjoint({a["key"] for a in trained})


def test_parallel_groups_of_five_and_the_cache(runs, caplog):
    (out5, five), (_, seq) = runs[5], runs[1]
    sizes = sorted({json.loads((out5 / a["path"] / "lorasum.json").read_text())["parallel_adapters"]
                    for a in five["adapters"] if a["kind"] in ("single", "merged")})
    assert sizes == [4, 5]  # 14 adapters: 5 + 5 + 4
    for a, b in zip(seq["evaluations"], five["evaluations"]):
        assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-4)
    before = {p: p.stat().st_mtime_ns for p in out5.glob("adapters/*/*/adapter_model.safetensors")}
    cfg = out5.parent / "par5.yaml"
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out5)]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in out5.glob("adapters/*/*/adapter_model.safetensors")}
