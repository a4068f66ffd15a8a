"""Report tables built from a results dict (schema_version 1 or 2).

Each function returns a :class:`Table` of already formatted strings (see
:mod:`lorasum.report.summary` for the number formats); :mod:`lorasum.report.render` turns
tables into Markdown and HTML. Values over several seeds are shown as ``mean ± std``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lorasum.experiment.stats import correlation
from lorasum.report.summary import (
    MISSING,
    UNION,
    ci_cell,
    cell,
    combos,
    compositions,
    domains_of,
    finite,
    fmt,
    models,
    parallel_groups,
    points,
    truncation_counts,
    truncation_limit,
)

__all__ = [
    "Table",
    "PAPER_CHANGE_PCT",
    "paper_change",
    "headline_table",
    "per_seed_table",
    "methods_table",
    "change_by_domain_table",
    "perplexity_table",
    "transfer_table",
    "geometry_table",
    "correlation_stats",
    "correlation_table",
    "training_table",
    "data_table",
    "results_rows",
]

# Δ perplexity % (summed adapters vs merged-data fine-tuning) reported by arXiv 2508.11985
# for GPT-2 Small, r=4, alpha=64 on MathQA / MedQuAD / financial-qa-10K.
PAPER_CHANGE_PCT: dict[frozenset, float] = {
    frozenset({"math", "medicine"}): -9.10,
    frozenset({"math", "finance"}): 4.54,
    frozenset({"finance", "medicine"}): 27.56,
}


@dataclass
class Table:
    """A titled table of formatted cells; ``align`` holds "l" or "r" per column."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    align: list[str] = field(default_factory=list)
    note: str = ""

    def __post_init__(self) -> None:
        if not self.align:
            self.align = ["l"] + ["r"] * (len(self.headers) - 1)


def paper_change(domains) -> float | None:
    """The paper's Δ perplexity % for a domain pair, or None when the paper has no such pair."""
    return PAPER_CHANGE_PCT.get(frozenset(domains))


def _several_seeds(results: dict) -> bool:
    return any(len(c.seeds) > 1 for c in combos(results))


def _headline_rows(results: dict):
    """The sums and hybrids, by combination (sum first)."""
    return [c for c in compositions(results) if c.kind in ("sum", "hybrid")]


def _summed(c) -> str:
    return "singles" if c.kind == "sum" else c.what


def headline_table(results: dict) -> Table:
    """Combination | adapters summed | RMS cosine | PPL sum | PPL merged | Δ % | [95 % CI | seeds] | paper Δ %.

    One row per combination for the exact sum of its single adapters, followed by its hybrids
    (merged adapter of S∖{d} + single adapter of d) when the run has them.
    """
    several = _several_seeds(results)
    headers = ["combination", "adapters summed", "RMS cosine", "PPL sum", "PPL merged", "Δ %"]
    headers += ["Δ % 95% CI", "seeds"] if several else []
    headers.append("paper Δ %")
    rows = []
    for c in _headline_rows(results):
        paper = paper_change(c.domains) if c.kind == "sum" else None
        row = [c.label, _summed(c), cell(c.rms_cosine, "cos"), cell(c.per_seed("ppl"), "ppl"),
               cell(c.per_seed("ppl_merged"), "ppl"), cell(c.per_seed("change"), "pct")]
        if several:
            row += [ci_cell(c.per_seed("change"), "pct"), str(len(c.seeds))]
        row.append(MISSING if paper is None else f"{fmt(paper, 'pct')} (different setting)")
        rows.append(row)
    note = ("Δ % = 100·(PPL sum − PPL merged)/PPL merged on the union of the combination's test sets; "
            "negative: the summed adapters beat the merged-data model. PPL merged is always the adapter trained on "
            "the merged data of the whole combination.")
    if any(c.kind == "hybrid" for c in _headline_rows(results)):
        note += (" Hybrids (arXiv 2508.11985): merged(S∖{d}) + d is the exact sum of the adapter trained on the "
                 "merged data of the other domains and the single adapter of d; their RMS cosine is the one "
                 "between these two adapters.")
    if several:
        note += " Values over seeds: mean ± std; CI: 95 % percentile bootstrap of the mean."
    note += (" Paper values: GPT-2 Small on MathQA/MedQuAD/financial-qa-10K, so a different setting "
             "(see 'How this differs from the paper').")
    return Table("Headline: adapter sum vs merged-data fine-tuning", headers, rows,
                 align=["l", "l"] + ["r"] * (len(headers) - 2), note=note)


