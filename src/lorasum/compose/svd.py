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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from lorasum.adapters import Adapter, LoraFactor
from lorasum.compose.registry import compose_method
from lorasum.compose.sum import compose_sum
from lorasum.errors import ConfigError

__all__ = ["SvdModuleReport", "svd_truncate", "compose_svd", "compose_svd_report"]


@dataclass(frozen=True)
class SvdModuleReport:
    """Truncation of one module.

    Attributes:
        rank_in: rank Σᵢ rᵢ of the exact sum's factors.
        rank: rank k of the result (min of the requested k and the number of singular values).
        rel_error: ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F = sqrt(Σ_{i>k} σᵢ² / Σ σᵢ²) (0 when ΔW = 0).
        energy: retained energy Σ_{i≤k} σᵢ² / Σ σᵢ² (1 when ΔW = 0).
        singular_values: all σᵢ of ΔW, descending.
    """

    rank_in: int
    rank: int
    rel_error: float
    energy: float
    singular_values: tuple[float, ...]

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self) | {"singular_values": list(self.singular_values)}


def svd_truncate(f: LoraFactor, k: int) -> tuple[LoraFactor, SvdModuleReport]:
    """Best rank-k LoRA (scaling 1) of ΔW = scaling·B·A, from QR of B and Aᵀ and an SVD of
    the small core (module docstring), in float64; the factors are returned as float32.
    """
    B = f.scaling * f.B.double()
    qb, rb = torch.linalg.qr(B)  # (d_out, m), (m, R)
    qa, ra = torch.linalg.qr(f.A.double().T)  # (d_in, n), (n, R)
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    keep = min(k, int(s.numel()))
    energy_all = float((s * s).sum())
    tail = float((s[keep:] * s[keep:]).sum())
    root = s[:keep].sqrt()
    B_k = (qb @ u[:, :keep]) * root
    A_k = root[:, None] * (vh[:keep] @ qa.T)
    report = SvdModuleReport(
        rank_in=f.rank, rank=keep,
        rel_error=math.sqrt(tail / energy_all) if energy_all > 0 else 0.0,
        energy=(energy_all - tail) / energy_all if energy_all > 0 else 1.0,
        singular_values=tuple(float(x) for x in s))
    return LoraFactor(A=A_k.float().contiguous(), B=B_k.float().contiguous(), scaling=1.0), report


def _check_rank(rank: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"svd: rank must be a positive integer, got {rank!r}")
    return rank


def compose_svd_report(adapters: list[Adapter], rank: int,
                       weights: list[float] | None = None) -> tuple[Adapter, dict[str, SvdModuleReport]]:
    """Σᵢ wᵢ ΔWᵢ truncated to rank ``rank`` per module, and the per-module report.

    Returns:
        (adapter, module → :class:`SvdModuleReport`); the adapter is that of :func:`compose_svd`.

    Raises:
        ConfigError: rank is not a positive integer; bad weights (see :func:`compose_sum`).
        AdapterError: incompatible adapters (see :func:`lorasum.compose.check_compatible`).
    """
    k = _check_rank(rank)
    total = compose_sum(adapters, weights=weights)
    factors, reports = {}, {}
    for module, f in total.factors.items():
        factors[module], reports[module] = svd_truncate(f, k)
    adapter = Adapter(factors=factors, base_model=total.base_model, fan_in_fan_out=total.fan_in_fan_out,
                      config=dict(total.config), path=None)
    return adapter, reports


@compose_method(name="svd", exact=False, low_rank=True,
                reference="Eckart & Young 1936 (best rank-k approximation); PEFT combination_type='svd'")
def compose_svd(adapters: list[Adapter], rank: int, weights: list[float] | None = None) -> Adapter:
    """Σᵢ wᵢ ΔWᵢ re-compressed to rank ``rank`` per module by truncated SVD, without forming ΔW.

    Exact when ``rank`` ≥ Σᵢ rᵢ. The per-module truncation report (:class:`SvdModuleReport`)
    comes from :func:`compose_svd_report`; it is not written into the adapter's config, because
    PEFT warns about unknown keys in adapter_config.json.

    Raises:
        ConfigError, AdapterError: as :func:`compose_svd_report`.
    """
    return compose_svd_report(adapters, rank, weights)[0]
