"""TIES / DARE primitives against element-by-element loops in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorasum.compose.masks import (check_fraction, dare_keep_mask, dare_rescale, disjoint_mean, elect_sign,
                                   keep_count, top_magnitude_mask)
from lorasum.errors import ConfigError


def test_keep_count_floor_with_float_guard():
    assert keep_count(100, 0.29) == 29  # 0.29 * 100 = 28.999999999999996
    assert keep_count(7, 0.2) == 1 and keep_count(7, 1.0) == 7 and keep_count(3, 0.1) == 0
    assert keep_count(0, 0.5) == 0


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.95, 1.0])
def test_top_magnitude_mask_keeps_the_largest(density):
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((6, 7)))
    mask = top_magnitude_mask(x, density).numpy()
    flat = np.abs(x.numpy()).ravel()
    k = int(np.floor(density * flat.size + 1e-9))
    assert mask.sum() == k and mask.shape == (6, 7)
    order = np.argsort(-flat)
    expected = np.zeros(flat.size, dtype=bool)
    expected[order[:k]] = True
    np.testing.assert_array_equal(mask.ravel(), expected)


def test_elect_sign_and_disjoint_mean_match_loops():
    rng = np.random.default_rng(2)
    stack = rng.standard_normal((4, 5, 6)) * (rng.random((4, 5, 6)) > 0.4)  # some zeros
    stack[:, 0, 0] = [1.0, -1.0, 0.0, 0.0]  # mass exactly 0 → merged 0
    t = torch.from_numpy(stack)
    sign = elect_sign(t).numpy()
    merged = disjoint_mean(t, elect_sign(t)).numpy()
    for i in range(5):
        for j in range(6):
            vals = stack[:, i, j]
            s = np.sign(vals.sum())
            assert sign[i, j] == s
            agree = [v for v in vals if v != 0 and np.sign(v) == s and s != 0]
            assert merged[i, j] == pytest.approx(np.mean(agree) if agree else 0.0, abs=1e-12)
    assert merged[0, 0] == 0.0


def test_dare_mask_rate_rescale_and_determinism():
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((200, 100)))
    out = dare_rescale(x, 0.7, torch.Generator().manual_seed(5))
    again = dare_rescale(x, 0.7, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    keep = dare_keep_mask((200, 100), 0.7, torch.Generator().manual_seed(5))
    assert abs(keep.double().mean().item() - 0.3) < 0.01  # 20000 Bernoulli(0.3): sd 0.0032
    torch.testing.assert_close(out[keep], x[keep] / 0.3)
    assert torch.all(out[~keep] == 0)
    assert torch.equal(dare_rescale(x, 0.0, torch.Generator().manual_seed(0)), x)


def test_check_fraction():
    assert check_fraction("density", 1) == 1.0
    assert check_fraction("drop_prob", 0.0, allow_zero=True, allow_one=False) == 0.0
    for bad in (0.0, 1.5, -0.1, float("nan"), "x", None):
        with pytest.raises(ConfigError, match="density"):
            check_fraction("density", bad)
    with pytest.raises(ConfigError, match=r"drop_prob must lie in \[0, 1\)"):
        check_fraction("drop_prob", 1.0, allow_zero=True, allow_one=False)