def per_seed_table(results: dict) -> Table:
    """One row per headline row and seed (the values behind the headline means)."""
    rows = []
    for c in _headline_rows(results):
        for i, seed in enumerate(c.seeds):
            rows.append([c.label, _summed(c), str(seed), fmt(c.rms_cosine[i], "cos"),
                         fmt(c.per_seed("ppl")[i], "ppl"), fmt(c.per_seed("ppl_merged")[i], "ppl"),
                         fmt(c.per_seed("change")[i], "pct")])
    return Table("Per-seed results",
                 ["combination", "adapters summed", "seed", "RMS cosine", "PPL sum", "PPL merged", "Δ %"], rows,
                 align=["l", "l", "r", "r", "r", "r", "r"])


def methods_table(results: dict) -> Table | None:
    """Δ perplexity % vs merged (union) of each composition method on each combination; None with one method.

    Rows: combinations, then "all combinations" (mean ± std over every combination and seed).
    """
    comps = [c for c in compositions(results) if c.kind in ("sum", "composed")]
    methods = list(dict.fromkeys(c.method for c in comps))
    if len(methods) < 2:
        return None
    by = {(c.label, c.method): c for c in comps}
    labels = list(dict.fromkeys(c.label for c in comps))
    rows = [[lab] + [cell(by[(lab, m)].per_seed("change"), "pct") if (lab, m) in by else MISSING for m in methods]
            for lab in labels]
    rows.append(["all combinations"] + [cell([v for c in comps if c.method == m for v in c.per_seed("change")], "pct")
                                        for m in methods])
    params = (results.get("config") or {}).get("method_params") or {}
    described = [f"{m} ({', '.join(f'{k}={v}' for k, v in params[m].items())})" for m in methods if params.get(m)]
    note = ("Δ % = 100·(PPL composed − PPL merged)/PPL merged on the union; every method composes the same single "
            "adapters; sum is the exact sum (the headline).")
    if described:
        note += " Parameters: " + "; ".join(described) + "."
    note += " Over seeds: mean ± std."
    return Table("Composition methods: Δ perplexity % vs merged-data fine-tuning (union)",
                 ["combination"] + [f"{m} Δ %" for m in methods], rows, note=note)


def change_by_domain_table(results: dict) -> Table:
    """Δ perplexity % of each combination on each of its domains and on their union."""
    doms = domains_of(results)
    rows = []
    for c in combos(results):
        rows.append([c.label] + [cell(c.per_seed("change", d), "pct") if d in c.change else MISSING
                                 for d in doms + [UNION]])
    return Table("Δ perplexity % by evaluation domain (sum vs merged)", ["combination"] + doms + [UNION], rows)


def perplexity_table(results: dict) -> Table:
    """Perplexity of every model (base, singles, merged, sums) on each domain and the union."""
    doms = domains_of(results)
    cols = doms + [UNION]
    rows = [[m.name, m.kind] + [cell(m.ppl.get(d, []), "ppl") for d in cols] for m in models(results)]
    return Table("Perplexity by model and evaluation domain", ["model", "kind"] + cols, rows,
                 align=["l", "l"] + ["r"] * len(cols),
                 note="union: token-weighted over the domains the model was evaluated on.")


def transfer_table(results: dict) -> Table:
    """Base and single-adapter perplexity on every domain; the own-domain cell is bold."""
    doms = domains_of(results)
    rows = []
    for m in models(results):
        if m.kind not in ("base", "single"):
            continue
        row = [m.name]
        for d in doms:
            txt = cell(m.ppl.get(d, []), "ppl")
            row.append(f"**{txt}**" if m.kind == "single" and m.domains == (d,) and txt != MISSING else txt)
        rows.append(row)
    return Table("Transfer matrix (rows: model, columns: evaluation domain)", ["model"] + doms, rows)


def geometry_table(results: dict) -> Table:
    """Per combination: RMS cosine, mean |cos| and max |cos| over target modules."""
    rows = []
    for c in combos(results):
        mean_abs, max_abs, n_mod = [], [], []
        for mc in c.module_cosines:
            vals = np.abs([v for v in mc.values() if finite(v)])
            mean_abs.append(float(vals.mean()) if vals.size else float("nan"))
            max_abs.append(float(vals.max()) if vals.size else float("nan"))
            n_mod.append(vals.size)
        modules = str(max(n_mod)) if n_mod and max(n_mod) else MISSING
        rows.append([c.label, cell(c.rms_cosine, "cos"), cell(mean_abs, "cos"), cell(max_abs, "cos"), modules])
    return Table("Adapter geometry (cosine similarity of ΔW per target module)",
                 ["combination", "RMS cosine", "mean |cos|", "max |cos|", "modules"], rows)


