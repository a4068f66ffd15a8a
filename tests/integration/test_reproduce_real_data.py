"""`lorasum reproduce` and `lorasum report` end to end on the real data with a tiny random GPT-2
(the shared run of conftest.py)."""

import json
import math
from pathlib import Path

import pytest

from lorasum.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def run(tiny_run):
    return tiny_run["cfg"], tiny_run["out"]


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
    rows = [e for e in results["evaluations"] if e["model"] == "base" and e["seed"] == 0]
    per_domain = [e for e in rows if e["eval_domain"] != "union"]
    union = next(e for e in rows if e["eval_domain"] == "union")
    nll = sum(e["nll_sum"] for e in per_domain) / sum(e["n_tokens"] for e in per_domain)
    assert union["ppl"] == pytest.approx(math.exp(nll))


def test_rerun_reuses_cached_work(run):
    cfg, out = run
    before = {p: p.stat().st_mtime_ns for p in (out / "adapters").rglob("adapter_model.safetensors")}
    assert len(before) == 2 * 14  # per seed 3 single + 4 merged + 4 sums + 3 hybrids (dense methods: not stored)
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    after = {p: p.stat().st_mtime_ns for p in (out / "adapters").rglob("adapter_model.safetensors")}
    assert after == before, "a re-run must not retrain or recompose anything"


def test_run_folder_refuses_foreign_content(run, tmp_path, capsys):
    cfg, _ = run
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(tmp_path)]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overrides_and_report_command(run, tmp_path, capsys):
    cfg, _ = run
    out = tmp_path / "pair"
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out), "--domains", "math,finance",
                 "--seeds", "3"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 2 and results["config"]["seeds"] == [3]
    assert {(tuple(c["domains"]), c["kind"]) for c in results["compositions"]} == {  # no hybrids for N = 2
        (("math", "finance"), "sum"), (("math", "finance"), "composed")}
    (out / "report" / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "math+finance" in (out / "report" / "report.md").read_text()


def test_report_command_reads_version_1_results(tmp_path):
    """A results.json of schema 1 (the first GPU run, kept as a test file) still gives a report."""
    old = Path(__file__).parent / "data" / "gpu-smollm2-schema1.json"
    (tmp_path / "results.json").write_bytes(old.read_bytes())
    assert json.loads(old.read_text())["schema_version"] == 1
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "math+medicine+finance" in md and "Δ %" in md


@pytest.mark.parametrize("name", ["gpu-smollm2", "gpu-methods", "four-domain", "init-per-adapter", "paper-smollm2"])
def test_report_command_rebuilds_the_committed_reports(tmp_path, name):
    committed = Path(__file__).parents[2] / "results" / name
    (tmp_path / "results.json").write_bytes((committed / "results.json").read_bytes())
    assert main(["report", "-q", str(tmp_path)]) == 0
    want = (committed / "report.md").read_text(encoding="utf-8")
    got = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert got == want, "the committed report must be what `lorasum report` makes of its results.json"
