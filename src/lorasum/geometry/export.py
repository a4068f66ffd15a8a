"""Write a :class:`~lorasum.geometry.similarity.Similarity` as CSV and as heatmaps (PNG, PDF or SVG).

Figures are drawn with matplotlib's Agg canvas (no display, no pyplot state); all files are
written atomically and refuse to overwrite unless asked. Module rows are in natural order
(:func:`~lorasum.geometry.layers.natural_key`: ``layers.2`` before ``layers.10``).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path

from lorasum.geometry.layers import layer_index, module_kind, natural_key
from lorasum.geometry.similarity import Similarity
from lorasum.storage import atomic_write_bytes, atomic_write_text, check_output

__all__ = ["CSV_COLUMNS", "PAIR_CSV_COLUMNS", "FIGURE_FORMATS", "similarity_rows", "pair_rows",
           "write_similarity_csv", "layer_table", "figure_format", "matrix_heatmap_figure", "matrix_heatmap",
           "matrix_heatmap_png", "layer_heatmap_png", "write_figure", "write_png"]

CSV_COLUMNS = ("a", "b", "module", "layer", "kind", "cosine", "baseline_abs_cosine", "column_overlap",
               "row_overlap", "norm_a", "norm_b", "norm_ratio", "rank_a", "rank_b", "d_out", "d_in")
PAIR_CSV_COLUMNS = ("a", "b", "rms", "baseline_rms", "mean_abs", "max_abs", "modules", "undefined_modules")
"""Columns of :func:`pair_rows`: the pair summary of ``lorasum similarity``'s table (RMS cosine, the RMS
expected for random matrices of the same shapes, mean and max |cos|, number of modules, and how many
of them have an undefined cosine); the names are those of :meth:`PairStats.to_dict`."""
FIGURE_FORMATS = ("png", "pdf", "svg")
"""Figure formats, chosen by the file's extension (:func:`figure_format`)."""


def similarity_rows(sim: Similarity) -> list[dict]:
    """One dict per (pair, module) with the keys of :data:`CSV_COLUMNS` (absent values are None;
    ``layer`` is None for paths without a layer index); pairs in order, modules in natural order."""
    rows = []
    for p in sim.pairs.values():
        for m in sorted(p.cosines, key=natural_key):
            c = p.cosines[m]
            d_out, d_in = sim.shapes.get(m, (None, None))
            rows.append({"a": p.a, "b": p.b, "module": m, "layer": layer_index(m), "kind": module_kind(m),
                         "cosine": c, "baseline_abs_cosine": p.baseline_abs.get(m),
                         "column_overlap": p.column_overlap.get(m), "row_overlap": p.row_overlap.get(m),
                         "norm_a": sim.norms[p.a].get(m), "norm_b": sim.norms[p.b].get(m),
                         "norm_ratio": p.norm_ratio.get(m), "rank_a": sim.ranks.get(p.a, {}).get(m),
                         "rank_b": sim.ranks.get(p.b, {}).get(m), "d_out": d_out, "d_in": d_in})
    return rows


def pair_rows(sim: Similarity) -> list[dict]:
    """One dict per pair with the keys of :data:`PAIR_CSV_COLUMNS` (summaries are NaN where a cosine
    is undefined, as in :class:`~lorasum.geometry.similarity.PairStats`)."""
    return [{"a": p.a, "b": p.b, "rms": p.rms, "baseline_rms": p.baseline_rms, "mean_abs": p.mean_abs,
             "max_abs": p.max_abs, "modules": len(p.cosines), "undefined_modules": len(p.undefined)}
            for p in sim.pairs.values()]


def _cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.10g}" if isinstance(v, float) else str(v)


