"""Algebraic properties of the exact sum (hypothesis, small shapes, few examples)."""

from __future__ import annotations

import numpy as np
import torch
from compose_fixtures import dense_np
from hypothesis import given, settings
from hypothesis import strategies as st

from lorasum.adapters import Adapter, LoraFactor
from lorasum.compose import compose_sum, compose_svd

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
MODULES = ("h.0.q", "h.0.v", "h.1.q")


@st.composite
def adapter_sets(draw, n=3):
    """n adapters on random subsets of MODULES, shapes fixed per module, random ranks and scalings."""
    shapes = {m: (draw(st.integers(1, 6)), draw(st.integers(1, 6))) for m in MODULES}
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mods = draw(st.lists(st.sampled_from(MODULES), min_size=1, max_size=3, unique=True))
        factors = {}
        for m in mods:
            r = draw(st.integers(1, 3))
            s = draw(st.floats(-4, 4, allow_nan=False).filter(lambda x: abs(x) > 1e-3))
            factors[m] = LoraFactor(A=torch.randn(r, shapes[m][1], generator=g),
                                    B=torch.randn(shapes[m][0], r, generator=g), scaling=s)
        out.append(Adapter(factors=factors))
    return out, shapes


def _dense(adapter, shapes):
    return {m: dense_np(adapter, m, shapes[m]) for m in MODULES}


def _close(x, y, shapes):
    dx, dy = _dense(x, shapes), _dense(y, shapes)
    for m in MODULES:
        np.testing.assert_allclose(dx[m], dy[m], rtol=1e-5, atol=1e-4)


@SETTINGS
@given(adapter_sets(n=2), st.floats(-3, 3, allow_nan=False), st.floats(-3, 3, allow_nan=False))
def test_sum_is_commutative(data, w1, w2):
    (a, b), shapes = data
    _close(compose_sum([a, b], weights=[w1, w2]), compose_sum([b, a], weights=[w2, w1]), shapes)


@SETTINGS
@given(adapter_sets(n=3))
def test_sum_is_associative(data):
    (a, b, c), shapes = data
    flat = compose_sum([a, b, c])
    _close(compose_sum([compose_sum([a, b]), c]), flat, shapes)
    _close(compose_sum([a, compose_sum([b, c])]), flat, shapes)
    dense = {m: sum(dense_np(x, m, shapes[m]) for x in (a, b, c)) for m in MODULES}
    for m in MODULES:
        np.testing.assert_allclose(_dense(flat, shapes)[m], dense[m], rtol=1e-5, atol=1e-4)


@SETTINGS
@given(adapter_sets(n=1))
def test_zero_adapter_is_the_identity(data):
    (a,), shapes = data
    zero = Adapter(factors={m: LoraFactor(A=torch.randn(2, shapes[m][1]), B=torch.zeros(shapes[m][0], 2),
                                          scaling=3.0) for m in MODULES})
    _close(compose_sum([a, zero]), a, shapes)
    _close(compose_sum([zero, a]), a, shapes)


@SETTINGS
@given(adapter_sets(n=2))
def test_svd_at_full_rank_is_the_sum(data):
    srcs, shapes = data
    _close(compose_svd(srcs, rank=6), compose_sum(srcs), shapes)  # 6 ≥ Σ rᵢ
