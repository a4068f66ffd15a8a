"""Weighted sum of LoRA adapters re-compressed to rank k by a truncated SVD, without dense ΔW.

The exact sum is a LoRA B·A with B (d_out, R), A (R, d_in), R = Σᵢ rᵢ
(:func:`lorasum.compose.compose_sum`). With thin QR factorisations B = Q_B R_B and
Aᵀ = Q_A R_A,

    ΔW = Q_B (R_B R_Aᵀ) Q_Aᵀ,   R_B R_Aᵀ = U Σ Vᵀ (SVD of an R×R core),

so ΔW = (Q_B U) Σ (Q_A V)ᵀ is an SVD of ΔW computed in O((d_out + d_in) R²) time. By the
Eckart–Young–Mirsky theorem (Eckart & Young 1936, Psychometrika 1:211) keeping the k
largest singular values gives the best rank-k approximation in Frobenius norm, with
‖ΔW − ΔW_k‖_F² = Σ_{i>k} σᵢ². This is what PEFT's ``add_weighted_adapter(...,
combination_type="svd")`` computes from the dense ΔW. The result is split evenly,
B_k = Q_B U_k Σ_k^½, A_k = Σ_k^½ V_kᵀ Q_Aᵀ, with scaling 1; k ≥ R reproduces the sum exactly.

Singular values at rounding level are dropped even when k would keep them:
σᵢ ≤ tol = max(d_out, d_in) · ε · ‖B‖_F ‖A‖_F, with ε the float64 machine epsilon (the
tolerance of ``numpy.linalg.matrix_rank``, scaled by ‖B‖_F ‖A‖_F ≥ σ₁, the size of the
products that form ΔW, so that a sum that cancels, ``a − a``, is 0 and not σ₁-relative
noise). They are float64 rounding of a sum whose rank is below R (``a + a``, or sources
that share directions), and their singular vectors are arbitrary directions, not part of
ΔW. So the result's rank is min(k, numerical rank of ΔW); a ΔW that is zero to rounding is
written as one zero direction, so that the module is still saved. A k above a module's summed
rank Σᵢ rᵢ is capped there (the module keeps its exact sum): :func:`compose_svd_report` logs
one warning on the ``lorasum`` logger, with the largest such Σᵢ rᵢ. The weighted factors are
formed in float64 from the sources (not from :func:`compose_sum`'s float32 factors), so
that the weights add no float32 rounding either.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch

from lorasum.adapters import Adapter, LoraFactor
from lorasum.compose.registry import compose_method
from lorasum.compose.sum import _check_weights, check_compatible
from lorasum.errors import ConfigError

log = logging.getLogger("lorasum")

__all__ = ["SvdModuleReport", "svd_truncate", "rounding_tolerance", "compose_svd", "compose_svd_report"]


@dataclass(frozen=True)
class SvdModuleReport:
    """Truncation of one module.

    Attributes:
        rank_in: rank Σᵢ rᵢ of the exact sum's factors.
        rank: number of singular values kept: the requested k, or fewer when ΔW has fewer
            above ``tolerance`` (0 when ΔW is zero to rounding; the factor then has one zero
            direction).
        rel_error: ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F = sqrt(Σ_{i>rank} σᵢ² / Σ σᵢ²) (0 when ΔW is zero
            to rounding).
        energy: retained energy Σ_{i≤rank} σᵢ² / Σ σᵢ² (1 when ΔW is zero to rounding).
        singular_values: all σᵢ of ΔW, descending (also those dropped).
        tolerance: max(d_out, d_in) · ε · ‖B‖_F ‖A‖_F; singular values not above it are
            rounding and are never kept (module docstring).
    """

    rank_in: int
    rank: int
    rel_error: float
    energy: float
    singular_values: tuple[float, ...]
    tolerance: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self) | {"singular_values": list(self.singular_values)}


def rounding_tolerance(B: torch.Tensor, A: torch.Tensor) -> float:
    """max(d_out, d_in) · ε · ‖B‖_F ‖A‖_F (float64 ε) for ΔW = B·A, B (d_out, R), A (R, d_in):
    singular values of ΔW not above it are rounding (module docstring)."""
    scale = float(torch.linalg.matrix_norm(B.double())) * float(torch.linalg.matrix_norm(A.double()))
    return max(int(B.shape[0]), int(A.shape[1])) * torch.finfo(torch.float64).eps * scale


def _truncate(B: torch.Tensor, A: torch.Tensor, k: int) -> tuple[LoraFactor, SvdModuleReport]:
    """Best rank-k LoRA (scaling 1) of ΔW = B·A (B (d_out, R), A (R, d_in), float64), rounding-level
    singular values dropped; factors returned as float32."""
    qb, rb = torch.linalg.qr(B)  # (d_out, m), (m, R)
    qa, ra = torch.linalg.qr(A.T)  # (d_in, n), (n, R)
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    tol = rounding_tolerance(B, A)
    numerical = int((s > tol).sum())  # s is descending: the numerical rank of ΔW
    keep = min(k, numerical)
    energy_all = float((s[:numerical] ** 2).sum())  # rounding-level σ are not part of ΔW
    tail = float((s[keep:numerical] ** 2).sum())
    if keep:
        root = s[:keep].sqrt()
        B_k = (qb @ u[:, :keep]) * root
        A_k = root[:, None] * (vh[:keep] @ qa.T)
    else:  # ΔW is zero to rounding: one zero direction
        B_k, A_k = B.new_zeros((B.shape[0], 1)), A.new_zeros((1, A.shape[1]))
    report = SvdModuleReport(
        rank_in=int(B.shape[1]), rank=keep,
        rel_error=math.sqrt(tail / energy_all) if energy_all > 0 else 0.0,
        energy=(energy_all - tail) / energy_all if energy_all > 0 else 1.0,
        singular_values=tuple(float(x) for x in s), tolerance=tol)
    return LoraFactor(A=A_k.float().contiguous(), B=B_k.float().contiguous(), scaling=1.0), report


def svd_truncate(f: LoraFactor, k: int) -> tuple[LoraFactor, SvdModuleReport]:
    """Best rank-k LoRA (scaling 1) of ΔW = scaling·B·A, from QR of B and Aᵀ and an SVD of
    the small core (module docstring), in float64; the factors are returned as float32.
    Singular values at rounding level are dropped, so the rank may be below k.
    """
    return _truncate(f.scaling * f.B.double(), f.A.double(), k)


def _check_rank(rank: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"svd: rank must be a positive integer, got {rank!r}")
    return rank


def compose_svd_report(adapters: list[Adapter], rank: int,
                       weights: list[float] | None = None) -> tuple[Adapter, dict[str, SvdModuleReport]]:
    """Σᵢ wᵢ ΔWᵢ truncated to rank ``rank`` per module, and the per-module report.

    A module whose summed rank Σᵢ rᵢ is below ``rank`` keeps Σᵢ rᵢ (its exact sum, less rounding-level
    directions); one warning on the ``lorasum`` logger says so, with the largest such Σᵢ rᵢ.

    Returns:
        (adapter, module → :class:`SvdModuleReport`); the adapter is that of :func:`compose_svd`.

    Raises:
        ConfigError: rank is not a positive integer; bad weights (see :func:`compose_sum`).
        AdapterError: incompatible adapters (see :func:`lorasum.compose.check_compatible`).
    """
    k = _check_rank(rank)
    check_compatible(adapters)
    ws = _check_weights(weights, len(adapters))
    factors, reports = {}, {}
    for module in sorted({m for a in adapters for m in a.factors}):
        parts = [(w, a.factors[module]) for w, a in zip(ws, adapters) if module in a.factors]
        B = torch.cat([(w * f.scaling) * f.B.double() for w, f in parts], dim=1)
        A = torch.cat([f.A.double() for _, f in parts], dim=0)
        factors[module], reports[module] = _truncate(B, A, k)
    capped = [r.rank_in for r in reports.values() if r.rank_in < k]
    if capped:
        n = len(capped)
        whole = "every module" if n == len(reports) else f"{n} of {len(reports)} modules"
        log.warning("warning: svd: rank %d capped at the summed rank of the adapters (Σ rᵢ, at most %d per module) "
                    "in %s: no compression there, the exact sum is kept", k, max(capped), whole)
    bases = [a.base_model for a in adapters if a.base_model is not None]
    records = [a.base_record for a in adapters if a.base_record is not None]
    adapter = Adapter(factors=factors, base_model=bases[0] if bases else None,
                      fan_in_fan_out=adapters[0].fan_in_fan_out, config=dict(adapters[0].config), path=None,
                      base_record=records[0] if records else None)
    return adapter, reports


@compose_method(name="svd", exact=False, low_rank=True,
                reference="Eckart & Young 1936 (best rank-k approximation); PEFT combination_type='svd'")
def compose_svd(adapters: list[Adapter], rank: int, weights: list[float] | None = None) -> Adapter:
    """Σᵢ wᵢ ΔWᵢ re-compressed to rank ``rank`` per module by truncated SVD, without forming ΔW.

    Exact when ``rank`` ≥ Σᵢ rᵢ (capped there, with a warning). The per-module truncation report
    (:class:`SvdModuleReport`) comes from :func:`compose_svd_report`; it is not written into the
    adapter's config, because PEFT warns about unknown keys in adapter_config.json.

    Raises:
        ConfigError, AdapterError: as :func:`compose_svd_report`.
    """
    return compose_svd_report(adapters, rank, weights)[0]
