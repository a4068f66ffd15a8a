"""write_report / load_results on a synthetic schema-2 results dict (3 domains, 2 seeds, every combination,
hybrids, one extra composition method, per-layer geometry)."""

from __future__ import annotations

import base64
import csv
import json
import math
import re

import numpy as np
import pytest
from report_fixtures import make_results, md_tables, parse_cell
from scipy import stats

from lorasum.errors import UserError
from lorasum.report import load_results, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FILES = {"report.md", "report.html", "results.csv", "rms_cosine_vs_ppl_change.png", "perplexity_by_domain.png",
         "transfer_matrix.png", "layer_cosines.png", "layer_cosines_math+medicine.png",
         "layer_cosines_math+finance.png", "layer_cosines_medicine+finance.png"}


@pytest.fixture(scope="module")
def results():
    return make_results(methods=("sum", "ties"))


@pytest.fixture(scope="module")
def written(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(results, out)


@pytest.fixture(scope="module")
def md(written):
    return written["report.md"].read_text(encoding="utf-8")


def _label(c):
    return "+".join(c["domains"])


def _by_label(results):
    out = {}
    for c in results["combinations"]:
        out.setdefault(_label(c), []).append(c)
    return out


def test_writes_every_file(written, tmp_path):
    assert set(written) == FILES
    for name, path in written.items():
        assert path.name == name and path.is_file() and path.stat().st_size > 0
        if name.endswith(".png"):
            assert path.read_bytes().startswith(PNG_MAGIC)
    assert len({p.parent for p in written.values()}) == 1


def test_report_opens_with_verdict(md, results):
    lines = md.splitlines()
    assert lines[0].startswith("# ")
    verdict = lines[2]
    assert "Pearson r" in verdict and f"n = {len(results['combinations'])}" in verdict
    for label in _by_label(results):
        assert label in verdict
    assert "Caveat" in verdict


def test_headline_rows_equal_seed_means(md, results):
    rows = md_tables(md)["Headline: adapter sum vs merged-data fine-tuning"]
    table = {row[0]: row for row in rows if row[1] == "singles"}
    assert set(table) == set(_by_label(results))
    for label, cs in _by_label(results).items():
        row = table[label]
        expect = {2: [c["rms_cosine"] for c in cs], 3: [c["ppl_sum"]["union"] for c in cs],
                  4: [c["ppl_merged"]["union"] for c in cs], 5: [c["ppl_change_pct"]["union"] for c in cs]}
        for col, vals in expect.items():
            mean, std = parse_cell(row[col])
            assert mean == pytest.approx(np.mean(vals), rel=1e-3, abs=5.1e-3), (label, col)
            assert std == pytest.approx(np.std(vals, ddof=1), rel=1e-2, abs=5.1e-3), (label, col)
        lo, hi = (float(x) for x in row[6].strip("[]").split(","))
        change = [c["ppl_change_pct"]["union"] for c in cs]
        assert lo <= np.mean(change) <= hi and min(change) - 0.01 <= lo and hi <= max(change) + 0.01
        assert row[7] == str(len(cs))
    assert table["math+medicine"][-1] == "-9.10 (different setting)"
    assert table["math+finance"][-1] == "+4.54 (different setting)"
    assert table["medicine+finance"][-1] == "+27.56 (different setting)"
    assert table["math+medicine+finance"][-1] == "—"


def test_hybrid_rows_follow_their_combination(md, results):
    rows = md_tables(md)["Headline: adapter sum vs merged-data fine-tuning"]
    hybrids = [c for c in results["compositions"] if c["kind"] == "hybrid"]
    assert [r[1] for r in rows if r[0] == "math+medicine+finance"] == [
        "singles", "merged(medicine+finance) + math", "merged(math+finance) + medicine",
        "merged(math+medicine) + finance"]
    for r in rows[-3:]:
        cs = [c for c in hybrids if r[1].endswith(f"+ {c['single']}")]
        assert len(cs) == 2
        for col, key in ((3, "ppl"), (4, "ppl_merged"), (5, "ppl_change_pct")):
            vals = [c[key]["union"] for c in cs]
            mean, std = parse_cell(r[col])
            assert mean == pytest.approx(np.mean(vals), abs=5.1e-3) and std == pytest.approx(np.std(vals, ddof=1),
                                                                                             rel=1e-2, abs=5.1e-3)
        assert r[-1] == "—"  # the paper has no hybrid numbers to compare with


def test_methods_table_equals_seed_means(md, results):
    rows = {r[0]: r for r in md_tables(md)["Composition methods: Δ perplexity % vs merged-data fine-tuning (union)"]}
    comps = results["compositions"]
    for label in _by_label(results):
        for col, method in ((1, "sum"), (2, "ties")):
            vals = [c["ppl_change_pct"]["union"] for c in comps if c["method"] == method
                    and c["kind"] != "hybrid" and "+".join(c["domains"]) == label]
            assert parse_cell(rows[label][col])[0] == pytest.approx(np.mean(vals), abs=5.1e-3)
    allv = [c["ppl_change_pct"]["union"] for c in comps if c["method"] == "ties"]
    assert parse_cell(rows["all combinations"][2]) == (pytest.approx(np.mean(allv), abs=5.1e-3),
                                                        pytest.approx(np.std(allv, ddof=1), abs=5.1e-3))


def test_layer_heatmap_averages_seeds(results):
    from lorasum.geometry.export import layer_table
    from lorasum.report.plots import _mean_similarity

    labels, layers, values = layer_table(_mean_similarity(results))
    assert layers == [0, 1] and labels == ["math · medicine", "math · finance", "medicine · finance"]
    for label, row in zip(labels, values, strict=True):
        a, b = label.split(" · ")
        per_seed = [p for g in results["geometry"] for p in g["pairs"] if (p["a"], p["b"]) == (a, b)]
        for i in layers:
            assert row[i] == pytest.approx(np.mean([p["layer_rms"][str(i)] for p in per_seed]))


def test_per_seed_rows_equal_results(md, results):
    rows = [r for r in md_tables(md)["Per-seed results"] if r[1] == "singles"]
    assert len(rows) == len(results["combinations"])
    got = {(r[0], int(r[2])): r for r in rows}
    for c in results["combinations"]:
        r = got[(_label(c), c["seed"])]
        assert float(r[3]) == pytest.approx(c["rms_cosine"], rel=1e-3)
        assert float(r[4]) == pytest.approx(c["ppl_sum"]["union"], abs=5.1e-4)
        assert float(r[5]) == pytest.approx(c["ppl_merged"]["union"], abs=5.1e-4)
        assert float(r[6]) == pytest.approx(c["ppl_change_pct"]["union"], abs=5.1e-3)
        assert r[6][0] in "+-"


def test_perplexity_table_has_every_model_and_seed_means(md, results):
    rows = md_tables(md)["Perplexity by model and evaluation domain"]
    names = list(dict.fromkeys(e["model"] for e in results["evaluations"]))
    assert sorted(r[0] for r in rows) == sorted(names)
    order = ["base", "single", "merged", "sum", "hybrid", "composed"]
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), key=order.index)
    cols = [*results["config"]["domains"], "union"]
    for r in rows:
        for j, dom in enumerate(cols):
            vals = [e["ppl"] for e in results["evaluations"] if e["model"] == r[0] and e["eval_domain"] == dom]
            parsed = parse_cell(r[2 + j])
            if not vals:
                assert parsed is None
            else:
                assert parsed[0] == pytest.approx(np.mean(vals), abs=5.1e-4), (r[0], dom)