def write_similarity_csv(sim: Similarity, path: str | Path, *, overwrite: bool = False,
                         per_module: bool = True) -> Path:
    """Write :func:`similarity_rows` (header :data:`CSV_COLUMNS`), or with ``per_module=False``
    :func:`pair_rows` (header :data:`PAIR_CSV_COLUMNS`), as CSV with floats to 10 significant digits.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    check_output(path, overwrite)
    columns, rows = (CSV_COLUMNS, similarity_rows(sim)) if per_module else (PAIR_CSV_COLUMNS, pair_rows(sim))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_cell(row[k]) for k in columns])
    return atomic_write_text(path, buf.getvalue())


def layer_table(sim: Similarity, pair: tuple[str, str] | None = None) -> tuple[list[str], list[int], list[list[float]]]:
    """(row labels, layer indices, values[row][layer]) for a per-layer heatmap.

    Without ``pair``: one row per pair ("a · b"), values the pair's per-layer RMS cosine. With
    ``pair``: one row per module kind (e.g. ``attn.c_attn``), values that module's cosine in
    each layer. Missing cells are nan.

    Raises:
        KeyError: unknown pair.
    """
    layers = sim.layers
    if pair is None:
        labels = [f"{p.a} · {p.b}" for p in sim.pairs.values()]
        values = [[p.layer_rms.get(i, math.nan) for i in layers] for p in sim.pairs.values()]
        return labels, layers, values
    p = sim.pair(*pair)
    cells = {(module_kind(m), layer_index(m)): c for m, c in p.cosines.items() if layer_index(m) is not None}
    kinds = sorted({k for k, _ in cells})
    return kinds, layers, [[cells.get((k, i), math.nan) for i in layers] for k in kinds]


def figure_format(path: str | Path) -> str:
    """The figure format a file name asks for: its extension, lower case, one of :data:`FIGURE_FORMATS`.

    Raises:
        ValueError: another extension, or none (the message lists the formats).
    """
    suffix = Path(path).suffix.lower().removeprefix(".")
    if suffix not in FIGURE_FORMATS:
        what = f"has the extension {Path(path).suffix}, not a figure format lorasum writes" if suffix else \
            "has no extension"
        raise ValueError(f"{path} {what}; use {', '.join('.' + f for f in FIGURE_FORMATS[:-1])} "
                         f"or .{FIGURE_FORMATS[-1]}")
    return suffix


# metadata that would make two drawings of the same numbers differ (software versions, dates)
_NO_METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
                "svg": {"Creator": None, "Date": None}}


def _figure_bytes(fig, fmt: str) -> bytes:
    """``fig`` saved in ``fmt`` (one of :data:`FIGURE_FORMATS`)."""
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"figure format {fmt!r}: expected one of {', '.join(FIGURE_FORMATS)}")
    buf = io.BytesIO()
    with warnings.catch_warnings():  # adapter names in scripts the font lacks: drawn as boxes, not a warning each
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        fig.savefig(buf, format=fmt, dpi=120, bbox_inches="tight", metadata=_NO_METADATA[fmt])
    return buf.getvalue()


def _heatmap_figure(values, xlabels, ylabels, title: str, cbar: str, vmin: float, vmax: float, cmap: str,
                    annotate: bool, mask=None, bad: str | None = None):
    """A heatmap Figure; cells that are NaN or True in ``mask`` are not coloured by the scale (drawn in
    ``bad``, else left blank). With ``annotate`` every cell shows its value (``n/a`` where it is NaN), in
    black or white, whichever stands out on the cell's colour."""
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = np.array(values, dtype=float).reshape(len(ylabels), len(xlabels))
    hidden = ~np.isfinite(data) if mask is None else (~np.isfinite(data) | np.asarray(mask, dtype=bool))
    colours = matplotlib.colormaps[cmap]
    if bad is not None:
        colours = colours.with_extremes(bad=bad)
    fig = Figure(figsize=(max(4.0, 0.45 * len(xlabels) + 2.5), max(3.0, 0.45 * len(ylabels) + 1.5)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_array(data, mask=hidden), vmin=vmin, vmax=vmax, cmap=colours, aspect="auto")
    ax.set_xticks(range(len(xlabels)), [str(x) for x in xlabels], rotation=45 if len(xlabels) > 8 else 0)
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar)
    if annotate:
        for (i, j), v in np.ndenumerate(data):
            if hidden[i, j]:
                colour = "black"
            else:
                r, g, b, _ = colours(im.norm(v))
                colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, f"{v:.3g}" if math.isfinite(v) else "n/a", ha="center", va="center", fontsize=8,
                    color=colour)
    return fig


def matrix_heatmap_figure(sim: Similarity):
    """A matplotlib Figure of the N×N matrix of RMS cosines.

    The diagonal (each adapter with itself: 1, or n/a for a zero ΔW) is drawn grey and left out of
    the colour scale, which runs from 0 to the largest off-diagonal value, so that the pairs'
    differences show (with the diagonal on the scale the off-diagonal cells, often below 0.05, all
    look alike). Undefined (NaN) cells are grey too. Cells are annotated with their values when
    N ≤ 12.
    """
    n = len(sim.names)
    off = [v for i, row in enumerate(sim.matrix) for j, v in enumerate(row) if i != j and math.isfinite(v)]
    vmax = max(off, default=1.0) or 1.0
    diagonal = [[i == j for j in range(n)] for i in range(n)]
    return _heatmap_figure(sim.matrix, list(sim.names), list(sim.names), "RMS cosine of ΔW",
                           "RMS cosine (off-diagonal; diagonal grey)", 0.0, vmax, "viridis",
                           annotate=n <= 12, mask=diagonal, bad="lightgrey")


def matrix_heatmap(sim: Similarity, fmt: str = "png") -> bytes:
    """:func:`matrix_heatmap_figure` as the bytes of a ``fmt`` file (one of :data:`FIGURE_FORMATS`).

    Raises:
        ValueError: another format.
    """
    return _figure_bytes(matrix_heatmap_figure(sim), fmt)


def matrix_heatmap_png(sim: Similarity) -> bytes:
    """PNG of :func:`matrix_heatmap_figure`."""
    return matrix_heatmap(sim, "png")


def layer_heatmap_png(sim: Similarity, pair: tuple[str, str] | None = None) -> bytes:
    """PNG of per-layer cosines (see :func:`layer_table`): RMS cosine per pair and layer, or with
    ``pair`` the signed cosine per module kind and layer (diverging colours, symmetric scale).

    Raises:
        KeyError: unknown pair.
        ValueError: no module path has a layer index.
    """
    labels, layers, values = layer_table(sim, pair)
    if not layers or not labels:
        raise ValueError("no module path has a layer index; nothing to plot per layer")
    finite = [abs(v) for row in values for v in row if math.isfinite(v)]
    top = max(finite, default=1.0) or 1.0
    if pair is None:
        fig = _heatmap_figure(values, layers, labels, "RMS cosine of ΔW per layer", "RMS cosine", 0.0, top,
                              "viridis", annotate=False)
    else:
        fig = _heatmap_figure(values, layers, labels, f"cos(ΔW) per layer: {pair[0]} · {pair[1]}", "cosine",
                              -top, top, "coolwarm", annotate=False)
    return _figure_bytes(fig, "png")


def write_figure(data: bytes, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write figure bytes (from :func:`matrix_heatmap` or the ``*_png`` functions) atomically; the
    caller picks the format that matches ``path`` (:func:`figure_format`).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    check_output(path, overwrite)
    return atomic_write_bytes(path, data)


def write_png(data: bytes, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write PNG bytes (from the ``*_png`` functions) atomically: :func:`write_figure`.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    return write_figure(data, path, overwrite=overwrite)
