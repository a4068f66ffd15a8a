"""Subspace overlap of two LoRA updates: principal angles between their factor spaces.

ΔW = s·B·A maps inputs through the row space of A (in R^{d_in}) to the column space of B
(in R^{d_out}). For two updates, the principal angles θ₁ ≤ θ₂ ≤ … between the column spaces
of B₁ and B₂ (and between the row spaces of A₁ and A₂) are obtained by orthonormalising
each basis (Q₁, Q₂) and taking the singular values of Q₁ᵀQ₂, which are cos θₖ
(Björck & Golub 1973, Math. Comp. 27:579, "Numerical methods for computing angles between
linear subspaces"). The summary per module is the mean squared cosine

    overlap = Σₖ cos²θₖ / min(r₁, r₂) = ‖Q₁ᵀQ₂‖_F² / min(r₁, r₂) ∈ [0, 1],

1 when one subspace contains the other, 0 when they are orthogonal (cf. the normalised
subspace similarity of Hu et al. 2021, arXiv 2106.09685, §7.2). Ranks r are numerical ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorasum.adapters import Adapter, LoraFactor
from lorasum.errors import AdapterError

__all__ = ["orthonormal_basis", "principal_cosines", "overlap", "SubspaceOverlap", "subspace_overlap",
           "module_overlaps"]


def orthonormal_basis(X: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (n, r') of the column space of X (n, r), float64.

    Thin QR (Householder); if R's diagonal shows numerical rank deficiency
    (|R_kk| ≤ max(n, r)·ε·max|R_kk|) the basis is taken instead from the left singular
    vectors with σ above that tolerance, so r' is the numerical rank (0 for X = 0).
    """
    X = X.double()
    if X.numel() == 0:
        return X.new_zeros((X.shape[0], 0))
    q, r = torch.linalg.qr(X)
    d = r.diagonal().abs()
    eps = torch.finfo(torch.float64).eps * max(X.shape)
    if d.numel() and float(d.max()) > 0 and bool((d > eps * d.max()).all()):
        return q
    u, s, _ = torch.linalg.svd(X, full_matrices=False)
    if not s.numel() or float(s[0]) == 0.0:
        return X.new_zeros((X.shape[0], 0))
    return u[:, s > eps * s[0]]


def principal_cosines(Q1: torch.Tensor, Q2: torch.Tensor) -> torch.Tensor:
    """cos θₖ, descending, of the principal angles between the spans of orthonormal Q1 (n, r₁)
    and Q2 (n, r₂): singular values of Q1ᵀQ2 clamped to [0, 1]; min(r₁, r₂) values."""
    if Q1.shape[1] == 0 or Q2.shape[1] == 0:
        return Q1.new_zeros(0)
    return torch.linalg.svdvals(Q1.T @ Q2).clamp(0.0, 1.0)


def overlap(Q1: torch.Tensor, Q2: torch.Tensor) -> float:
    """‖Q1ᵀQ2‖_F² / min(r₁, r₂) (mean cos² of the principal angles); 0.0 if either span is {0}."""
    k = min(Q1.shape[1], Q2.shape[1])
    return float(((Q1.T @ Q2) ** 2).sum()) / k if k else 0.0


@dataclass(frozen=True)
class SubspaceOverlap:
    """Overlap of two LoRA factors on one module.

    Attributes:
        column: mean cos² of the principal angles between col(B₁) and col(B₂) (output space).
        row: mean cos² of the principal angles between row(A₁) and row(A₂) (input space).
        column_cosines, row_cosines: the cos θₖ, descending.
    """

    column: float
    row: float
    column_cosines: tuple[float, ...]
    row_cosines: tuple[float, ...]


def subspace_overlap(f1: LoraFactor, f2: LoraFactor) -> SubspaceOverlap:
    """Principal-angle overlap of the column spaces of B and the row spaces of A of two factors.

    Raises:
        AdapterError: the ΔW shapes (d_out, d_in) differ.
    """
    if f1.shape != f2.shape:
        raise AdapterError(f"cannot compare subspaces of ΔW shapes {f1.shape} and {f2.shape}")
    qb1, qb2 = orthonormal_basis(f1.B), orthonormal_basis(f2.B)
    qa1, qa2 = orthonormal_basis(f1.A.T), orthonormal_basis(f2.A.T)
    return SubspaceOverlap(column=overlap(qb1, qb2), row=overlap(qa1, qa2),
                           column_cosines=tuple(principal_cosines(qb1, qb2).tolist()),
                           row_cosines=tuple(principal_cosines(qa1, qa2).tolist()))


def module_overlaps(a: Adapter, b: Adapter) -> dict[str, tuple[float, float]]:
    """module → (column overlap, row overlap) over the union of modules; (0.0, 0.0) where a
    module is in only one adapter.

    Raises:
        AdapterError: a shared module's ΔW shape differs.
    """
    out = {}
    for m in sorted(set(a.factors) | set(b.factors)):
        if m in a.factors and m in b.factors:
            o = subspace_overlap(a.factors[m], b.factors[m])
            out[m] = (o.column, o.row)
        else:
            out[m] = (0.0, 0.0)
    return out
