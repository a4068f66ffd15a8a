"""Report edge cases: one seed, verdict wording from the numbers, too few points, missing values."""

from __future__ import annotations

import copy
import math
import re

import pytest
from report_fixtures import make_results, md_tables, parse_cell

from lorasum.report import write_report
from lorasum.report.render import verdict


def _set_change(results, label, value):
    for c in results["combinations"]:
        if "+".join(c["domains"]) == label:
            c["ppl_change_pct"]["union"] = value


def test_single_seed_report(tmp_path):
    results = make_results(seeds=(0,), version=1)
    md = write_report(results, tmp_path)["report.md"].read_text(encoding="utf-8")
    tables = md_tables(md)
    assert "Per-seed results" not in tables
    head = {r[0]: r for r in tables["Headline: adapter sum vs merged-data fine-tuning"]}
    assert len(head["math+medicine"]) == 7  # no CI / seeds columns
    for c in results["combinations"]:
        row = head["+".join(c["domains"])]
        assert row[1] == "singles"
        assert parse_cell(row[5]) == (pytest.approx(c["ppl_change_pct"]["union"], abs=5.1e-3), None)
        assert parse_cell(row[3])[0] == pytest.approx(c["ppl_sum"]["union"], abs=5.1e-4)
    assert "with one seed the run-to-run variation is unknown" in md.splitlines()[2]


def test_verdict_names_winners_and_losers():
    results = make_results(seeds=(0,), version=1)
    for label, v in (("math+medicine", -5.0), ("math+finance", 3.0), ("medicine+finance", 20.0),
                     ("math+medicine+finance", -1.25)):
        _set_change(results, label, v)
    text = verdict(results)
    lower, higher = text.split("It gave a higher one")
    assert "math+medicine (Δ -5.00 %)" in lower and "math+medicine+finance (Δ -1.25 %)" in lower
    assert "math+finance (Δ +3.00 %)" in higher and "medicine+finance (Δ +20.00 %)" in higher
    assert "the sign agrees for 3 of 3 such pairs" in text


def test_verdict_flags_ci_spanning_zero():
    results = make_results(seeds=(0, 1, 2), version=1)
    for c in results["combinations"]:
        c["ppl_change_pct"]["union"] = {0: -2.0, 1: 1.0, 2: 3.0}[c["seed"]] if len(c["domains"]) == 2 else 5.0 + c["seed"]
    text = verdict(results)
    assert re.search(r"spans zero.*math\+medicine \(Δ \+0\.67 %, 95 % CI \[", text)
    assert re.search(r"higher union perplexity .*math\+medicine\+finance \(Δ \+6\.00 %", text)
    assert "with 3 seeds the bootstrap CIs are coarse" in text


def test_two_domains_one_seed_has_no_correlation(tmp_path):
    results = make_results(seeds=(0,), domains=("math", "finance"), version=1)
    paths = write_report(results, tmp_path)
    md = paths["report.md"].read_text(encoding="utf-8")
    assert "cannot be estimated from n = 1 points" in md
    row = md_tables(md)["Correlation: RMS cosine vs Δ perplexity % (union)"][0]
    assert row[1] == "1" and row[2] == "—"
    assert paths["rms_cosine_vs_ppl_change.png"].stat().st_size > 0


def test_missing_and_nan_values_render_as_dash(tmp_path):
    results = make_results(seeds=(0,), version=1)
    broken = copy.deepcopy(results)
    broken["combinations"][0]["rms_cosine"] = math.nan
    broken["combinations"][1]["ppl_merged"]["union"] = None
    broken["evaluations"][0]["ppl"] = math.nan
    broken["adapters"][0]["train"]["val_loss"] = None
    md = write_report(broken, tmp_path)["report.md"].read_text(encoding="utf-8")
    assert not re.search(r"\b(nan|none|inf)\b", md, flags=re.I)
    head = md_tables(md)["Headline: adapter sum vs merged-data fine-tuning"]
    assert head[0][2] == "—" and head[1][4] == "—"
    assert md_tables(md)["Perplexity by model and evaluation domain"][0][2] == "—"


def test_empty_results_still_write(tmp_path):
    empty = {"schema_version": 1, "config": {"name": "empty", "domains": ["math", "medicine"], "seeds": [0]},
             "evaluations": [], "combinations": [], "adapters": [], "data": {}}
    paths = write_report(empty, tmp_path)
    assert all(p.is_file() for p in paths.values())
    assert paths["results.csv"].read_text(encoding="utf-8").count("\n") == 1  # header only


