"""Factor-based Frobenius geometry against dense ΔW computed with numpy in float64."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from lorasum.adapters import Adapter, LoraFactor
from lorasum.errors import AdapterError
from lorasum.geometry import cosine, frobenius_inner, frobenius_norm, module_cosines, rms, similarity


def rand_factor(rng: np.random.Generator, r: int, d_out: int = 7, d_in: int = 11, scaling=None) -> LoraFactor:
    A = torch.from_numpy(rng.standard_normal((r, d_in))).float()
    B = torch.from_numpy(rng.standard_normal((d_out, r))).float()
    s = float(rng.uniform(0.1, 4.0)) if scaling is None else scaling
    return LoraFactor(A=A, B=B, scaling=s)


def dense(f: LoraFactor) -> np.ndarray:
    return f.scaling * (f.B.numpy().astype(np.float64) @ f.A.numpy().astype(np.float64))


def dense_cos(f1: LoraFactor, f2: LoraFactor) -> float:
    d1, d2 = dense(f1), dense(f2)
    return float(np.sum(d1 * d2) / (np.linalg.norm(d1) * np.linalg.norm(d2)))


@pytest.mark.parametrize("seed, r1, r2", [(0, 4, 4), (1, 3, 5), (2, 1, 8), (3, 8, 2)])
def test_inner_norm_cosine_match_dense(seed, r1, r2):
    rng = np.random.default_rng(seed)
    f1, f2 = rand_factor(rng, r1), rand_factor(rng, r2)
    d1, d2 = dense(f1), dense(f2)
    assert frobenius_inner(f1, f2) == pytest.approx(float(np.trace(d1.T @ d2)), rel=1e-6, abs=1e-9)
    assert frobenius_norm(f1) == pytest.approx(float(np.linalg.norm(d1, "fro")), rel=1e-6)
    assert cosine(f1, f2) == pytest.approx(dense_cos(f1, f2), abs=1e-6)
    assert cosine(f1, f1) == pytest.approx(1.0, abs=1e-6)


def test_correlated_updates_have_large_cosine():
    rng = np.random.default_rng(5)
    f1 = rand_factor(rng, 4)
    noise = rand_factor(rng, 4, scaling=1.0)
    f2 = LoraFactor(A=f1.A + 0.05 * noise.A, B=-(f1.B + 0.05 * noise.B), scaling=2.0)
    assert cosine(f1, f2) == pytest.approx(dense_cos(f1, f2), abs=1e-6)
    assert cosine(f1, f2) < -0.9


@pytest.mark.parametrize("seed", range(5))
def test_cosine_invariant_under_reparametrisation_and_positive_scaling(seed):
    rng = np.random.default_rng(100 + seed)
    f1, f2 = rand_factor(rng, 4), rand_factor(rng, 3)
    M = torch.from_numpy(rng.standard_normal((4, 4)) + 4 * np.eye(4))  # well conditioned
    g1 = LoraFactor(A=(torch.linalg.inv(M) @ f1.A.double()).float(), B=(f1.B.double() @ M).float(),
                    scaling=f1.scaling * 3.7)
    assert cosine(g1, f2) == pytest.approx(cosine(f1, f2), abs=1e-5)
    assert frobenius_norm(g1) == pytest.approx(3.7 * frobenius_norm(f1), rel=1e-5)
    flipped = LoraFactor(A=f1.A, B=f1.B, scaling=-f1.scaling)
    assert cosine(flipped, f2) == pytest.approx(-cosine(f1, f2), abs=1e-9)


def test_zero_update_has_an_undefined_cosine_and_shape_mismatch_is_refused():
    """A ΔW of zero norm has no direction: its cosine is NaN, not 0 (which would pass an untrained
    adapter off as perfectly orthogonal)."""
    rng = np.random.default_rng(7)
    f = rand_factor(rng, 2)
    zero = LoraFactor(A=torch.zeros(2, 11), B=torch.zeros(7, 2), scaling=1.0)
    half = LoraFactor(A=torch.randn(2, 11), B=torch.zeros(7, 2), scaling=3.0)  # B = 0 as PEFT initialises it
    assert frobenius_norm(zero) == 0.0 and frobenius_norm(half) == 0.0
    assert math.isnan(cosine(f, zero)) and math.isnan(cosine(zero, f)) and math.isnan(cosine(zero, zero))
    assert math.isnan(cosine(half, f))
    assert math.isnan(rms([0.5, math.nan]))
    with pytest.raises(AdapterError, match="shape"):
        frobenius_inner(f, rand_factor(rng, 2, d_out=8))
    with pytest.raises(AdapterError, match="shape"):
        cosine(zero, rand_factor(rng, 2, d_in=3))


def test_rms_matches_numpy():
    v = np.random.default_rng(3).standard_normal(17)
    assert rms(v.tolist()) == pytest.approx(float(np.sqrt(np.mean(np.square(v)))), rel=1e-12)
    assert rms([-2.0]) == 2.0
    with pytest.raises(ValueError):
        rms([])


MODULES = [f"layers.{i}.{k}" for i in range(2) for k in ("q", "v")]


def rand_adapter(rng, modules=MODULES, rank=3) -> Adapter:
    return Adapter(factors={m: rand_factor(rng, rank + i % 2) for i, m in enumerate(modules)})


def test_module_cosines_over_union():
    rng = np.random.default_rng(11)
    a = rand_adapter(rng)
    b = rand_adapter(rng, modules=MODULES[1:] + ["layers.9.k"])
    cos = module_cosines(a, b)
    assert list(cos) == sorted(set(MODULES) | {"layers.9.k"})
    assert cos[MODULES[0]] == 0.0 and cos["layers.9.k"] == 0.0
    for m in MODULES[1:]:
        assert cos[m] == pytest.approx(dense_cos(a.factors[m], b.factors[m]), abs=1e-6)
    # absent counts 0 (not updated), present with a zero ΔW is undefined
    b.factors[MODULES[1]] = LoraFactor(A=b.factors[MODULES[1]].A, B=torch.zeros_like(b.factors[MODULES[1]].B),
                                       scaling=1.0)
    cos = module_cosines(a, b)
    assert math.isnan(cos[MODULES[1]]) and cos[MODULES[0]] == 0.0


def test_similarity_against_dense():
    rng = np.random.default_rng(21)
    ads = {n: rand_adapter(rng) for n in ("math", "medicine", "finance")}
    # make two adapters partly aligned so that cosines are not all ~0
    ads["finance"] = Adapter(factors={m: LoraFactor(A=torch.cat([f.A, ads["math"].factors[m].A]),
                                                    B=torch.cat([f.B, ads["math"].factors[m].B], dim=1),
                                                    scaling=1.0)
                                      for m, f in ads["finance"].factors.items()})
    sim = similarity(ads)
    names = list(ads)
    dense_cos_by_pair = {(a, b): np.array([dense_cos(ads[a].factors[m], ads[b].factors[m]) for m in MODULES])
                         for a, b in itertools.combinations(names, 2)}
    for (a, b), c in dense_cos_by_pair.items():
        p = sim.pair(b, a)
        assert p.rms == pytest.approx(float(np.sqrt(np.mean(c**2))), abs=1e-6)
        assert p.mean_abs == pytest.approx(float(np.mean(np.abs(c))), abs=1e-6)
        assert p.max_abs == pytest.approx(float(np.max(np.abs(c))), abs=1e-6)
        i, j = names.index(a), names.index(b)
        assert sim.matrix[i][j] == sim.matrix[j][i] == p.rms
    assert sim.pair("math", "finance").rms > 0.3
    for i in range(3):
        assert sim.matrix[i][i] == pytest.approx(1.0, abs=1e-6)
    all_c = np.concatenate(list(dense_cos_by_pair.values()))
    assert sim.combination_rms(names) == pytest.approx(float(np.sqrt(np.mean(all_c**2))), abs=1e-6)
    assert sim.combination_rms(["medicine", "math"]) == pytest.approx(sim.pair("math", "medicine").rms)
    for n in names:
        for m in MODULES:
            assert sim.norms[n][m] == pytest.approx(float(np.linalg.norm(dense(ads[n].factors[m]))), rel=1e-6)
    with pytest.raises(ValueError):
        sim.combination_rms(["math"])
    d = json.loads(json.dumps(sim.to_dict()))
    assert d["names"] == names and len(d["pairs"]) == 3 and len(d["matrix"]) == 3
