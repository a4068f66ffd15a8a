"""Assemble the report (verdict, tables, figures, differences from the paper) as Markdown and HTML.

The report is first built as a list of blocks (heading, paragraph, bullet list, table, image);
:func:`to_markdown` and :func:`to_html` render the same blocks, so both files hold the same
numbers. The HTML file is self-contained: figures are embedded as base64 ``data:`` URIs.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass

from lorasum.experiment.stats import mean_std_ci
from lorasum.report.summary import (
    combos,
    compositions,
    domains_of,
    finite,
    fmt,
    parallel_groups,
    seeds_of,
    truncation_counts,
    truncation_limit,
)
from lorasum.report.tables import (
    Table,
    change_by_domain_table,
    correlation_stats,
    correlation_table,
    data_table,
    geometry_table,
    headline_table,
    methods_table,
    paper_change,
    per_seed_table,
    perplexity_table,
    training_table,
    transfer_table,
)

__all__ = ["Heading", "Para", "Bullets", "Image", "build_blocks", "verdict", "differences", "to_markdown", "to_html"]

PAPER_DATA = {"math": "MathQA", "medicine": "MedQuAD", "finance": "financial-qa-10K"}
_KNOWN_SOURCES = {"gsm8k": "GSM8K", "mathqa": "MathQA", "pubmedqa": "PubMedQA", "medquad": "MedQuAD",
                  "tatqa": "TAT-QA", "tat-qa": "TAT-QA", "tat_qa": "TAT-QA", "financial-qa-10k": "financial-qa-10K"}
SMALL_N = 10  # fewer correlation points than this: the verdict says the correlation is indicative only


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Image:
    name: str
    alt: str


def _model_name(results: dict) -> str:
    return (results.get("model") or {}).get("name") or (results.get("config") or {}).get("model") or "?"


def _combo_phrase(c, vals: list[float]) -> str:
    s = mean_std_ci(vals)
    txt = f"{c.label} (Δ {fmt(s['mean'], 'pct')} %"
    if finite(s["ci_low"]):
        txt += f", 95 % CI [{fmt(s['ci_low'], 'pct')}, {fmt(s['ci_high'], 'pct')}]"
    return txt + ")"


def _sum_vs_merged_sentence(results: dict) -> str:
    better, worse, unclear = [], [], []
    for c in combos(results):
        vals = [v for v in c.per_seed("change") if finite(v)]
        if not vals:
            continue
        s = mean_std_ci(vals)
        if finite(s["ci_low"]) and s["ci_low"] <= 0 <= s["ci_high"]:
            unclear.append(_combo_phrase(c, vals))
        else:
            (better if s["mean"] < 0 else worse).append(_combo_phrase(c, vals))
    if not (better or worse or unclear):
        return "No combination has a union perplexity change in these results."
    sentences = []
    if better:
        sentences.append("Summing the adapters gave a lower union perplexity than the merged-data model for "
                         + _join(better) + ".")
    if worse:
        lead = ("It gave a higher one" if better
                else "Summing the adapters gave a higher union perplexity than the merged-data model")
        sentences.append(f"{lead} for {_join(worse)}.")
    if unclear:
        sentences.append("The 95 % CI of the change spans zero (no clear difference) for " + _join(unclear) + ".")
    return " ".join(sentences)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _paper_sentence(results: dict) -> str:
    agree, total = 0, 0
    for c in combos(results):
        paper = paper_change(c.domains)
        vals = [v for v in c.per_seed("change") if finite(v)]
        if paper is None or not vals:
            continue
        total += 1
        agree += (sum(vals) / len(vals) < 0) == (paper < 0)
    if not total:
        return ""
    return (f" The paper (GPT-2 Small, different data) reported -9.10 / +4.54 / +27.56 % for math+medicine / "
            f"math+finance / finance+medicine; the sign agrees for {agree} of {total} such pairs here.")


def _mean(vals: list[float]) -> float:
    vals = [v for v in vals if finite(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _hybrid_sentence(results: dict) -> str:
    """Hybrids vs merged, and vs the plain sum of the same combination (seed means of the union Δ %)."""
    comps = compositions(results)
    sums = {c.label: _mean(c.per_seed("change")) for c in comps if c.kind == "sum"}
    hyb = [(c, _mean(c.per_seed("change"))) for c in comps if c.kind == "hybrid"]
    hyb = [(c, v) for c, v in hyb if finite(v)]
    if not hyb:
        return ""
    lo, hi = min(hyb, key=lambda t: t[1]), max(hyb, key=lambda t: t[1])
    beat = sum(v < sums.get(c.label, float("nan")) for c, v in hyb)
    return (f" The {len(hyb)} hybrids (merged-data adapter of all but one domain plus that domain's single adapter) "
            f"reached Δ {fmt(lo[1], 'pct')} % ({lo[0].what}) to {fmt(hi[1], 'pct')} % "
            f"({hi[0].what}) against merged-data fine-tuning; {beat} of {len(hyb)} beat the plain sum "
            "of single adapters of the same combination.")


def _methods_sentence(results: dict) -> str:
    comps = [c for c in compositions(results) if c.kind in ("sum", "composed")]
    methods = list(dict.fromkeys(c.method for c in comps))
    if len(methods) < 2:
        return ""
    means = {m: _mean([v for c in comps if c.method == m for v in c.per_seed("change")]) for m in methods}
    parts = [f"{m} {fmt(v, 'pct')} %" for m, v in sorted(means.items(), key=lambda t: (not finite(t[1]), t[1]))]
    return (" Mean Δ over all combinations and seeds by composition method (best first): " + ", ".join(parts) + ".")


def _correlation_sentence(results: dict) -> str:
    st = correlation_stats(results)
    s = st["all"]
    if not finite(s["pearson_r"]):
        return (f" The correlation of RMS cosine with the perplexity change cannot be estimated from n = {s['n']} "
                "points (needs at least 3 with varying values).")
    text = (f" Across n = {s['n']} combination×seed points, RMS cosine and the union perplexity change "
            f"correlate with Pearson r = {fmt(s['pearson_r'], 'r')} (p = {fmt(s['pearson_p'], 'p')}; "
            f"Spearman ρ = {fmt(s['spearman_rho'], 'r')}); least-squares slope {fmt(s['slope'])} % per unit cosine")
    pairs = st.get("pairs")
    if pairs and finite(pairs["pearson_r"]):
        text += (f"; over the n = {pairs['n']} pair points only, r = {fmt(pairs['pearson_r'], 'r')} "
                 f"(p = {fmt(pairs['pearson_p'], 'p')})")
    return text + "."


def verdict(results: dict) -> str:
    """One paragraph generated from the numbers: sum vs merged per combination, correlation, caveats."""
    seeds = seeds_of(results)
    text = f"Model {_model_name(results)}, {len(seeds)} seed{'s' if len(seeds) != 1 else ''}. "
    text += _sum_vs_merged_sentence(results)
    text += _hybrid_sentence(results) + _methods_sentence(results) + _correlation_sentence(results)
    s = correlation_stats(results)["all"]
    text += _paper_sentence(results)
    caveats = []
    if len(seeds) < 2:
        caveats.append("with one seed the run-to-run variation is unknown")
    elif len(seeds) < 5:
        caveats.append(f"with {len(seeds)} seeds the bootstrap CIs are coarse (they cannot reach beyond the "
                       "observed values)")
    if s["n"] < SMALL_N:
        caveats.append(f"with only n = {s['n']} points the correlation is indicative, not conclusive")
    sizes = [d.get("train") for d in (results.get("data") or {}).values() if finite(d.get("train"))]
    if sizes and min(sizes) < 1000:
        caveats.append(f"adapters were trained on as few as {min(sizes)} examples per domain")
    cut = _answers_cut(results)
    if cut:
        caveats.append(cut)
    lora = (results.get("config") or {}).get("lora") or {}
    if lora and not lora.get("init_per_adapter", False):
        caveats.append("the adapters of a seed started from the same random LoRA A (lora.init_per_adapter: false), "
                       "which by itself raises their cosines above the random baseline")
    if caveats:
        text += " Caveat: " + "; ".join(caveats) + "."
    return text


def _answers_cut(results: dict) -> str:
    """The caveat of answers cut short at data.max_length: per domain, the share of training and test examples
    that lost the end of their answer ("" where none did, or results.json has no counts)."""
    parts = []
    for dom in domains_of(results):
        shares = []
        for split, what in (("train", "training"), ("test", "test")):
            c = truncation_counts(results, dom, split)
            if c is not None and c["answer_cut"] and c["examples"]:
                shares.append(f"{100 * c['answer_cut'] / c['examples']:.0f} % of its {what}")
        if shares:
            parts.append(f"{dom} ({' and '.join(shares)} examples)")
    if not parts:
        return ""
    limit = truncation_limit(results)
    at = f"data.max_length ({limit} tokens)" if limit is not None else "data.max_length"
    return (f"examples longer than {at} were cut, and the end of the answer was lost in {_join(parts)}: the "
            "adapters never learned those tokens and the perplexities leave them out (table Data)")


def _source_name(dom: str, results: dict) -> str:
    srcs = ((results.get("data") or {}).get(dom) or {}).get("sources") or []
    for s in srcs:
        low = str(s.get("path", "")).lower()
        for key, name in _KNOWN_SOURCES.items():
            if key in low:
                return name
    return srcs[0].get("path", "?").rsplit("/", 1)[-1] if srcs else "?"


def _modules(lora: dict, model: dict) -> str:
    mods = lora.get("target_modules") or model.get("target_modules")
    return ", ".join(mods) if mods else "the model default"


def differences(results: dict) -> list[str]:
    """Bullets: how this run's setting differs from arXiv 2508.11985."""
    cfg = results.get("config") or {}
    lora = cfg.get("lora") or {}
    model = results.get("model") or {}
    n_params = model.get("n_params")
    size = f", {n_params / 1e6:.0f} M parameters" if finite(n_params) else ""
    out = [f"Model: {_model_name(results)} ({model.get('arch', '?')}{size}); the paper used GPT-2 Small (124 M)."]
    r, alpha = lora.get("r"), lora.get("lora_alpha")
    same = "same as" if (r, alpha) == (4, 64) else "the paper used"
    out.append(f"LoRA: r = {r if r is not None else '?'}, lora_alpha = {alpha if alpha is not None else '?'} "
               f"({same} r = 4, alpha = 64); target modules: {_modules(lora, model)}.")
    for dom in cfg.get("domains") or list((results.get("data") or {}).keys()):
        ours, paper = _source_name(dom, results), PAPER_DATA.get(dom, "—")
        tag = "same source, our own split" if ours == paper else "stand-in"
        out.append(f"Data, {dom}: {ours} (paper: {paper}; {tag}).")
    out.append("Loss: standard causal-LM cross-entropy on the answer tokens only; prompt and padding tokens are "
               "masked out of the loss and the perplexity. Perplexity = exp(total NLL / answer tokens) over a test "
               "set; the union is token-weighted over the combination's domains.")
    out.append("Composition: the adapter sum is exact, ΔW = Σ_i (lora_alpha/r)·B_i·A_i per target module, with no "
               "training after summation; the merged baseline is one adapter trained on the union of the training "
               "sets with the same LoRA and optimiser settings.")
    if any(c.kind == "hybrid" for c in compositions(results)):
        out.append("Hybrids: for every combination S of three or more domains and each d in S, the exact sum of the "
                   "adapter trained on the merged data of S∖{d} and the single adapter of d, as in the paper.")
    methods = [m for m in (cfg.get("methods") or []) if m != "sum"]
    if methods:
        dense = [m for m in methods if m in ("ties", "dare_linear", "dare_ties", "magnitude_prune")]
        out.append(f"Other composition methods (not in the paper): {', '.join(methods)}, applied to the same single "
                   "adapters" + (f"; the dense results of {', '.join(dense)} are added to the base weights for "
                                 "evaluation and removed afterwards." if dense else "."))
    seeds = seeds_of(results)
    out.append(f"Seeds: {len(seeds)} ({', '.join(map(str, seeds))}); every seed retrains all adapters.")
    groups = parallel_groups(results)
    if groups:
        out.append(f"Training: {groups} in one pass over the base model (lorasum.train.parallel), each with its own "
                   "data order, initialisation, optimiser and schedule; the same function as training them one "
                   "after the other, but other dropout draws.")
    return out



