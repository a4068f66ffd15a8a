"""The N×N similarity heatmap (colour scale over the pairs, diagonal greyed, cells annotated), figure
formats by file extension, pair-summary CSV rows and the natural order of module paths."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch

from lorasum.adapters import Adapter, LoraFactor
from lorasum.geometry import (PAIR_CSV_COLUMNS, figure_format, matrix_heatmap, matrix_heatmap_figure, natural_key,
                              pair_rows, similarity, similarity_rows, write_similarity_csv)


def _factor(rng, d_out=6, d_in=5, r=2):
    return LoraFactor(A=torch.from_numpy(rng.standard_normal((r, d_in))).float(),
                      B=torch.from_numpy(rng.standard_normal((d_out, r))).float(), scaling=1.0)


def _layers_adapter(seed, layers=12):
    rng = np.random.default_rng(seed)
    return Adapter(factors={f"model.layers.{i}.self_attn.q_proj": _factor(rng) for i in range(layers)})


def _image(fig):
    (ax,) = [a for a in fig.axes if a.images and a.get_title()]
    return ax, ax.images[0]


def test_two_adapter_heatmap_scales_colours_to_the_pair_not_the_diagonal():
    """Two adapters: the only off-diagonal value (small, as cosines of unrelated adapters are) tops the
    colour scale; the diagonal (1) is masked (grey) instead of saturating the scale."""
    sim = similarity({"x": _layers_adapter(1, 3), "y": _layers_adapter(2, 3)})
    off = sim.matrix[0][1]
    assert 0 < off < 0.9
    fig = matrix_heatmap_figure(sim)
    ax, im = _image(fig)
    assert im.norm.vmin == 0.0 and im.norm.vmax == pytest.approx(off)
    shown = im.get_array()
    assert np.ma.getmaskarray(shown).tolist() == [[True, False], [False, True]]  # diagonal out of the scale
    assert tuple(im.cmap.get_bad()) != (0.0, 0.0, 0.0, 0.0)  # drawn (grey), not left transparent
    # two different colours: the off-diagonal cells' and the diagonal's bad colour
    assert not np.allclose(im.cmap(im.norm(off)), im.cmap.get_bad())
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(["1", "1", f"{off:.3g}", f"{off:.3g}"])


def test_heatmap_scale_spans_the_off_diagonal_values_of_three_adapters():
    sim = similarity({n: _layers_adapter(s, 3) for n, s in (("a", 1), ("b", 2), ("c", 3))})
    _, im = _image(matrix_heatmap_figure(sim))
    off = [v for i, row in enumerate(sim.matrix) for j, v in enumerate(row) if i != j]
    assert im.norm.vmax == pytest.approx(max(off)) and im.norm.vmin == 0.0
    assert np.ma.getmaskarray(im.get_array()).sum() == 3


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG\r\n\x1a\n"), ("pdf", b"%PDF-"), ("svg", b"<?xml")])
def test_matrix_heatmap_formats(fmt, magic):
    sim = similarity({"x": _layers_adapter(1, 2), "y": _layers_adapter(2, 2)})
    data = matrix_heatmap(sim, fmt)
    assert data.startswith(magic)
    if fmt == "svg":
        assert b"<svg" in data
    with pytest.raises(ValueError, match="jpg"):
        matrix_heatmap(sim, "jpg")


@pytest.mark.parametrize("name, fmt", [("m.png", "png"), ("a/b/m.PDF", "pdf"), ("m.tar.svg", "svg")])
def test_figure_format_from_the_extension(name, fmt):
    assert figure_format(name) == fmt


@pytest.mark.parametrize("name, fragment", [("m.jpg", ".jpg"), ("m", "no extension"), ("m.png.txt", ".txt")])
def test_figure_format_refuses_other_extensions(name, fragment):
    with pytest.raises(ValueError, match=fragment) as e:
        figure_format(name)
    assert ".png, .pdf or .svg" in str(e.value)


def test_natural_key_orders_layer_numbers_as_numbers():
    paths = ["model.layers.10.q", "model.layers.2.q", "model.layers.1.q", "lm_head", "model.layers.2.k"]
    assert sorted(paths, key=natural_key) == ["lm_head", "model.layers.1.q", "model.layers.2.k", "model.layers.2.q",
                                              "model.layers.10.q"]
    assert sorted(["h.01", "h.1"], key=natural_key) == ["h.01", "h.1"]  # equal numbers: a total order still


def test_similarity_rows_and_undefined_modules_are_in_natural_order():
    sim = similarity({"x": _layers_adapter(1), "y": _layers_adapter(2)})
    assert [r["layer"] for r in similarity_rows(sim)] == list(range(12))
    zero = LoraFactor(A=torch.zeros(1, 5), B=torch.zeros(6, 1), scaling=1.0)
    z = Adapter(factors={f"model.layers.{i}.self_attn.q_proj": zero for i in range(12)})
    p = similarity({"x": _layers_adapter(1), "z": z}).pair("x", "z")
    assert [int(m.split(".")[2]) for m in p.undefined] == list(range(12))


def test_pair_rows_summarise_each_pair(tmp_path):
    ads = {n: _layers_adapter(s, 3) for n, s in (("a", 1), ("b", 2), ("c", 3))}
    sim = similarity(ads)
    rows = pair_rows(sim)
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    for r in rows:
        p = sim.pair(r["a"], r["b"])
        assert (r["rms"], r["baseline_rms"], r["mean_abs"], r["max_abs"]) == (p.rms, p.baseline_rms, p.mean_abs,
                                                                              p.max_abs)
        assert r["modules"] == 3 and r["undefined_modules"] == 0 and set(r) == set(PAIR_CSV_COLUMNS)
    path = write_similarity_csv(sim, tmp_path / "pairs.csv", per_module=False)
    read = list(csv.DictReader(io.StringIO(path.read_text())))
    assert tuple(read[0]) == PAIR_CSV_COLUMNS and len(read) == 3
    assert math.isclose(float(read[0]["rms"]), sim.pair("a", "b").rms, rel_tol=1e-9)


def test_two_adapter_png_is_not_one_colour():
    """In the PNG itself: the diagonal's light grey and the pair's colour (the scale's top) each fill two of the
    four cells, over a tenth of the image each (before, the diagonal saturated to the pair's colour: one colour,
    and light grey only in a few anti-aliased pixels)."""
    import matplotlib
    import matplotlib.image

    sim = similarity({"x": _layers_adapter(1, 3), "y": _layers_adapter(2, 3)})
    img = matplotlib.image.imread(io.BytesIO(matrix_heatmap(sim, "png")), format="png")[..., :3]
    grey = np.array(matplotlib.colors.to_rgb("lightgrey"))
    top = np.array(matplotlib.colormaps["viridis"](1.0)[:3])
    counts = [int(np.all(np.abs(img - c) < 0.02, axis=-1).sum()) for c in (grey, top)]
    assert min(counts) > 0.1 * img.shape[0] * img.shape[1], counts