def test_transfer_matrix_rows_and_diagonal(md, results):
    rows = md_tables(md)["Transfer matrix (rows: model, columns: evaluation domain)"]
    doms = results["config"]["domains"]
    assert [r[0] for r in rows] == ["base", *doms]
    for i, dom in enumerate(doms):
        assert rows[1 + i][1 + i].startswith("**")
        vals = [e["ppl"] for e in results["evaluations"] if e["model"] == dom and e["eval_domain"] == dom]
        assert parse_cell(rows[1 + i][1 + i])[0] == pytest.approx(np.mean(vals), abs=5.1e-4)


def test_geometry_table_from_module_cosines(md, results):
    rows = {r[0]: r for r in md_tables(md)["Adapter geometry (cosine similarity of ΔW per target module)"]}
    for label, cs in _by_label(results).items():
        if not cs[0]["module_cosines"]:
            assert rows[label][2] == rows[label][3] == "—"
            continue
        abs_cos = [np.abs(list(c["module_cosines"].values())) for c in cs]
        assert parse_cell(rows[label][2])[0] == pytest.approx(np.mean([a.mean() for a in abs_cos]), rel=1e-3)
        assert parse_cell(rows[label][3])[0] == pytest.approx(np.mean([a.max() for a in abs_cos]), rel=1e-3)
        assert rows[label][4] == str(len(cs[0]["module_cosines"]))


def test_correlation_row_matches_scipy(md, results):
    rows = {r[0]: r for r in md_tables(md)["Correlation: RMS cosine vs Δ perplexity % (union)"]}
    for name, keep in (("all combinations", lambda c: True), ("pairs only", lambda c: len(c["domains"]) == 2)):
        cs = [c for c in results["combinations"] if keep(c)]
        x = [c["rms_cosine"] for c in cs]
        y = [c["ppl_change_pct"]["union"] for c in cs]
        row = rows[name]
        assert int(row[1]) == len(cs)
        assert float(row[2]) == pytest.approx(stats.pearsonr(x, y).statistic, abs=5.1e-4)
        assert float(row[4]) == pytest.approx(stats.spearmanr(x, y).statistic, abs=5.1e-4)
        assert float(row[6]) == pytest.approx(stats.linregress(x, y).slope, rel=1e-3)


