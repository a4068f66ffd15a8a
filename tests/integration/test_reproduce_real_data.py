"""`lorasum reproduce` end to end on the real data with a tiny random GPT-2 (CPU, ~1 minute)."""

import json
import math
import os
from pathlib import Path

import pytest

from lorasum.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = os.environ.get("LORASUM_DATA_ROOT")
    if not root or not Path(root).is_dir():
        pytest.skip("LORASUM_DATA_ROOT is not set to the shared data folder (e.g. ../shared/data/raw)")
    from tiny_models import save_tiny_gpt2

    tmp = tmp_path_factory.mktemp("repro")
    save_tiny_gpt2(tmp / "m")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(
        f"name: tiny\nmodel: {tmp / 'm'}\ndomains: [math, medicine, finance]\nseeds: [0]\ndevice: cpu\n"
        "data: {max_length: 48, train_size: 6, validation_size: 2, test_size: 3}\n"
        "train: {learning_rate: 1.0e-2, batch_size: 3}\neval: {batch_size: 3}\n"
    )
    out = tmp / "run"
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    return cfg, out


def test_report_holds_every_combination_with_finite_numbers(run):
    _, out = run
    results = json.loads((out / "results.json").read_text())
    combos = {tuple(c["domains"]) for c in results["combinations"]}
    assert combos == {("math", "medicine"), ("math", "finance"), ("medicine", "finance"),
                      ("math", "medicine", "finance")}
    for c in results["combinations"]:
        for key in ("ppl_sum", "ppl_merged", "ppl_change_pct"):
            assert all(math.isfinite(v) for v in c[key].values()), (c["domains"], key)
        assert 0 <= c["rms_cosine"] <= 1
        # the headline is recomputable from the two perplexities
        expected = 100 * (c["ppl_sum"]["union"] - c["ppl_merged"]["union"]) / c["ppl_merged"]["union"]
        assert c["ppl_change_pct"]["union"] == pytest.approx(expected)
    for name in ("report.md", "report.html", "results.csv", "rms_cosine_vs_ppl_change.png"):
        assert (out / "report" / name).stat().st_size > 0
    md = (out / "report" / "report.md").read_text()
    for c in combos:
        assert "+".join(c) in md


def test_union_perplexity_is_token_weighted(run):
    _, out = run
    results = json.loads((out / "results.json").read_text())
    rows = [e for e in results["evaluations"] if e["model"] == "base"]
    per_domain = [e for e in rows if e["eval_domain"] != "union"]
    union = next(e for e in rows if e["eval_domain"] == "union")
    nll = sum(e["nll_sum"] for e in per_domain) / sum(e["n_tokens"] for e in per_domain)
    assert union["ppl"] == pytest.approx(math.exp(nll))


def test_rerun_reuses_cached_work(run):
    cfg, out = run
    before = {p: p.stat().st_mtime_ns for p in (out / "adapters").rglob("adapter_model.safetensors")}
    assert len(before) == 11  # 3 single + 4 merged + 4 sums
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    after = {p: p.stat().st_mtime_ns for p in (out / "adapters").rglob("adapter_model.safetensors")}
    assert after == before, "a re-run must not retrain or recompose anything"


def test_run_folder_refuses_foreign_content(run, tmp_path, capsys):
    cfg, _ = run
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(tmp_path)]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"