def test_four_domains_with_hybrids_and_methods(tmp_path):
    results = make_results(seeds=(0, 1), domains=("math", "medicine", "finance", "pubmedqa"), methods=("sum", "ties"))
    paths = write_report(results, tmp_path)
    md = paths["report.md"].read_text(encoding="utf-8")
    head = md_tables(md)["Headline: adapter sum vs merged-data fine-tuning"]
    hybrids = [r for r in head if r[1] != "singles"]
    assert len([r for r in head if r[1] == "singles"]) == 11
    assert len(hybrids) == 4 * 3 + 4  # every triple × 3 held-out domains + the quadruple × 4
    assert "merged(medicine+finance+pubmedqa) + math" in {r[1] for r in hybrids}
    for r in hybrids:
        c = [x for x in results["compositions"] if x["kind"] == "hybrid" and "+".join(x["domains"]) == r[0]
             and f"+ {x['single']}" in r[1]]
        assert len(c) == 2 and parse_cell(r[5])[0] == pytest.approx(
            sum(x["ppl_change_pct"]["union"] for x in c) / 2, abs=5.1e-3)
    assert "hybrids" in md.splitlines()[2] and "by composition method" in md.splitlines()[2]
    methods = md_tables(md)["Composition methods: Δ perplexity % vs merged-data fine-tuning (union)"]
    assert len(methods) == 11 + 1 and methods[-1][0] == "all combinations"
    assert {n for n in paths if n.startswith("layer_cosines")} == (
        {"layer_cosines.png"} | {f"layer_cosines_{a}+{b}.png" for a, b in
                                 [("math", "medicine"), ("math", "finance"), ("math", "pubmedqa"),
                                  ("medicine", "finance"), ("medicine", "pubmedqa"), ("finance", "pubmedqa")]})


def test_two_domains_version_2_has_no_hybrids_or_methods_table(tmp_path):
    results = make_results(seeds=(0, 1), domains=("math", "finance"))
    md = write_report(results, tmp_path)["report.md"].read_text(encoding="utf-8")
    tables = md_tables(md)
    assert [r[1] for r in tables["Headline: adapter sum vs merged-data fine-tuning"]] == ["singles"]
    assert "Composition methods" not in md and "hybrids" not in md.splitlines()[2]


@pytest.mark.parametrize("per_adapter", [None, False, True])
def test_verdict_warns_about_a_shared_lora_initialisation(per_adapter):
    results = make_results(seeds=(0, 1, 2), version=1)
    if per_adapter is not None:
        results.setdefault("config", {})["lora"] = {"r": 4, "init_per_adapter": per_adapter}
    else:
        results.get("config", {}).pop("lora", None)  # unknown (an old results.json): no claim either way
    assert ("same random LoRA A" in verdict(results)) is (per_adapter is False)


def test_header_shows_the_runs_timings_only_where_recorded(tmp_path):
    """Results with timings (schema 2 runs since they were added) get one line with the wall time, each
    phase, the device and the GPU peak; results without them (earlier runs) get none and no error."""
    results = make_results(seeds=(0,), version=1)
    results["wall_seconds"] = 418.04
    plain = write_report(copy.deepcopy(results), tmp_path / "a")["report.md"].read_text(encoding="utf-8")
    assert "Wall time" not in plain
    results |= {"timings": {"data": 0.8, "evaluate": 158.2, "geometry": 1.0, "load_model": 16.04,  # as sorted on disk
                            "train_and_compose": 241.5},
                "device": "cuda: NVIDIA H200", "peak_gpu_memory_gib": 31.26}
    md = write_report(results, tmp_path / "b")["report.md"].read_text(encoding="utf-8")
    assert ("*Wall time 418 s in this process (model load 16 s, data 1 s, training and composition 242 s, "
            "evaluation 158 s, geometry 1 s) on cuda: NVIDIA H200, peak GPU memory 31.3 GiB.*") in md
    results["timings"] = ["not", "a", "dict"]  # a hand-edited file: no line, no crash
    assert "Wall time" not in write_report(results, tmp_path / "c")["report.md"].read_text(encoding="utf-8")
    results |= {"timings": {"evaluate": 10**400, "data": "x", "geometry": -3, "load_model": float("nan"),
                            "train_and_compose": 2.4},
                "device": {"not": "a name"}, "peak_gpu_memory_gib": float("inf")}
    md = write_report(results, tmp_path / "d")["report.md"].read_text(encoding="utf-8")
    assert "*Wall time 418 s in this process (training and composition 2 s).*" in md
    results["timings"] = {"data": "x"}
    md = write_report(results, tmp_path / "e")["report.md"].read_text(encoding="utf-8")
    assert "*Wall time 418 s in this process.*" in md
