"""All pairwise Frobenius inner products and cosines of N adapters' ΔW at once, from the factors.

For one module with factors (sᵢ, Bᵢ, Aᵢ), i = 1..N, stack B = [s₁B₁ | … | s_N B_N]
(d_out, R) and A = [A₁; …; A_N] (R, d_in), R = Σ rᵢ. Then

    ⟨ΔWᵢ, ΔWⱼ⟩_F = Σ_{k∈blockᵢ, l∈blockⱼ} (BᵀB)_kl (AAᵀ)_kl            (see lorasum.geometry.inner)

so G = (BᵀB) ∘ (AAᵀ) (R×R, ∘ = elementwise) summed over blocks, E G Eᵀ with the N×R block
indicator E, gives the whole N×N Gram matrix from two (R×R) products: O((d_out + d_in) R²)
per module instead of N² separate products or N dense d_out×d_in matrices. Modules with the
same shape and the same adapters/ranks are batched (one ``bmm`` per group). float64.
"""

from __future__ import annotations

import torch

from lorasum.adapters import Adapter, LoraFactor
from lorasum.errors import AdapterError

__all__ = ["inner_matrix", "inner_matrices", "cosine_from_gram", "cosine_matrices"]

_Key = tuple[tuple[int, int], tuple[tuple[int, int], ...]]


def _groups(columns: dict[str, list[LoraFactor | None]], labels: list[str] | None = None) -> dict[_Key, list[str]]:
    """Group modules by (ΔW shape, ((adapter index, rank), …) of the adapters that have them). ``labels``:
    each adapter's name for the error message (default: its position)."""
    groups: dict[_Key, list[str]] = {}
    for m, fs in columns.items():
        shapes = sorted({f.shape for f in fs if f is not None})
        if len(shapes) > 1:
            names = labels or [f"adapter {i + 1}" for i in range(len(fs))]
            which = ", ".join(f"{names[i]} {tuple(f.shape)}" for i, f in enumerate(fs) if f is not None)
            raise AdapterError(f"module {m}: the adapters' ΔW shapes differ ({which}): adapters of different "
                               "base models?")
        present = tuple((i, f.rank) for i, f in enumerate(fs) if f is not None)
        if present:
            groups.setdefault((shapes[0], present), []).append(m)
    return groups


def _group_gram(columns: dict[str, list[LoraFactor | None]], mods: list[str],
                present: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """(M, P, P) Gram matrices of the P present adapters on the M modules ``mods``.

    The factors are concatenated once into B (M, d_out, R) and A (M, R, d_in), float64; the
    scalings multiply the P×P result (⟨sᵢΔᵢ, sⱼΔⱼ⟩ = sᵢsⱼ⟨Δᵢ, Δⱼ⟩)."""
    cols = [[columns[m][i] for m in mods] for i, _ in present]
    B = torch.cat([torch.stack([f.B for f in fs]) for fs in cols], dim=2).double()
    A = torch.cat([torch.stack([f.A for f in fs]) for fs in cols], dim=1).double()
    G = (B.transpose(1, 2) @ B) * (A @ A.transpose(1, 2))  # (M, R, R)
    E = torch.block_diag(*[torch.ones(1, r, dtype=torch.float64) for _, r in present])  # (P, R)
    s = torch.tensor([[f.scaling for f in fs] for fs in cols], dtype=torch.float64).T  # (M, P)
    return (E @ G @ E.T) * (s[:, :, None] * s[:, None, :])


def _inner(columns: dict[str, list[LoraFactor | None]], n: int,
           labels: list[str] | None = None) -> dict[str, torch.Tensor]:
    out = {m: torch.zeros((n, n), dtype=torch.float64) for m in columns}
    for (_, present), mods in _groups(columns, labels).items():
        gram = _group_gram(columns, mods, present)
        if len(present) < n:
            idx = torch.tensor([i for i, _ in present])
            full = torch.zeros((len(mods), n, n), dtype=torch.float64)
            full[:, idx[:, None], idx[None, :]] = gram
            gram = full
        out.update(zip(mods, gram.unbind(0)))
    return out


def inner_matrix(factors: list[LoraFactor | None]) -> torch.Tensor:
    """N×N float64 matrix of ⟨ΔWᵢ, ΔWⱼ⟩_F; a missing factor (None) is ΔW = 0 (zero row and column).

    Raises:
        AdapterError: two factors' ΔW shapes (d_out, d_in) differ.
    """
    return _inner({"": list(factors)}, len(factors))[""]


def inner_matrices(adapters: list[Adapter]) -> dict[str, torch.Tensor]:
    """module path → N×N float64 matrix of ⟨ΔWᵢ, ΔWⱼ⟩_F over the union of modules (sorted);
    rows/columns of adapters lacking the module are 0.

    Raises:
        AdapterError: a module's ΔW shape differs between adapters.
    """
    modules = sorted({m for a in adapters for m in a.factors})
    labels = [str(a.path) if a.path is not None else f"adapter {i + 1}" for i, a in enumerate(adapters)]
    return _inner({m: [a.factors.get(m) for a in adapters] for m in modules}, len(adapters), labels)


def cosine_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """Cosines Gᵢⱼ / sqrt(Gᵢᵢ Gⱼⱼ), clamped to [-1, 1]; NaN in the rows and columns of a ΔW of
    zero norm (undefined, as :func:`lorasum.geometry.cosine`), and the diagonal exactly 1 for
    non-zero ΔW. ``gram`` is (N, N) or batched (..., N, N)."""
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp(min=0.0).sqrt()
    denom = norms[..., :, None] * norms[..., None, :]
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    cos = torch.where(denom > 0, gram / safe, torch.full_like(gram, float("nan"))).clamp(-1.0, 1.0)
    cos.diagonal(dim1=-2, dim2=-1).copy_(torch.where(norms > 0, 1.0, float("nan")).to(cos.dtype))
    return cos


def cosine_matrices(adapters: list[Adapter]) -> dict[str, torch.Tensor]:
    """module path → N×N cosine matrix of the adapters' ΔW, over the union of modules (sorted).

    Entries involving an adapter that lacks the module are 0 (it is not updated there: the
    convention of :func:`lorasum.geometry.module_cosines`); the other entries involving a ΔW of
    zero norm are NaN (undefined).

    Raises:
        AdapterError: a module's ΔW shape differs between adapters.
    """
    grams = inner_matrices(adapters)
    if not grams:
        return {}
    cos = cosine_from_gram(torch.stack(list(grams.values())))
    absent = torch.tensor([[m not in a.factors for a in adapters] for m in grams])  # (M, N)
    cos = cos.masked_fill(absent[:, :, None] | absent[:, None, :], 0.0)
    return dict(zip(grams, cos.unbind(0)))