def _seconds(v) -> float | None:
    """A finite, non-negative number of a hand-editable results.json, else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        v = float(v)
    except OverflowError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


def _timing_line(results: dict) -> str:
    """The run's own timings as one italic sentence: wall time, phases, device, peak GPU memory (empty where
    results.json has none: runs of earlier versions; values that are not finite non-negative numbers are left out)."""
    t, wall = results.get("timings"), _seconds(results.get("wall_seconds"))
    if not isinstance(t, dict) or wall is None:
        return ""
    names = {"load_model": "model load", "data": "data", "train_and_compose": "training and composition",
             "evaluate": "evaluation", "geometry": "geometry"}
    order = [k for k in names if k in t] + sorted(str(k) for k in t if k not in names)  # results.json sorts its keys
    parts = ", ".join(f"{names.get(k, k)} {_seconds(t[k]):.0f} s" for k in order if _seconds(t[k]) is not None)
    peak = _seconds(results.get("peak_gpu_memory_gib"))
    device = results.get("device")
    return (f" *Wall time {wall:.0f} s in this process{f' ({parts})' if parts else ''}"
            f"{' on ' + device if isinstance(device, str) and device else ''}"
            f"{f', peak GPU memory {peak:.1f} GiB' if peak is not None else ''}.*")


def build_blocks(results: dict, images: dict[str, bytes] | None = None) -> list:
    """All report blocks in order; ``images`` (file name → PNG) decides which figures are shown."""
    images = images or {}
    cfg = results.get("config") or {}
    several = any(len(c.seeds) > 1 for c in combos(results))
    b: list = [Heading(1, f"lorasum report: {cfg.get('name', 'experiment')}"), Para(verdict(results))]
    b.append(Para(f"*Created {results.get('created', '?')} by lorasum {results.get('lorasum_version', '?')}; "
                  f"model source `{(results.get('model') or {}).get('source', '?')}`.*{_timing_line(results)}"))
    b += [Heading(2, "Headline"), headline_table(results)]
    if several:
        b.append(per_seed_table(results))
    b.append(change_by_domain_table(results))
    methods = methods_table(results)
    if methods is not None:
        b += [Heading(2, "Composition methods"), methods]
    b += [Heading(2, "Perplexity by model"), perplexity_table(results)]
    b += _image("perplexity_by_domain.png", "Perplexity by evaluation domain", images)
    b += [Heading(2, "Transfer matrix"), transfer_table(results)]
    b += _image("transfer_matrix.png", "Transfer matrix heatmap", images)
    b += [Heading(2, "Adapter geometry"), geometry_table(results)]
    layer_maps = [n for n in images if n.startswith("layer_cosines")]
    if layer_maps:
        b.append(Para("Per-layer cosine similarity of the single adapters' ΔW, averaged over seeds: RMS over the "
                      "target modules of each layer per pair, then per pair the signed cosine of each module kind."))
        b += [Image(n, f"Per-layer cosines {n[len('layer_cosines'):-4].strip('_') or 'of every pair'}")
              for n in layer_maps]
    b += [Heading(2, "Correlation"), correlation_table(results)]
    b += _image("rms_cosine_vs_ppl_change.png", "RMS cosine vs perplexity change", images)
    b += [Heading(2, "Training"), training_table(results), Heading(2, "Data"), data_table(results)]
    b += [Heading(2, "How this differs from the paper"), Bullets(differences(results))]
    return b


def _image(name: str, alt: str, images: dict[str, bytes]) -> list:
    return [Image(name, alt)] if name in images else []


def _md_table(t: Table) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in [t.headers, *t.rows]]
    sep = [("---:" if a == "r" else ":---") for a in t.align]
    lines = [f"**{t.title}**", "", "| " + " | ".join(esc[0]) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    if not t.rows:
        lines.append("| " + " | ".join(["—"] * len(t.headers)) + " |")
    if t.note:
        lines += ["", f"_{t.note}_"]
    return "\n".join(lines)


def to_markdown(blocks: list) -> str:
    """Markdown text; images are referenced by file name (they sit next to report.md)."""
    out = []
    for blk in blocks:
        if isinstance(blk, Heading):
            out.append("#" * blk.level + " " + blk.text)
        elif isinstance(blk, Para):
            out.append(blk.text)
        elif isinstance(blk, Bullets):
            out.append("\n".join(f"- {i}" for i in blk.items))
        elif isinstance(blk, Table):
            out.append(_md_table(blk))
        elif isinstance(blk, Image):
            out.append(f"![{blk.alt}]({blk.name})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
    return re.sub(r"(?<![\w*])\*(.+?)\*(?![\w*])", r"<em>\1</em>", s)


def _html_table(t: Table) -> str:
    def row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f'<{tag} class="{a}">{_inline(c)}</{tag}>' for c, a in zip(cells, t.align, strict=True)) + "</tr>"

    body = "\n".join(row(r, "td") for r in t.rows)
    note = f'<p class="note">{_inline(t.note)}</p>' if t.note else ""
    return (f"<figure><figcaption>{_inline(t.title)}</figcaption><table><thead>{row(t.headers, 'th')}</thead>"
            f"<tbody>\n{body}\n</tbody></table>{note}</figure>")


_CSS = """body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}td.l,th.l{text-align:left}
figcaption{font-weight:600;margin-bottom:.3em}.note{color:#555;font-size:.9em}img{max-width:100%}
code{background:#f5f5f5;padding:0 .2em;font-size:.9em;word-break:break-all}"""


def to_html(blocks: list, images: dict[str, bytes], title: str = "lorasum report") -> str:
    """Self-contained HTML: same blocks as the Markdown, figures embedded as ``data:image/png;base64`` URIs."""
    out = []
    for blk in blocks:
        if isinstance(blk, Heading):
            out.append(f"<h{blk.level}>{_inline(blk.text)}</h{blk.level}>")
        elif isinstance(blk, Para):
            out.append(f"<p>{_inline(blk.text)}</p>")
        elif isinstance(blk, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in blk.items) + "</ul>")
        elif isinstance(blk, Table):
            out.append(_html_table(blk))
        elif isinstance(blk, Image) and blk.name in images:
            data = base64.b64encode(images[blk.name]).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(blk.alt)}" src="data:image/png;base64,{data}"></figure>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(out) + "\n</body></html>\n")