def correlation_stats(results: dict) -> dict[str, dict[str, float]]:
    """Correlation of RMS cosine (x) with Δ perplexity % on the union (y): "all" points, and "pairs" only."""
    pts = points(results)
    out = {"all": correlation([p[2] for p in pts], [p[3] for p in pts])}
    pairs = points(results, size=2)
    if len(pairs) != len(pts):
        out["pairs"] = correlation([p[2] for p in pairs], [p[3] for p in pairs])
    return out


def correlation_table(results: dict) -> Table:
    """Pearson, Spearman and least-squares slope with its 95 % CI for RMS cosine vs Δ %."""
    rows = []
    for name, s in correlation_stats(results).items():
        ci = MISSING if not finite(s["slope_ci_low"]) else f"[{fmt(s['slope_ci_low'])}, {fmt(s['slope_ci_high'])}]"
        rows.append(["all combinations" if name == "all" else "pairs only", str(s["n"]), fmt(s["pearson_r"], "r"),
                     fmt(s["pearson_p"], "p"), fmt(s["spearman_rho"], "r"), fmt(s["spearman_p"], "p"),
                     fmt(s["slope"]), ci, fmt(s["slope_p"], "p"), fmt(s["intercept"])])
    headers = ["points", "n", "Pearson r", "p", "Spearman ρ", "p", "slope (Δ % per unit cos)",
               "slope 95% CI", "slope p", "intercept (Δ %)"]
    return Table("Correlation: RMS cosine vs Δ perplexity % (union)", headers, rows,
                 note="One point per combination and seed: the exact sum of its single adapters (hybrids and "
                      "other methods are not included). Slope CI: ± t(n−2)·stderr; the figure's band is the 95 % "
                      "confidence band of the fitted line.")


def training_table(results: dict) -> Table:
    """Trained adapters: steps, tokens, seconds, final and validation loss."""
    rows = []
    for a in results.get("adapters", []):
        t = a.get("train")
        if not t:
            continue
        rows.append([a.get("name", ""), a.get("kind", ""), str(a.get("seed", "")), fmt(t.get("steps"), "int"),
                     fmt(t.get("tokens"), "int"), f"{t['seconds']:.1f}" if finite(t.get("seconds")) else MISSING,
                     fmt(t.get("final_loss"), "ppl"), fmt(t.get("val_loss"), "ppl")])
    return Table("Training", ["adapter", "kind", "seed", "steps", "tokens", "seconds", "final loss", "val loss"],
                 rows, align=["l", "l", "r", "r", "r", "r", "r", "r"], note="Losses: mean NLL per answer token (nats)." + (
                     " Adapters trained together (train.parallel_adapters) share one loop: their seconds are the "
                     "loop's time until each was saved." if parallel_groups(results) else ""))


def _truncation_cell(results: dict, domain: str, split: str) -> str:
    """``24 of 40 (60 %), 24 answers cut``: the split's examples cut at the token limit, and how many of them
    lost answer tokens ("context/question only": none did); "—" where results.json has no counts."""
    c = truncation_counts(results, domain, split)
    if c is None:
        return MISSING
    n, k, answer = c["examples"], c["truncated"], c["answer_cut"]
    if c["sliding_windows"]:
        text = "0 (sliding windows)"
    elif k == 0:
        text = f"0 of {n}"
    else:
        what = ("" if answer is None else f", {answer} answer{'s' if answer != 1 else ''} cut" if answer
                else ", context/question only")
        text = f"{k} of {n} ({100 * k / n:.0f} %){what}"
    return text + (f"; {c['dropped']} dropped" if c["dropped"] else "")


