"""A ΔW of zero norm has an undefined cosine: NaN in the report (its summaries too), null in JSON; a module
absent from an adapter still counts 0. Adapters of different base models are refused."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from lorasum.adapters import Adapter, BaseModelRecord, LoraFactor
from lorasum.errors import AdapterError
from lorasum.geometry import matrix_heatmap_png, similarity
from lorasum.geometry.similarity import json_safe

MODULES = [f"h.{i}.{k}" for i in range(2) for k in ("q", "v")]


def _factor(rng, r=2, zero_b=False):
    A = torch.from_numpy(rng.standard_normal((r, 5))).float()
    B = torch.zeros(6, r) if zero_b else torch.from_numpy(rng.standard_normal((6, r))).float()
    return LoraFactor(A=A, B=B, scaling=1.5)


def _adapters():
    """x, y random on all modules; z with ΔW = 0 on h.0.q (B = 0) and without h.1.v."""
    rng = np.random.default_rng(3)
    x = Adapter(factors={m: _factor(rng) for m in MODULES})
    y = Adapter(factors={m: _factor(rng) for m in MODULES})
    z = Adapter(factors={m: _factor(rng, zero_b=(m == "h.0.q")) for m in MODULES[:-1]})
    return {"x": x, "y": y, "z": z}


def _dcos(f, g):
    a = f.scaling * (f.B.double() @ f.A.double())
    b = g.scaling * (g.B.double() @ g.A.double())
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_zero_delta_gives_nan_cosines_and_summaries_absent_module_gives_zero():
    ads = _adapters()
    sim = similarity(ads)
    xz = sim.pair("x", "z")
    assert math.isnan(xz.cosines["h.0.q"]) and xz.cosines["h.1.v"] == 0.0  # zero ΔW vs absent module
    assert xz.cosines["h.0.v"] == pytest.approx(_dcos(ads["x"].factors["h.0.v"], ads["z"].factors["h.0.v"]), abs=1e-9)
    assert xz.undefined == ["h.0.q"]
    assert math.isnan(xz.rms) and math.isnan(xz.mean_abs) and math.isnan(xz.max_abs)
    assert math.isnan(xz.layer_rms[0]) and not math.isnan(xz.layer_rms[1])  # only layer 0 holds the zero ΔW
    assert math.isinf(sim.pair("x", "z").norm_ratio["h.0.q"])  # ‖ΔW_x‖ / 0
    # the pair without the zero ΔW is untouched: its RMS is that of the dense cosines
    xy = sim.pair("x", "y")
    want = math.sqrt(np.mean([_dcos(ads["x"].factors[m], ads["y"].factors[m]) ** 2 for m in MODULES]))
    assert xy.rms == pytest.approx(want, rel=1e-9) and xy.undefined == []
    names = list(sim.names)
    assert math.isnan(sim.matrix[names.index("z")][names.index("z")])
    assert sim.matrix[names.index("x")][names.index("x")] == 1.0
    assert math.isnan(sim.combination_rms(["x", "y", "z"])) and not math.isnan(sim.combination_rms(["x", "y"]))


def test_max_abs_is_nan_whatever_the_module_order():
    """Python's max() ignores a NaN that is not first; the summary must not."""
    rng = np.random.default_rng(5)
    for zero in MODULES:
        x = Adapter(factors={m: _factor(rng) for m in MODULES})
        z = Adapter(factors={m: _factor(rng, zero_b=(m == zero)) for m in MODULES})
        p = similarity({"x": x, "z": z}).pair("x", "z")
        assert math.isnan(p.max_abs) and math.isnan(p.rms) and math.isnan(p.mean_abs), zero


def test_json_has_null_never_nan_or_infinity():
    sim = similarity(_adapters())
    text = json.dumps(sim.to_dict(), allow_nan=False)  # raises on any NaN/inf left

    def refuse(token):
        raise AssertionError(token)

    d = json.loads(text, parse_constant=refuse)
    xz = next(p for p in d["pairs"] if (p["a"], p["b"]) == ("x", "z"))
    assert xz["rms"] is None and xz["cosines"]["h.0.q"] is None and xz["cosines"]["h.1.v"] == 0.0
    assert xz["norm_ratio"]["h.0.q"] is None and isinstance(xz["cosines"]["h.0.v"], float)
    assert xz["layer_rms"]["0"] is None and isinstance(xz["layer_rms"]["1"], float)
    assert d["matrix"][2][2] is None and d["matrix"][0][0] == 1.0
    assert json_safe({"a": [1.0, math.nan, (math.inf, 2)], "b": -math.inf, "c": "nan"}) == \
        {"a": [1.0, None, [None, 2]], "b": None, "c": "nan"}


def test_heatmap_with_undefined_cells_is_drawn():
    assert matrix_heatmap_png(similarity(_adapters())).startswith(b"\x89PNG")


def test_similarity_refuses_adapters_of_different_base_models(caplog):
    a, b = _adapters()["x"], _adapters()["y"]
    a.base_record = BaseModelRecord(source="/m/tiny", arch="gpt2", config_hash="1" * 64)
    b.base_record = BaseModelRecord(source="/m/tiny", arch="llama", config_hash="1" * 64)
    with pytest.raises(AdapterError, match="different base models"):
        similarity({"a": a, "b": b})
    b.base_record = BaseModelRecord(source="/m/copy", arch="gpt2", config_hash="1" * 64)
    with caplog.at_level(logging.WARNING, logger="lorasum"):
        sim = similarity({"a": a, "b": b})
    assert len(caplog.records) == 1 and "same config" in caplog.records[0].getMessage()
    assert not math.isnan(sim.pair("a", "b").rms)
    with pytest.raises(AdapterError, match="different base models"):
        similarity({"a": Adapter(factors=a.factors, base_model="gpt2"), "b": Adapter(factors=b.factors,
                                                                                     base_model="gpt2-xl")})
