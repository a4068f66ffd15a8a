"""Principal-angle subspace overlap against scipy.linalg.subspace_angles and constructed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from lorasum.adapters import Adapter, LoraFactor
from lorasum.errors import AdapterError
from lorasum.geometry import module_overlaps, orthonormal_basis, principal_cosines, subspace_overlap


def _t(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float64)).float()


@pytest.mark.parametrize("seed, r1, r2", [(0, 3, 3), (1, 2, 5), (2, 4, 1)])
def test_principal_cosines_and_overlap_match_scipy(seed, r1, r2):
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((12, 1))  # one common direction so that angles are not all ~random
    B1 = np.hstack([shared, rng.standard_normal((12, r1 - 1))]) if r1 > 1 else shared
    B2 = np.hstack([shared + 0.1 * rng.standard_normal((12, 1)), rng.standard_normal((12, r2 - 1))])
    A1, A2 = rng.standard_normal((r1, 9)), rng.standard_normal((r2, 9))
    f1, f2 = LoraFactor(A=_t(A1), B=_t(B1), scaling=2.0), LoraFactor(A=_t(A2), B=_t(B2), scaling=-1.0)
    o = subspace_overlap(f1, f2)
    col_cos = np.sort(np.cos(subspace_angles(B1, B2)))[::-1]
    row_cos = np.sort(np.cos(subspace_angles(A1.T, A2.T)))[::-1]
    np.testing.assert_allclose(o.column_cosines, col_cos, atol=1e-6)
    np.testing.assert_allclose(o.row_cosines, row_cos, atol=1e-6)
    assert o.column == pytest.approx(np.mean(col_cos ** 2), abs=1e-6)
    assert o.row == pytest.approx(np.mean(row_cos ** 2), abs=1e-6)
    assert o.column_cosines[0] > 0.9


def test_overlap_with_itself_is_one_and_with_complement_zero():
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    P, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    M1, M2 = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    f = LoraFactor(A=_t(M1 @ P[:, :3].T), B=_t(Q[:, :3] @ M2), scaling=1.0)
    same_span = LoraFactor(A=_t(rng.standard_normal((3, 3)) @ P[:, :3].T), B=_t(Q[:, :3] @ M1), scaling=5.0)
    complement = LoraFactor(A=_t(M2 @ P[:, 3:6].T), B=_t(Q[:, 3:6] @ M1), scaling=1.0)
    for g in (f, same_span):
        o = subspace_overlap(f, g)
        assert o.column == pytest.approx(1.0, abs=1e-6) and o.row == pytest.approx(1.0, abs=1e-6)
    o = subspace_overlap(f, complement)
    assert o.column == pytest.approx(0.0, abs=1e-6) and o.row == pytest.approx(0.0, abs=1e-6)


def test_rank_deficient_and_zero_factors():
    rng = np.random.default_rng(4)
    b = rng.standard_normal((7, 1))
    B = np.hstack([b, 2 * b, rng.standard_normal((7, 1))])  # rank 2
    assert orthonormal_basis(_t(B)).shape == (7, 2)
    assert orthonormal_basis(torch.zeros(7, 3)).shape == (7, 0)
    Q = orthonormal_basis(_t(B))
    torch.testing.assert_close(Q.T @ Q, torch.eye(2, dtype=torch.float64), atol=1e-10, rtol=0)
    # the span of [b, c] (rank 2) contains b: one principal cosine 1 (subspace containment → overlap 1)
    assert principal_cosines(Q, orthonormal_basis(_t(b))).tolist() == pytest.approx([1.0], abs=1e-6)
    zero = LoraFactor(A=torch.zeros(3, 5), B=torch.zeros(7, 3), scaling=1.0)
    some = LoraFactor(A=_t(rng.standard_normal((3, 5))), B=_t(B), scaling=1.0)
    o = subspace_overlap(zero, some)
    assert o.column == 0.0 and o.row == 0.0 and o.column_cosines == ()
    with pytest.raises(AdapterError, match="shape"):
        subspace_overlap(some, LoraFactor(A=torch.ones(1, 4), B=torch.ones(7, 1), scaling=1.0))


def test_module_overlaps_over_union():
    rng = np.random.default_rng(5)

    def fac():
        return LoraFactor(A=_t(rng.standard_normal((2, 6))), B=_t(rng.standard_normal((5, 2))), scaling=1.0)

    shared = fac()
    a = Adapter(factors={"l.0.q": shared, "l.0.k": fac()})
    b = Adapter(factors={"l.0.q": LoraFactor(A=shared.A * 3, B=-shared.B, scaling=1.0), "l.1.q": fac()})
    ov = module_overlaps(a, b)
    assert list(ov) == ["l.0.k", "l.0.q", "l.1.q"]
    assert ov["l.0.k"] == (0.0, 0.0) and ov["l.1.q"] == (0.0, 0.0)
    assert ov["l.0.q"] == pytest.approx((1.0, 1.0), abs=1e-6)