def data_table(results: dict) -> Table:
    """Per domain: split sizes, content hash and source files; and, where results.json has the counts, the
    training and test examples cut at ``data.max_length``."""
    rows = []
    data = results.get("data") or {}
    order = [*(d for d in domains_of(results) if d in data), *(d for d in data if d not in domains_of(results))]
    cuts = any(truncation_counts(results, d, s) is not None for d in order for s in ("train", "test"))
    for dom in order:
        d = data[dom]
        srcs = ", ".join(f"`{s.get('path', '?')}` ({fmt(s.get('records'), 'int')})" for s in d.get("sources", []))
        cut = [_truncation_cell(results, dom, "train"), _truncation_cell(results, dom, "test")] if cuts else []
        rows.append([dom, fmt(d.get("train"), "int"), fmt(d.get("validation"), "int"), fmt(d.get("test"), "int"),
                     f"`{d['content_hash']}`" if d.get("content_hash") else MISSING, srcs or MISSING, *cut])
    headers = ["domain", "train", "validation", "test", "content hash", "sources (records)"]
    note = ""
    if cuts:
        headers += ["train cut", "test cut"]
        limit = truncation_limit(results)
        note = (f"train cut / test cut: examples longer than data.max_length ({limit if limit is not None else '?'} "
                "tokens), cut to fit it: first the context's end, then the answer's end, then the question's "
                "beginning. \"answers cut\": examples that lost the end of their answer (those tokens are never "
                "trained on or scored); \"context/question only\": every answer is whole. To keep the examples "
                "whole, raise data.max_length; data.long_rows: drop leaves them out instead (\"dropped\").")
    return Table("Data", headers, rows, align=["l", "r", "r", "r", "l", "l"] + (["r", "r"] if cuts else []),
                 note=note)


RESULT_COLUMNS = ["model", "kind", "method", "domains", "seed", "eval_domain", "nll_sum", "n_tokens", "n_examples",
                  "ppl", "ppl_merged", "change_vs_merged_pct", "combination", "rms_cosine", "combination_ppl_sum",
                  "combination_ppl_merged", "combination_ppl_change_pct", "adapter_key", "test_hash", "eval_key"]
_COMPOSED = ("sum", "hybrid", "composed")


def results_rows(results: dict) -> list[dict[str, object]]:
    """One flat row per evaluation (columns ``RESULT_COLUMNS``) for ``results.csv``.

    * ``ppl_merged``, ``change_vs_merged_pct``: for a composed model (sum, hybrid, other method), the
      merged-data adapter of the same combination and seed on the row's evaluation domain, and this
      model's Δ % against it;
    * ``combination*``, ``rms_cosine``: rows of a sum or merged model carry their combination's sum-vs-merged
      numbers (as in schema 1); hybrid and method rows carry their combination and the RMS cosine of
      their own parts;
    * ``adapter_key``, ``test_hash``, ``eval_key``: provenance (empty in schema 1 results).
    """
    by_key = {(frozenset(c.get("domains", [])), c.get("seed")): c for c in results.get("combinations", [])}
    comp = {(c.get("name"), c.get("seed")): c for c in results.get("compositions", []) or []}
    rows = []
    for e in results.get("evaluations", []):
        doms = list(e.get("domains") or [])
        ed, kind = e.get("eval_domain"), e.get("kind")
        row = {k: e.get(k, "") for k in RESULT_COLUMNS[:10]}
        row["domains"] = "+".join(doms)
        row["method"] = e.get("method") or ("sum" if kind == "sum" else "")
        c = by_key.get((frozenset(doms), e.get("seed"))) if kind in _COMPOSED + ("merged",) else None
        own = comp.get((e.get("model"), e.get("seed")))
        if kind == "sum" and own is None and c:  # schema 1
            own = {"ppl_merged": c.get("ppl_merged"), "ppl_change_pct": c.get("ppl_change_pct")}
        test_hash = e.get("test_hash")
        row.update(
            ppl_merged=(own.get("ppl_merged") or {}).get(ed, "") if own else "",
            change_vs_merged_pct=(own.get("ppl_change_pct") or {}).get(ed, "") if own else "",
            combination="+".join(doms) if c else "",
            rms_cosine=(own if own and kind != "sum" else c).get("rms_cosine", "") if c else "",
            combination_ppl_sum=(c.get("ppl_sum") or {}).get(ed, "") if c else "",
            combination_ppl_merged=(c.get("ppl_merged") or {}).get(ed, "") if c else "",
            combination_ppl_change_pct=(c.get("ppl_change_pct") or {}).get(ed, "") if c else "",
            adapter_key=e.get("adapter_key") or "",
            test_hash=test_hash if isinstance(test_hash, str) else "",
            eval_key=e.get("key") or "",
        )
        rows.append({k: ("" if v is None else v) for k, v in row.items()})
    return rows
