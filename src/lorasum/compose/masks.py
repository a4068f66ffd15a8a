"""Pure tensor primitives of the sparsifying merge methods (TIES, DARE, magnitude pruning).

Every function takes and returns tensors without touching adapters, so each step can be
tested alone. ``stack`` arguments are (N, d_out, d_in) (any trailing shape works): one
task vector (weighted ΔWᵢ) per adapter.

Sources: TIES-Merging, Yadav et al. 2023, arXiv 2306.01708, §3 (trim, elect sign,
disjoint merge); DARE, Yu et al. 2024, arXiv 2311.03099, eq. 2 (drop and rescale).
"""

from __future__ import annotations

import math

import torch

from lorasum.errors import ConfigError

__all__ = ["check_fraction", "keep_count", "top_magnitude_mask", "elect_sign", "disjoint_mean",
           "dare_keep_mask", "dare_rescale"]


def check_fraction(name: str, value: float, *, allow_zero: bool = False, allow_one: bool = True) -> float:
    """Validate a fraction parameter (``density``, ``drop_prob``) and return it as a float.

    Raises:
        ConfigError: ``value`` is not a finite number in (0, 1] (or [0, 1] / [0, 1) as the flags say).
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    lo_ok = v >= 0.0 if allow_zero else v > 0.0
    hi_ok = v <= 1.0 if allow_one else v < 1.0
    if not (math.isfinite(v) and lo_ok and hi_ok):
        lo, hi = "[0" if allow_zero else "(0", "1]" if allow_one else "1)"
        raise ConfigError(f"{name} must lie in {lo}, {hi}, got {value!r}")
    return v


def keep_count(n: int, density: float) -> int:
    """Number of entries kept out of ``n`` at ``density``: ⌊density·n⌋ (a 1e-9 guard absorbs
    float error such as 0.29·100 = 28.999…), as in TIES's reference code (``int(d * K)``)."""
    return max(0, min(n, math.floor(density * n + 1e-9)))


def top_magnitude_mask(x: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask (shape of ``x``) of the ``keep_count(x.numel(), density)`` entries of largest |x|.

    Exactly that many entries are True; ties in |x| are broken by :func:`torch.topk`.
    TIES "trim" step (Yadav et al. 2023, §3, step 1) and magnitude pruning.
    """
    flat = x.reshape(-1)
    k = keep_count(flat.numel(), density)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=x.device)
    if k:
        mask[torch.topk(flat.abs(), k, sorted=False).indices] = True
    return mask.reshape(x.shape)


def elect_sign(stack: torch.Tensor) -> torch.Tensor:
    """Elected sign γ = sign(Σᵢ τᵢ) per entry, in {-1, 0, +1}, shape ``stack.shape[1:]``.

    TIES "elect" step (Yadav et al. 2023, §3, step 2): the sign with the larger total
    magnitude ("mass"). An entry whose values sum to exactly 0 gets sign 0 (and merges to 0).
    """
    return torch.sign(stack.sum(dim=0))


def disjoint_mean(stack: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Mean over i of τᵢ restricted to the entries where sign(τᵢ) = γ ≠ 0; 0 where no τᵢ agrees.

    TIES "disjoint merge" (Yadav et al. 2023, §3, step 3): τ_m = (1/|Aᵖ|) Σ_{i∈Aᵖ} τᵢᵖ,
    Aᵖ = {i : sign(τᵢᵖ) = γᵖ}. Zero entries (trimmed or dropped) never count.

    Args:
        stack: (N, ...) task vectors.
        sign: (...) elected signs.
    """
    agree = (torch.sign(stack) == sign.unsqueeze(0)) & (sign.unsqueeze(0) != 0)
    total = torch.where(agree, stack, torch.zeros_like(stack)).sum(dim=0)
    count = agree.sum(dim=0)
    return total / count.clamp(min=1).to(stack.dtype)


def dare_keep_mask(shape: tuple[int, ...], drop_prob: float, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli keep mask: entry kept iff U ≥ p with U ~ Uniform[0, 1) drawn as
    ``torch.rand(shape, generator=generator, dtype=torch.float64)`` (so P(keep) = 1 − p).

    DARE "drop" (Yu et al. 2024, eq. 2, m ~ Bernoulli(p)). Draws ``prod(shape)`` numbers
    from ``generator``.
    """
    return torch.rand(shape, generator=generator, dtype=torch.float64) >= drop_prob


def dare_rescale(x: torch.Tensor, drop_prob: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: zero each entry with probability p and multiply survivors by 1/(1 − p), so that
    E[result] = x (Yu et al. 2024, eq. 2). Uses :func:`dare_keep_mask` on ``x.shape``.

    Raises:
        ConfigError: p is not in [0, 1).
    """
    p = check_fraction("drop_prob", drop_prob, allow_zero=True, allow_one=False)
    keep = dare_keep_mask(tuple(x.shape), p, generator)
    return torch.where(keep, x / (1.0 - p), torch.zeros_like(x))