def test_numbers_are_finite_and_sections_present(md):
    assert not re.search(r"\b(nan|inf)\b", md, flags=re.I)
    for section in ("## Headline", "## Perplexity by model", "## Transfer matrix", "## Adapter geometry",
                    "## Correlation", "## Training", "## Data", "## How this differs from the paper"):
        assert section in md
    for hint in ("GSM8K", "TAT-QA", "answer tokens only", "smollm2-135m"):
        assert hint in md
    for png in ("rms_cosine_vs_ppl_change.png", "perplexity_by_domain.png", "transfer_matrix.png"):
        assert f"]({png})" in md


def test_training_and_data_tables(md, results):
    train = md_tables(md)["Training"]
    trained = [a for a in results["adapters"] if a["train"]]
    assert len(train) == len(trained)
    for row, a in zip(train, trained, strict=True):
        assert row[0] == a["name"] and int(row[3].replace(",", "")) == a["train"]["steps"]
        assert int(row[4].replace(",", "")) == a["train"]["tokens"]
        assert float(row[6]) == pytest.approx(a["train"]["final_loss"], abs=5.1e-4)
    data = {r[0]: r for r in md_tables(md)["Data"]}
    for dom, d in results["data"].items():
        assert d["content_hash"] in data[dom][4]
        assert int(data[dom][1]) == d["train"] and int(data[dom][3]) == d["test"]


def test_html_is_self_contained(written, results):
    text = written["report.html"].read_text(encoding="utf-8")
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == len([n for n in FILES if n.endswith(".png")])
    embedded = {base64.b64decode(u) for u in uris}
    assert embedded == {written[n].read_bytes() for n in FILES if n.endswith(".png")}
    assert not re.search(r'src="(?!data:)', text)
    assert "<table>" in text and "-9.10 (different setting)" in text
    for c in results["combinations"]:
        assert f"<td class=\"l\">{_label(c)}</td>" in text


def test_results_csv_one_row_per_evaluation(written, results):
    with written["results.csv"].open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    evals = results["evaluations"]
    assert len(rows) == len(evals)
    combos = {(frozenset(c["domains"]), c["seed"]): c for c in results["combinations"]}
    for row, e in zip(rows, evals, strict=True):
        assert row["model"] == e["model"] and row["eval_domain"] == e["eval_domain"]
        assert float(row["ppl"]) == pytest.approx(e["ppl"], rel=1e-12)
        assert row["method"] == (e.get("method") or "")
        assert row["adapter_key"] == (e.get("adapter_key") or "")
        if e["kind"] in ("sum", "hybrid", "composed"):
            comp = next(c for c in results["compositions"] if c["name"] == e["model"] and c["seed"] == e["seed"])
            assert float(row["change_vs_merged_pct"]) == pytest.approx(comp["ppl_change_pct"][e["eval_domain"]])
            assert float(row["ppl_merged"]) == pytest.approx(comp["ppl_merged"][e["eval_domain"]])
        if e["kind"] in ("sum", "merged"):
            c = combos[(frozenset(e["domains"]), e["seed"])]
            assert row["combination"] == _label(c)
            assert float(row["rms_cosine"]) == pytest.approx(c["rms_cosine"], rel=1e-12)
            assert float(row["combination_ppl_change_pct"]) == pytest.approx(
                c["ppl_change_pct"][e["eval_domain"]], rel=1e-12)
            key = "combination_ppl_sum" if e["kind"] == "sum" else "combination_ppl_merged"
            assert float(row[key]) == pytest.approx(e["ppl"], rel=1e-12)
        elif e["kind"] in ("base", "single"):
            assert row["combination"] == "" and row["rms_cosine"] == "" and row["change_vs_merged_pct"] == ""


def test_load_results_roundtrip_and_errors(results, tmp_path):
    good = tmp_path / "results.json"
    good.write_text(json.dumps(results), encoding="utf-8")
    assert load_results(good) == results
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(results | {"schema_version": 99}), encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.json.*schema_version 99"):
        load_results(bad)
    none = tmp_path / "none.json"
    none.write_text(json.dumps({k: v for k, v in results.items() if k != "schema_version"}), encoding="utf-8")
    with pytest.raises(UserError, match="none.json"):
        load_results(none)
    cases = {"missing.json": None, "broken.json": "{not json", "list.json": "[1, 2]",
             "nokeys.json": json.dumps({"schema_version": 1, "config": {}})}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(UserError, match=re.escape(name)):
            load_results(tmp_path / name)


def test_load_results_accepts_nan(results, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results | {"combinations": [results["combinations"][0] | {"rms_cosine": math.nan}]}),
                    encoding="utf-8")
    assert math.isnan(load_results(path)["combinations"][0]["rms_cosine"])


def test_version_1_results_still_load_and_render(tmp_path):
    old = make_results(version=1)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    written = write_report(load_results(path), tmp_path / "report")
    assert set(written) == {n for n in FILES if not n.startswith("layer_cosines")}
    md = written["report.md"].read_text(encoding="utf-8")
    head = md_tables(md)["Headline: adapter sum vs merged-data fine-tuning"]
    assert {r[1] for r in head} == {"singles"} and len(head) == 4
