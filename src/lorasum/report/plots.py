"""Report figures as PNG bytes, drawn with matplotlib's Agg backend (no display, no pyplot state).

* ``rms_cosine_vs_ppl_change.png``: RMS cosine (x) vs Δ perplexity % on the union (y), one point
  per combination and seed, with the least-squares line and Pearson r (arXiv 2508.11985 claims
  a roughly linear relation).
* ``perplexity_by_domain.png``: grouped bars of per-domain perplexity, one bar per model.
* ``transfer_matrix.png``: heatmap of base and single-adapter perplexity on every domain.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from lorasum.report.summary import UNION, domains_of, finite, fmt, models, points
from lorasum.report.tables import correlation_stats

__all__ = ["PLOT_FILES", "scatter_png", "perplexity_bars_png", "transfer_png", "all_plots"]

PLOT_FILES = ("rms_cosine_vs_ppl_change.png", "perplexity_by_domain.png", "transfer_matrix.png")
_DPI = 120


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


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
    several = len({p[1] for p in pts}) > 1
    for lab, col in zip(labels, colors, strict=True):
        mine = [p for p in pts if p[0] == lab]
        ax.scatter([p[2] for p in mine], [p[3] for p in mine], color=col, label=lab, s=40, zorder=3)
        for _, seed, x, y in mine:
            text = f"{lab} (seed {seed})" if several else lab
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=col)
    s = correlation_stats(results)["all"]
    if finite(s["slope"]):
        xs = np.array([min(p[2] for p in pts), max(p[2] for p in pts)])
        ax.plot(xs, s["intercept"] + s["slope"] * xs, "k--", lw=1,
                label=f"least squares (Pearson r = {fmt(s['pearson_r'], 'r')}, n = {s['n']})")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("RMS cosine similarity of ΔW")
    ax.set_ylabel("Δ perplexity % (sum vs merged, union)")
    ax.set_title(f"RMS cosine vs Δ perplexity (Pearson r = {fmt(s['pearson_r'], 'r')}, n = {s['n']})")
    ax.legend(fontsize=7, loc="best")
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
    """Grouped bars: x groups = evaluation domains (+ union), one bar per model, error bar = std over seeds."""
    ms = models(results)
    cols = domains_of(results) + [UNION]
    fig = Figure(figsize=(max(6.4, 1.0 + 0.22 * len(ms) * len(cols)), 4.8))
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
        ax.bar(x, mean, width, yerr=std, color=col, label=m.name, edgecolor="k", linewidth=0.3,
               hatch="//" if m.kind == "sum" else None, error_kw={"elinewidth": 0.6})
    if allv and max(allv) / max(min(allv), 1e-12) > 20:
        ax.set_yscale("log")
    ax.set_xticks(np.arange(len(cols)), cols)
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
    ax.set_xticks(range(len(doms)), doms)
    ax.set_yticks(range(len(ms)), [m.name for m in ms])
    ax.set_xlabel("evaluation domain")
    ax.set_title("Transfer: perplexity of base and single adapters")
    fig.colorbar(im, ax=ax, label="perplexity (log scale)")
    return _png(fig)


def all_plots(results: dict) -> dict[str, bytes]:
    """Every report figure: file name → PNG bytes (names in ``PLOT_FILES``)."""
    return dict(zip(PLOT_FILES, (scatter_png(results), perplexity_bars_png(results), transfer_png(results)),
                    strict=True))

