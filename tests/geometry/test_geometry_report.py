"""Batched cosines, the extended Similarity (overlaps, norm ratios, baselines, layers),
its CSV and heatmaps, against dense numpy / scipy computations."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from lorasum.adapters import Adapter, LoraFactor
from lorasum.errors import AdapterError, OutputExistsError
from lorasum.geometry import (cosine, cosine_matrices, expected_abs_cosine, group_by_layer, inner_matrix,
                              layer_heatmap_png, layer_index, layer_table, matrix_heatmap_png, module_kind, similarity,
                              similarity_rows, write_png, write_similarity_csv)
from lorasum.geometry.export import CSV_COLUMNS

GPT2 = [f"transformer.h.{i}.{k}" for i in range(3) for k in ("attn.c_attn", "mlp.c_fc")]
SHAPES = {"attn.c_attn": (9, 4), "mlp.c_fc": (7, 4)}


def _factor(rng, module, r):
    d_out, d_in = SHAPES[module_kind(module)]
    return LoraFactor(A=torch.from_numpy(rng.standard_normal((r, d_in))).float(),
                      B=torch.from_numpy(rng.standard_normal((d_out, r))).float(), scaling=float(rng.uniform(0.5, 3)))


def _adapters():
    rng = np.random.default_rng(0)
    ads = {n: Adapter(factors={m: _factor(rng, m, r) for m in GPT2}) for n, r in (("math", 2), ("med", 3), ("fin", 2))}
    del ads["med"].factors[GPT2[-1]]  # a module only two adapters have
    m0 = ads["math"].factors[GPT2[0]]  # make one pair aligned on one module
    ads["fin"].factors[GPT2[0]] = LoraFactor(A=m0.A + 0.01, B=m0.B, scaling=1.0)
    return ads


def _dense(f):
    return f.scaling * (f.B.numpy().astype(np.float64) @ f.A.numpy().astype(np.float64))


def _dcos(x, y):
    return float(np.sum(x * y) / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_inner_matrix_and_cosine_matrices_match_dense():
    ads = _adapters()
    names = list(ads)
    mats = cosine_matrices([ads[n] for n in names])
    assert list(mats) == sorted(GPT2)
    for m, mat in mats.items():
        for (i, a), (j, b) in itertools.product(enumerate(names), repeat=2):
            fa, fb = ads[a].factors.get(m), ads[b].factors.get(m)
            if fa is None or fb is None:
                assert mat[i, j] == 0.0
            else:
                assert float(mat[i, j]) == pytest.approx(_dcos(_dense(fa), _dense(fb)), abs=1e-9)
        g = inner_matrix([ads[n].factors.get(m) for n in names])
        fa = ads["math"].factors[m]
        assert float(g[0, 0]) == pytest.approx(float(np.sum(_dense(fa) ** 2)), rel=1e-9)
    with pytest.raises(AdapterError, match="shape"):
        inner_matrix([_factor(np.random.default_rng(1), GPT2[0], 2), _factor(np.random.default_rng(1), GPT2[1], 2)])
    # adapters of different models: the message names both adapters and their shapes
    other = Adapter(factors={GPT2[0]: _factor(np.random.default_rng(1), GPT2[1], 2)}, path=Path("runs/other"))
    with pytest.raises(AdapterError, match=r"transformer.h.0.attn.c_attn: .*math \(9, 4\), runs/other \(7, 4\).*"
                                           r"different base models"):
        cosine_matrices([dataclasses.replace(ads["math"], path=Path("runs/math")), other])
    with pytest.raises(AdapterError, match=r"adapter 1 \(9, 4\), adapter 2 \(7, 4\)"):  # no folder: by position
        cosine_matrices([ads["math"], dataclasses.replace(other, path=None)])
    zero = LoraFactor(A=torch.zeros(1, 4), B=torch.zeros(9, 1), scaling=1.0)
    c = cosine_matrices([Adapter(factors={"x": zero}), Adapter(factors={"x": _factor(np.random.default_rng(2),
                                                                                     GPT2[0], 2)})])["x"]
    assert np.isnan(c[0]).all() and np.isnan(c[:, 0]).all() and float(c[1, 1]) == 1.0
    assert math.isnan(cosine(zero, zero))
    # an adapter lacking the module counts 0 even against a zero ΔW (absence wins)
    c = cosine_matrices([Adapter(factors={"x": zero}), Adapter(factors={"y": zero})])
    assert c["x"].tolist()[0][1] == 0.0 and c["x"].tolist()[1][1] == 0.0 and math.isnan(c["x"][0, 0])


def test_layers_parse_paths():
    assert layer_index("transformer.h.3.attn.c_attn") == 3
    assert layer_index("model.layers.11.self_attn.q_proj") == 11
    assert layer_index("layers.0.q") == 0 and layer_index("lm_head") is None
    assert layer_index("encoder.block2.proj") is None  # "block2" is not a numeric component
    assert module_kind("model.layers.11.self_attn.q_proj") == "self_attn.q_proj"
    assert module_kind("lm_head") == "lm_head"
    assert group_by_layer(["h.1.a", "h.0.b", "head", "h.0.a"]) == {0: ["h.0.a", "h.0.b"], 1: ["h.1.a"]}


def test_similarity_new_fields_against_dense():
    ads = _adapters()
    sim = similarity(ads)
    for (a, b), p in sim.pairs.items():
        union = sorted(set(ads[a].factors) | set(ads[b].factors))
        assert list(p.cosines) == union
        shared = [m for m in union if m in ads[a].factors and m in ads[b].factors]
        for m in union:
            if m not in shared:
                assert p.cosines[m] == 0.0 and p.column_overlap[m] == 0.0 and m not in p.norm_ratio
                continue
            fa, fb = ads[a].factors[m], ads[b].factors[m]
            da, db = _dense(fa), _dense(fb)
            assert p.cosines[m] == pytest.approx(_dcos(da, db), abs=1e-6)
            assert p.norm_ratio[m] == pytest.approx(np.linalg.norm(da) / np.linalg.norm(db), rel=1e-6)
            col = np.cos(subspace_angles(fa.B.double().numpy(), fb.B.double().numpy()))
            row = np.cos(subspace_angles(fa.A.double().numpy().T, fb.A.double().numpy().T))
            assert p.column_overlap[m] == pytest.approx(np.mean(col ** 2), abs=1e-6)
            assert p.row_overlap[m] == pytest.approx(np.mean(row ** 2), abs=1e-6)
            assert p.baseline_abs[m] == expected_abs_cosine(*fa.shape, fa.rank, fb.rank)
        expected_sq = [1 / (SHAPES[module_kind(m)][0] * 4) if m in shared else 0.0 for m in union]
        assert p.baseline_rms == pytest.approx(math.sqrt(np.mean(expected_sq)), rel=1e-12)
        for layer in range(3):
            vals = [p.cosines[m] for m in union if layer_index(m) == layer]
            assert p.layer_rms[layer] == pytest.approx(math.sqrt(np.mean(np.square(vals))), abs=1e-12)
    assert sim.pair("math", "fin").column_overlap[GPT2[0]] == pytest.approx(1.0, abs=1e-6)
    assert sim.layers == [0, 1, 2] and sim.shapes[GPT2[0]] == (9, 4) and sim.ranks["med"][GPT2[0]] == 3
    all_sq = [1 / (SHAPES[module_kind(m)][0] * 4) if m in ads[a].factors and m in ads[b].factors else 0.0
              for a, b in itertools.combinations(ads, 2) for m in GPT2]
    assert sim.combination_baseline_rms(list(ads)) == pytest.approx(math.sqrt(np.mean(all_sq)))
    d = json.loads(json.dumps(sim.to_dict()))
    assert d["layers"] == [0, 1, 2] and d["shapes"][GPT2[0]] == [9, 4]
    assert set(d["pairs"][0]) >= {"column_overlap", "row_overlap", "norm_ratio", "baseline_abs", "baseline_rms",
                                  "layer_rms"}


def test_csv_rows_and_file(tmp_path):
    sim = similarity(_adapters())
    path = write_similarity_csv(sim, tmp_path / "sim.csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == sum(len(p.cosines) for p in sim.pairs.values())
    for r in rows:
        p = sim.pair(r["a"], r["b"])
        assert float(r["cosine"]) == pytest.approx(p.cosines[r["module"]], rel=1e-9, abs=1e-12)
        assert int(r["layer"]) == layer_index(r["module"])
        if r["module"] in p.norm_ratio:
            assert float(r["norm_ratio"]) == pytest.approx(float(r["norm_a"]) / float(r["norm_b"]), rel=1e-8)
        else:
            assert r["norm_ratio"] == "" and r["column_overlap"] == "0"
    assert similarity_rows(sim)[0]["kind"] == module_kind(rows[0]["module"])
    with pytest.raises(OutputExistsError):
        write_similarity_csv(sim, path)


def test_heatmaps(tmp_path):
    import matplotlib.image

    sim = similarity(_adapters())
    labels, layers, values = layer_table(sim, ("med", "math"))
    assert labels == ["attn.c_attn", "mlp.c_fc"] and layers == [0, 1, 2]
    assert values[0][1] == sim.pair("math", "med").cosines["transformer.h.1.attn.c_attn"]
    assert values[1][2] == 0.0  # med lacks transformer.h.2.mlp.c_fc: cosine 0 by convention
    for png in (matrix_heatmap_png(sim), layer_heatmap_png(sim), layer_heatmap_png(sim, pair=("math", "fin"))):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert img.shape[0] > 100 and img.shape[1] > 100
    path = write_png(matrix_heatmap_png(sim), tmp_path / "m.png")
    with pytest.raises(OutputExistsError):
        write_png(b"x", path)
    flat = similarity({"x": Adapter(factors={"head": _factor(np.random.default_rng(3), GPT2[0], 2)}),
                       "y": Adapter(factors={"head": _factor(np.random.default_rng(4), GPT2[0], 2)})})
    with pytest.raises(ValueError, match="layer index"):
        layer_heatmap_png(flat)


def test_adapter_names_the_font_cannot_draw_give_no_warnings(recwarn):
    """Names in scripts DejaVu Sans lacks (CJK) are drawn as boxes, without one UserWarning per glyph on stderr."""
    ads = _adapters()
    sim = similarity({"日本": ads["math"], "中文 b": ads["fin"]})
    assert matrix_heatmap_png(sim).startswith(b"\x89PNG")
    assert not [w for w in recwarn if "missing from font" in str(w.message)]


def test_a_pair_sharing_no_module_is_compared_with_a_warning(caplog):
    """Cosine 0 everywhere is right for disjoint modules, but a likely sign of adapters of different models."""
    ads = _adapters()
    other = Adapter(factors={"model.layers.0.self_attn.q_proj": ads["math"].factors[GPT2[0]]})
    with caplog.at_level("WARNING", logger="lorasum"):
        sim = similarity({"gpt2ish": ads["math"], "llamaish": other})
    assert "gpt2ish and llamaish share no adapted module" in caplog.text
    assert sim.pairs[("gpt2ish", "llamaish")].rms == 0.0
    caplog.clear()
    with caplog.at_level("WARNING", logger="lorasum"):
        similarity({"math": ads["math"], "fin": ads["fin"]})
    assert "share no adapted module" not in caplog.text
