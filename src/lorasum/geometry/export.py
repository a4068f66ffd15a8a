"""Write a :class:`~lorasum.geometry.similarity.Similarity` as CSV and as heatmap PNGs.

Figures are drawn with matplotlib's Agg canvas (no display, no pyplot state); all files are
written atomically and refuse to overwrite unless asked.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from lorasum.geometry.layers import layer_index, module_kind
from lorasum.geometry.similarity import Similarity
from lorasum.storage import atomic_write_bytes, atomic_write_text, check_output

__all__ = ["CSV_COLUMNS", "similarity_rows", "write_similarity_csv", "layer_table", "matrix_heatmap_png",
           "layer_heatmap_png", "write_png"]

CSV_COLUMNS = ("a", "b", "module", "layer", "kind", "cosine", "baseline_abs_cosine", "column_overlap",
               "row_overlap", "norm_a", "norm_b", "norm_ratio", "rank_a", "rank_b", "d_out", "d_in")


def similarity_rows(sim: Similarity) -> list[dict]:
    """One dict per (pair, module) with the keys of :data:`CSV_COLUMNS` (absent values are None;
    ``layer`` is None for paths without a layer index)."""
    rows = []
    for p in sim.pairs.values():
        for m, c in p.cosines.items():
            d_out, d_in = sim.shapes.get(m, (None, None))
            rows.append({"a": p.a, "b": p.b, "module": m, "layer": layer_index(m), "kind": module_kind(m),
                         "cosine": c, "baseline_abs_cosine": p.baseline_abs.get(m),
                         "column_overlap": p.column_overlap.get(m), "row_overlap": p.row_overlap.get(m),
                         "norm_a": sim.norms[p.a].get(m), "norm_b": sim.norms[p.b].get(m),
                         "norm_ratio": p.norm_ratio.get(m), "rank_a": sim.ranks.get(p.a, {}).get(m),
                         "rank_b": sim.ranks.get(p.b, {}).get(m), "d_out": d_out, "d_in": d_in})
    return rows


def _cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.10g}" if isinstance(v, float) else str(v)


def write_similarity_csv(sim: Similarity, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write :func:`similarity_rows` as CSV (header :data:`CSV_COLUMNS`, floats with 10 significant digits).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    check_output(path, overwrite)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for row in similarity_rows(sim):
        w.writerow([_cell(row[k]) for k in CSV_COLUMNS])
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


def _heatmap_png(values, xlabels, ylabels, title: str, cbar: str, vmin: float, vmax: float, cmap: str,
                 annotate: bool) -> bytes:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = np.array(values, dtype=float).reshape(len(ylabels), len(xlabels))
    fig = Figure(figsize=(max(4.0, 0.45 * len(xlabels) + 2.5), max(3.0, 0.45 * len(ylabels) + 1.5)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(data), vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(xlabels)), [str(x) for x in xlabels], rotation=45 if len(xlabels) > 8 else 0)
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar)
    if annotate:
        for (i, j), v in np.ndenumerate(data):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def matrix_heatmap_png(sim: Similarity) -> bytes:
    """PNG of the N×N matrix of RMS cosines (annotated; colour scale 0 to the largest off-diagonal value)."""
    off = [v for i, row in enumerate(sim.matrix) for j, v in enumerate(row) if i != j and math.isfinite(v)]
    vmax = max(off, default=1.0) or 1.0
    return _heatmap_png(sim.matrix, list(sim.names), list(sim.names), "RMS cosine of ΔW", "RMS cosine",
                        0.0, vmax, "viridis", annotate=len(sim.names) <= 12)


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
        return _heatmap_png(values, layers, labels, "RMS cosine of ΔW per layer", "RMS cosine", 0.0, top,
                            "viridis", annotate=False)
    return _heatmap_png(values, layers, labels, f"cos(ΔW) per layer: {pair[0]} · {pair[1]}", "cosine",
                        -top, top, "coolwarm", annotate=False)


def write_png(data: bytes, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write PNG bytes (from the ``*_png`` functions) atomically.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    check_output(path, overwrite)
    return atomic_write_bytes(path, data)
