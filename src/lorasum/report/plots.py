"""Report figures as PNG bytes, drawn with matplotlib's Agg backend (no display, no pyplot state).

* ``rms_cosine_vs_ppl_change.png``: RMS cosine (x) vs Δ perplexity % on the union (y), one point
  per combination and seed, labelled by combination, with the least-squares line, its 95 %
  confidence band and Pearson r (arXiv 2508.11985 claims a roughly linear relation).
* ``perplexity_by_domain.png``: grouped bars of per-domain perplexity of the base model, single,
  merged and summed adapters.
* ``transfer_matrix.png``: heatmap of base and single-adapter perplexity on every domain.
* ``layer_cosines.png`` and ``layer_cosines_<a>+<b>.png`` (results with ``geometry``, schema 2):
  per-layer RMS cosine of every pair of single adapters, and per pair the cosine per module kind
  and layer, both averaged over seeds (:func:`lorasum.geometry.export.layer_heatmap_png`).
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from lorasum.experiment.stats import fit_band
from lorasum.report.summary import UNION, domains_of, finite, fmt, models, points
from lorasum.report.tables import correlation_stats

__all__ = ["PLOT_FILES", "scatter_png", "perplexity_bars_png", "transfer_png", "layer_heatmaps", "all_plots"]

PLOT_FILES = ("rms_cosine_vs_ppl_change.png", "perplexity_by_domain.png", "transfer_matrix.png")
_DPI = 120


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _text(name: str) -> str:
    """A name from results.json as matplotlib text, drawn as it is: ``$`` escaped, so that a hand-edited name
    holding two of them is not parsed as a TeX formula (which fails on one that is not)."""
    return str(name).replace("$", r"\$")


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in results", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def scatter_png(results: dict) -> bytes:
    """Scatter of RMS cosine vs Δ perplexity % (union) with the least-squares line; PNG bytes."""
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    pts = [p for p in points(results) if finite(p[2]) and finite(p[3])]
    if not pts:
        _no_data(ax, "combinations with RMS cosine and Δ perplexity")
        return _png(fig)
    labels = list(dict.fromkeys(p[0] for p in pts))
    colors = _cycle(len(labels))
    for lab, col in zip(labels, colors, strict=True):
        mine = [p for p in pts if p[0] == lab]
        ax.scatter([p[2] for p in mine], [p[3] for p in mine], color=col, label=_text(lab), s=40, zorder=3)
        for _, _, x, y in mine:
            ax.annotate(_text(lab), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6, color=col)
    s = correlation_stats(results)["all"]
    if finite(s["slope"]):
        xs = np.linspace(min(p[2] for p in pts), max(p[2] for p in pts), 101)
        band = fit_band([p[2] for p in pts], [p[3] for p in pts], xs)
        ax.fill_between(xs, band["low"], band["high"], color="0.5", alpha=0.2, lw=0,
                        label="95 % confidence band of the line")
        ax.plot(xs, band["fit"], "k--", lw=1,
                label=f"least squares (Pearson r = {fmt(s['pearson_r'], 'r')}, n = {s['n']})")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("RMS cosine similarity of ΔW")
    ax.set_ylabel("Δ perplexity % (sum vs merged, union)")
    ax.set_title(f"RMS cosine vs Δ perplexity (Pearson r = {fmt(s['pearson_r'], 'r')}, n = {s['n']})")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(alpha=0.3)
    return _png(fig)


def _cycle(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _model_colors(ms) -> list:
    from matplotlib import colormaps

    maps = {"base": None, "single": "Blues", "merged": "Greens", "sum": "Oranges"}
    out = []
    for m in ms:
        group = [x for x in ms if x.kind == m.kind]
        name = maps.get(m.kind)
        if name is None:
            out.append("0.5")
            continue
        k = group.index(m)
        out.append(colormaps[name](0.45 + 0.5 * (k + 1) / (len(group) + 1)))
    return out


def perplexity_bars_png(results: dict) -> bytes:
    """Grouped bars: x groups = evaluation domains (+ union), one bar per base, single, merged and sum model;
    error bar = std over seeds."""
    ms = [m for m in models(results) if m.kind in ("base", "single", "merged", "sum")]
    cols = domains_of(results) + [UNION]
    fig = Figure(figsize=(min(18.0, max(6.4, 1.0 + 0.22 * len(ms) * len(cols))), 4.8))
    ax = fig.add_subplot()
    if not ms:
        _no_data(ax, "evaluations")
        return _png(fig)
    width = 0.85 / len(ms)
    allv = []
    for i, (m, col) in enumerate(zip(ms, _model_colors(ms), strict=True)):
        mean, std = [], []
        for d in cols:
            vals = [v for v in m.ppl.get(d, []) if finite(v)]
            mean.append(float(np.mean(vals)) if vals else math.nan)
            std.append(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
        allv += [v for v in mean if finite(v)]
        x = np.arange(len(cols)) + (i - (len(ms) - 1) / 2) * width
        ax.bar(x, mean, width, yerr=std, color=col, label=_text(m.name), edgecolor="k", linewidth=0.3,
               hatch="//" if m.kind == "sum" else None, error_kw={"elinewidth": 0.6})
    if allv and max(allv) / max(min(allv), 1e-12) > 20:
        ax.set_yscale("log")
    ax.set_xticks(np.arange(len(cols)), [_text(c) for c in cols])
    ax.set_ylabel("perplexity")
    ax.set_title("Perplexity by evaluation domain")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def transfer_png(results: dict) -> bytes:
    """Heatmap (log colour scale) of base and single-adapter perplexity: rows models, columns domains."""
    doms = domains_of(results)
    ms = [m for m in models(results) if m.kind in ("base", "single")]
    fig = Figure(figsize=(1.6 + 1.3 * max(len(doms), 1), 1.2 + 0.6 * max(len(ms), 1)))
    ax = fig.add_subplot()
    if not ms or not doms:
        _no_data(ax, "base or single-adapter evaluations")
        return _png(fig)
    mat = np.full((len(ms), len(doms)), np.nan)
    for i, m in enumerate(ms):
        for j, d in enumerate(doms):
            vals = [v for v in m.ppl.get(d, []) if finite(v) and v > 0]
            if vals:
                mat[i, j] = float(np.mean(vals))
    ok = mat[np.isfinite(mat)]
    norm = LogNorm(vmin=ok.min(), vmax=max(ok.max(), ok.min() * 1.0001)) if ok.size else None
    im = ax.imshow(np.ma.masked_invalid(mat), cmap="viridis_r", norm=norm, aspect="auto")
    for i in range(len(ms)):
        for j in range(len(doms)):
            ax.text(j, i, fmt(mat[i, j], "ppl"), ha="center", va="center", fontsize=8,
                    color="w" if ok.size and finite(mat[i, j]) and mat[i, j] > np.sqrt(ok.min() * ok.max()) else "k")
    ax.set_xticks(range(len(doms)), [_text(d) for d in doms])
    ax.set_yticks(range(len(ms)), [_text(m.name) for m in ms])
    ax.set_xlabel("evaluation domain")
    ax.set_title("Transfer: perplexity of base and single adapters")
    fig.colorbar(im, ax=ax, label="perplexity (log scale)")
    return _png(fig)


def _mean_similarity(results: dict):
    """A :class:`~lorasum.geometry.Similarity` of the single adapters with every cosine averaged over seeds
    (enough of one for :func:`~lorasum.geometry.export.layer_table`); None without ``geometry``."""
    from lorasum.geometry import PairStats, Similarity

    geo = [g for g in results.get("geometry") or [] if g.get("pairs")]
    if not geo:
        return None
    pairs: dict[tuple[str, str], list[dict]] = {}
    for g in geo:
        for p in g["pairs"]:
            pairs.setdefault((p["a"], p["b"]), []).append(p)

    def mean(dicts: list[dict]) -> dict:
        keys = dict.fromkeys(k for d in dicts for k in d)
        return {k: float(np.mean([d[k] for d in dicts if finite(d.get(k))] or [math.nan])) for k in keys}

    stats = {}
    for (a, b), ps in pairs.items():
        scalars = mean([{k: p.get(k) for k in ("rms", "mean_abs", "max_abs")} for p in ps])
        cosines = {_text(m): v for m, v in mean([p.get("cosines") or {} for p in ps]).items()}  # module kinds: labels
        stats[(a, b)] = PairStats(a, b, cosines, scalars["rms"],
                                  scalars["mean_abs"], scalars["max_abs"],
                                  layer_rms={int(k): v for k, v in mean([p.get("layer_rms") or {} for p in ps]).items()})
    shapes = {m: tuple(s) for g in geo for m, s in (g.get("shapes") or {}).items()}
    return Similarity(names=tuple(geo[0].get("names") or ()), pairs=stats, norms={}, matrix=(), shapes=shapes)


def layer_heatmaps(results: dict) -> dict[str, bytes]:
    """``layer_cosines.png`` (per pair and layer) and ``layer_cosines_<a>+<b>.png`` (per module kind and
    layer, one per pair), averaged over seeds; empty when the results hold no per-module geometry."""
    from lorasum.geometry.export import layer_heatmap_png

    sim = _mean_similarity(results)
    if sim is None or not sim.layers:
        return {}
    out = {"layer_cosines.png": layer_heatmap_png(sim)}
    for a, b in sim.pairs:
        out[f"layer_cosines_{a}+{b}.png"] = layer_heatmap_png(sim, (a, b))
    return out


def all_plots(results: dict) -> dict[str, bytes]:
    """Every report figure: file name → PNG bytes (``PLOT_FILES``, then the optional layer heatmaps)."""
    images = dict(zip(PLOT_FILES, (scatter_png(results), perplexity_bars_png(results), transfer_png(results)),
                      strict=True))
    return images | layer_heatmaps(results)

