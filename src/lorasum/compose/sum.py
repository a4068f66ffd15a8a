"""Exact linear composition of LoRA adapters: ΔW = Σᵢ wᵢ ΔWᵢ as one LoRA.

For adapters i = 1..N with factors (Aᵢ, Bᵢ, sᵢ) on a module,

    Σᵢ wᵢ sᵢ Bᵢ Aᵢ = [w₁s₁B₁ | … | w_N s_N B_N] · [A₁; …; A_N]

(block matrix product), so the weighted sum is itself a LoRA of rank Σᵢ rᵢ with
scaling 1: no truncation, no cross terms. This is "naive LoRA summation"
(arXiv 2508.11985) and, with all wᵢ = λ, task arithmetic on LoRA task vectors
(Ilharco et al. 2023, arXiv 2212.04089, eq. 1). It equals PEFT's
``add_weighted_adapter(..., combination_type="cat")`` and PEFT's forward with all
source adapters active, but *not* ``combination_type="linear"``, which forms
(Σ √wᵢsᵢ Bᵢ)(Σ √wᵢ Aᵢ) and so adds the cross terms Bᵢ Aⱼ, i ≠ j.
"""

from __future__ import annotations

import math

import torch

from lorasum.adapters import Adapter, LoraFactor, check_same_base_model
from lorasum.compose.registry import compose_method
from lorasum.errors import AdapterError, ConfigError

__all__ = ["compose_sum", "compose_mean", "compose_task_arithmetic", "check_compatible"]


def _label(adapter: Adapter, i: int) -> str:
    return str(adapter.path) if adapter.path is not None else f"adapter #{i}"


def check_compatible(adapters: list[Adapter]) -> None:
    """Refuse to combine adapters that do not act on the same base weights.

    Base models are compared by :func:`lorasum.adapters.check_same_base_model`: the source and
    config hash recorded in ``lorasum.json`` where present (so ``./tinygpt2``, ``tinygpt2`` and
    the absolute path of the same folder agree, and two folders called ``tinygpt2`` do not),
    else ``base_model_name_or_path`` after path normalisation; an adapter naming no base model
    matches any. Sources that differ with the same config hash pass with a logged warning.

    Raises:
        AdapterError: the list is empty; fan_in_fan_out differs; the base models differ; a
            module's ΔW shape (d_out, d_in) differs between adapters.
    """
    if not adapters:
        raise AdapterError("no adapters to compose")
    first = adapters[0]
    check_same_base_model(adapters)
    shapes: dict[str, tuple[tuple[int, int], str]] = {}
    for i, a in enumerate(adapters):
        if a.fan_in_fan_out != first.fan_in_fan_out:
            raise AdapterError(f"{_label(a, i)}: fan_in_fan_out={a.fan_in_fan_out} but "
                               f"{_label(first, 0)} has {first.fan_in_fan_out}; module kinds differ")
        for module, f in a.factors.items():
            seen = shapes.setdefault(module, (f.shape, _label(a, i)))
            if seen[0] != f.shape:
                raise AdapterError(f"{_label(a, i)}: module {module} has ΔW shape {f.shape} but {seen[1]} "
                                   f"has {seen[0]}")


def _check_weights(weights: list[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ConfigError(f"got {len(weights)} weights for {n} adapters")
    if not all(math.isfinite(w) for w in weights):
        raise ConfigError(f"weights must be finite numbers, got {weights}")
    return weights


@compose_method(name="sum", reference="arXiv 2508.11985 (naive LoRA summation)")
def compose_sum(adapters: list[Adapter], weights: list[float] | None = None) -> Adapter:
    """Exact Σᵢ wᵢ ΔWᵢ written as one LoRA of rank Σᵢ rᵢ per module (scaling 1).

    Per module, B = [w₁s₁B₁ | w₂s₂B₂ | …] (d_out, Σrᵢ) and A = [A₁; A₂; …] (Σrᵢ, d_in),
    concatenated over the adapters that have the module; a module missing from an
    adapter is a zero ΔW there and contributes no rank.

    Args:
        adapters: the source adapters (same base model and module kinds).
        weights: wᵢ per adapter (default all 1).

    Returns:
        A new Adapter; ``config`` is a copy of the first adapter's, ``path`` is None,
        ``base_model`` and ``base_record`` are the first ones the sources have.

    Raises:
        AdapterError: see :func:`check_compatible`.
        ConfigError: the number of weights differs from the number of adapters, or a weight is not finite.
    """
    check_compatible(adapters)
    ws = _check_weights(weights, len(adapters))
    modules = sorted({m for a in adapters for m in a.factors})
    factors: dict[str, LoraFactor] = {}
    for module in modules:
        parts = [(w, a.factors[module]) for w, a in zip(ws, adapters) if module in a.factors]
        A = torch.cat([f.A.float() for _, f in parts], dim=0)
        B = torch.cat([(w * f.scaling * f.B.double()).float() for w, f in parts], dim=1)
        factors[module] = LoraFactor(A=A, B=B, scaling=1.0)
    bases = [a.base_model for a in adapters if a.base_model is not None]
    records = [a.base_record for a in adapters if a.base_record is not None]
    return Adapter(factors=factors, base_model=bases[0] if bases else None,
                   fan_in_fan_out=adapters[0].fan_in_fan_out, config=dict(adapters[0].config), path=None,
                   base_record=records[0] if records else None)


@compose_method(name="task_arithmetic", reference="Ilharco et al. 2023, arXiv 2212.04089, eq. 1")
def compose_task_arithmetic(adapters: list[Adapter], scale: float = 1.0) -> Adapter:
    """Task arithmetic: λ Σᵢ ΔWᵢ (all weights equal to ``scale`` = λ), exact.

    Raises:
        ConfigError: ``scale`` is not a finite number.
        AdapterError: as :func:`compose_sum`.
    """
    try:
        lam = float(scale)
    except (TypeError, ValueError):
        raise ConfigError(f"scale must be a number, got {scale!r}") from None
    if isinstance(scale, bool) or not math.isfinite(lam):
        raise ConfigError(f"scale must be a finite number, got {scale!r}")
    return compose_sum(adapters, weights=[lam] * len(adapters))


@compose_method(name="mean", reference="Ilharco et al. 2023, arXiv 2212.04089 (task arithmetic, λ = 1/N)")
def compose_mean(adapters: list[Adapter]) -> Adapter:
    """The mean (1/N) Σᵢ ΔWᵢ, i.e. task arithmetic with λ = 1/N, exact.

    Raises:
        AdapterError: as :func:`compose_sum` (including an empty list).
    """
    if not adapters:
        raise AdapterError("no adapters to compose")
    return compose_task_arithmetic(adapters, scale=1.0 / len(adapters))
