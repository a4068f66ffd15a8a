"""Frobenius geometry of LoRA updates, computed from the low-rank factors.

For ΔW₁ = s₁B₁A₁ and ΔW₂ = s₂B₂A₂ (Aᵢ: (rᵢ, d_in), Bᵢ: (d_out, rᵢ)),

    ⟨ΔW₁, ΔW₂⟩_F = tr(ΔW₁ᵀ ΔW₂) = s₁s₂ tr(A₁ᵀ B₁ᵀ B₂ A₂)
                 = s₁s₂ tr((B₁ᵀB₂)(A₂A₁ᵀ))                 (cyclic property of the trace)
                 = s₁s₂ Σ_jk (B₁ᵀB₂)_jk (A₁A₂ᵀ)_jk,

so only the r₁×r₂ Gram products B₁ᵀB₂ and A₁A₂ᵀ are formed (cost O((d_in+d_out) r₁r₂)),
never the d_out×d_in matrix ΔW. Everything is computed in float64.

The cosine of two updates is ⟨ΔW₁,ΔW₂⟩_F / (‖ΔW₁‖_F ‖ΔW₂‖_F), the measure of adapter
orthogonality used in arXiv 2508.11985. It is invariant under any reparametrisation of
the factors that keeps ΔW (B → BM, A → M⁻¹A) and under positive rescaling. It is undefined
(NaN) when a ΔW has zero norm: a zero update says nothing about orthogonality, and reporting
0 would pass an untrained adapter off as perfectly orthogonal. A module *absent* from an
adapter is different: by the convention of the RMS over the union of modules it counts as
cosine 0 (:func:`module_cosines`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from lorasum.adapters import Adapter, LoraFactor
from lorasum.errors import AdapterError

__all__ = ["frobenius_inner", "frobenius_norm", "cosine", "module_cosines", "rms"]


def frobenius_inner(f1: LoraFactor, f2: LoraFactor) -> float:
    """⟨ΔW₁, ΔW₂⟩_F = s₁s₂ · tr((B₁ᵀB₂)(A₂A₁ᵀ)) from the factors, in float64.

    The ranks r₁, r₂ may differ. Derivation: module docstring (trace cyclic property).

    Raises:
        AdapterError: the two ΔW shapes (d_out, d_in) differ.
    """
    if f1.shape != f2.shape:
        raise AdapterError(f"cannot take the inner product of ΔW shapes {f1.shape} and {f2.shape}")
    bb = f1.B.double().T @ f2.B.double()  # (r1, r2)
    aa = f1.A.double() @ f2.A.double().T  # (r1, r2)
    return float(f1.scaling) * float(f2.scaling) * float((bb * aa).sum())


def frobenius_norm(f: LoraFactor) -> float:
    """‖ΔW‖_F = sqrt(⟨ΔW, ΔW⟩_F), from the factors in float64 (rounding below 0 is clamped to 0)."""
    return math.sqrt(max(frobenius_inner(f, f), 0.0))


def cosine(f1: LoraFactor, f2: LoraFactor) -> float:
    """Cosine similarity ⟨ΔW₁,ΔW₂⟩_F / (‖ΔW₁‖_F ‖ΔW₂‖_F), clamped to [-1, 1].

    If either ΔW has zero norm the cosine is undefined and returned as NaN (module docstring).

    Raises:
        AdapterError: the two ΔW shapes differ.
    """
    n1, n2 = frobenius_norm(f1), frobenius_norm(f2)
    if n1 == 0.0 or n2 == 0.0:
        if f1.shape != f2.shape:
            raise AdapterError(f"cannot compare ΔW shapes {f1.shape} and {f2.shape}")
        return math.nan
    return max(-1.0, min(1.0, frobenius_inner(f1, f2) / (n1 * n2)))


def module_cosines(a: Adapter, b: Adapter) -> dict[str, float]:
    """Per-module cosine of two adapters' ΔW over the union of their modules.

    A module present in only one adapter counts as cosine 0.0 (it is not updated in the other);
    a module present in both whose ΔW has zero norm in either gets NaN (see :func:`cosine`).

    Returns:
        module path → cosine, sorted by module path.

    Raises:
        AdapterError: a shared module's ΔW shape differs.
    """
    out: dict[str, float] = {}
    for module in sorted(set(a.factors) | set(b.factors)):
        fa, fb = a.factors.get(module), b.factors.get(module)
        out[module] = cosine(fa, fb) if fa is not None and fb is not None else 0.0
    return out


def rms(values: Iterable[float]) -> float:
    """Root mean square sqrt(mean(v²)) of ``values`` (NaN if any value is NaN).

    Raises:
        ValueError: ``values`` is empty.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("rms of no values")
    return math.sqrt(math.fsum(v * v for v in vals) / len(vals))
