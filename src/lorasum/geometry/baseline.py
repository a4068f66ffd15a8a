"""What cosine similarity two *unrelated* LoRA updates have: the random baseline.

Null model: ΔW₁ = B₁A₁ and ΔW₂ = B₂A₂ independent, with i.i.d. N(0, 1) factor entries
(Bᵢ: (d_out, rᵢ), Aᵢ: (rᵢ, d_in)); scalings do not change cosines.

Exact second moment. ΔW₂'s law is invariant under ΔW₂ → U ΔW₂ Vᵀ for independent Haar
orthogonal U (d_out×d_out), V (d_in×d_in). Writing unit-norm SVDs ΔŴ₁ = Σᵢ σᵢ uᵢvᵢᵀ,
ΔŴ₂ = Σⱼ τⱼ pⱼqⱼᵀ, cos = Σᵢⱼ σᵢτⱼ Oᵢⱼ Pᵢⱼ with Oᵢⱼ = uᵢᵀUpⱼ, Pᵢⱼ = vᵢᵀVqⱼ entries of Haar
matrices, whose second moments are E[Oᵢⱼ Oₖₗ] = δᵢₖδⱼₗ/d_out. Hence

    E[cos²] = Σᵢⱼ σᵢ²τⱼ² / (d_out d_in) = 1 / (d_out · d_in)       exactly, for any ranks r₁, r₂,

the same as for two full-rank Gaussian matrices; so the expected squared RMS cosine over a
set of modules is the mean of 1/(d_out d_in) (:func:`expected_rms_cosine`).

Mean |cos| (approximation). For r ≪ d, Oᵢⱼ ≈ gᵢⱼ/√d_out, Pᵢⱼ ≈ hᵢⱼ/√d_in with independent
standard normals, and a Gaussian product's normalised singular values are ≈ 1/√r
(Marchenko–Pastur with aspect ratio r/d → 0). Conditioning on h, cos is then Gaussian with
variance Σᵢⱼ hᵢⱼ²/(r₁r₂ d_out d_in), so

    E|cos| ≈ sqrt(2/π) · E[χ_{r₁r₂}] / sqrt(r₁ r₂ d_out d_in),
    E[χ_k] = √2 Γ((k+1)/2) / Γ(k/2),

which runs from (2/π)/√(d_out d_in) at r = 1 to sqrt(2/π)/√(d_out d_in) (the full-rank
Gaussian value) as r grows. Against :func:`monte_carlo_cosine` with 20 000 samples it is
within 1.3 % (≈ 2 standard errors) for (d_out, d_in, r₁, r₂) from (6, 5, 4, 4) to (768, 768, 4, 4).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from scipy.special import gammaln

__all__ = ["expected_cos2", "expected_abs_cosine", "expected_abs_cosine_dense", "expected_rms_cosine",
           "monte_carlo_cosine", "MC_SAMPLES"]

MC_SAMPLES = 2000
"""Default Monte Carlo sample size: |cos| has a coefficient of variation of about 0.8 under the
null model, so 2000 samples give a standard error of about 1.8 % of E|cos|."""


def _check_dims(*dims: int) -> None:
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"dimensions and ranks must be positive integers, got {dims}")


def expected_cos2(d_out: int, d_in: int) -> float:
    """E[cos²(ΔW₁, ΔW₂)] = 1/(d_out·d_in) for independent Gaussian-factor LoRA updates of
    any ranks (exact; derivation in the module docstring).

    Raises:
        ValueError: a dimension is not a positive integer.
    """
    _check_dims(d_out, d_in)
    return 1.0 / (d_out * d_in)


def expected_abs_cosine(d_out: int, d_in: int, r1: int, r2: int | None = None) -> float:
    """E|cos(ΔW₁, ΔW₂)| ≈ sqrt(2/π)·E[χ_{r₁r₂}]/sqrt(r₁r₂·d_out·d_in) for independent
    Gaussian-factor updates of ranks r₁, r₂ (default r₂ = r₁); approximation, see module docstring.

    Raises:
        ValueError: a dimension or rank is not a positive integer.
    """
    r2 = r1 if r2 is None else r2
    _check_dims(d_out, d_in, r1, r2)
    k = r1 * r2
    mean_chi = math.sqrt(2.0) * math.exp(gammaln((k + 1) / 2) - gammaln(k / 2))
    return math.sqrt(2.0 / math.pi) * mean_chi / math.sqrt(k * d_out * d_in)


def expected_abs_cosine_dense(d_out: int, d_in: int) -> float:
    """E|cos| of two independent full-rank Gaussian (d_out, d_in) matrices (exact): for
    D = d_out·d_in, Γ(D/2) / (√π Γ((D+1)/2)) ≈ sqrt(2/(πD)).

    Raises:
        ValueError: a dimension is not a positive integer.
    """
    _check_dims(d_out, d_in)
    D = d_out * d_in
    return math.exp(gammaln(D / 2) - gammaln((D + 1) / 2)) / math.sqrt(math.pi)


def expected_rms_cosine(shapes: Iterable[tuple[int, int] | None]) -> float:
    """Expected RMS cosine sqrt(mean over modules of E[cos²]) under the null model: exact in the
    squared sense (E[RMS²] = mean of 1/(d_out d_in)). A ``None`` shape is a module that only one
    adapter has (cosine 0 by convention, contributing 0).

    Raises:
        ValueError: no shapes, or a bad dimension.
    """
    vals = [0.0 if s is None else expected_cos2(*s) for s in shapes]
    if not vals:
        raise ValueError("expected_rms_cosine of no modules")
    return math.sqrt(math.fsum(vals) / len(vals))


def monte_carlo_cosine(d_out: int, d_in: int, r1: int, r2: int | None = None, *,
                       samples: int = MC_SAMPLES, seed: int = 0, batch: int = 500) -> dict[str, float]:
    """Seeded Monte Carlo of the null model: draw ``samples`` independent pairs of Gaussian
    factors (torch.Generator seeded with ``seed``, float64) and compute cos from the factors.

    Returns:
        {"mean_abs": mean |cos|, "se_abs": its standard error, "mean_sq": mean cos²,
        "se_sq": its standard error, "samples": samples}.

    Raises:
        ValueError: a dimension, rank or ``samples`` is not a positive integer.
    """
    r2 = r1 if r2 is None else r2
    _check_dims(d_out, d_in, r1, r2, samples, batch)
    gen = torch.Generator().manual_seed(seed)
    cos = []
    for start in range(0, samples, batch):
        s = min(batch, samples - start)
        f = [torch.randn(shape, generator=gen, dtype=torch.float64)
             for shape in ((s, d_out, r1), (s, r1, d_in), (s, d_out, r2), (s, r2, d_in))]
        B1, A1, B2, A2 = f

        def inner(b, a, c, d):
            return ((b.transpose(1, 2) @ c) * (a @ d.transpose(1, 2))).sum(dim=(1, 2))

        cos.append(inner(B1, A1, B2, A2) / (inner(B1, A1, B1, A1) * inner(B2, A2, B2, A2)).sqrt())
    c = torch.cat(cos)
    a, q = c.abs(), c * c
    n = float(samples)
    return {"mean_abs": float(a.mean()), "se_abs": float(a.std()) / math.sqrt(n) if samples > 1 else math.nan,
            "mean_sq": float(q.mean()), "se_sq": float(q.std()) / math.sqrt(n) if samples > 1 else math.nan,
            "samples": samples}
