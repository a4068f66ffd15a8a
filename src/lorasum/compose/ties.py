"""TIES-Merging of LoRA adapters on their dense ΔW (Yadav et al. 2023, arXiv 2306.01708).

Per module, with task vectors τᵢ = wᵢ ΔWᵢ (a module absent from an adapter is τᵢ = 0):

1. trim: keep the top-``density`` fraction of each τᵢ's entries by magnitude, zero the rest;
2. elect: γ = sign(Σᵢ τ̂ᵢ) per entry (the sign with the larger total mass);
3. disjoint merge: mean of the τ̂ᵢ whose sign agrees with γ (zeros excluded).

The paper trims over the whole model's flattened task vector and scales the result by λ;
here trimming is per module (each module keeps the same fraction) and λ is folded into the
weights wᵢ. Entries whose trimmed values sum to exactly 0 merge to 0 (the paper's reference
code would give them the overall majority sign). The result is dense.
"""

from __future__ import annotations

import torch

from lorasum.adapters import Adapter
from lorasum.compose.dense import DenseDelta, dense_result, task_vectors, warn_trimmed_to_zero
from lorasum.compose.masks import check_fraction, disjoint_mean, elect_sign, top_magnitude_mask
from lorasum.compose.registry import compose_method
from lorasum.compose.sum import _check_weights, check_compatible

__all__ = ["compose_ties", "ties_merge"]


def ties_merge(stack, density: float):
    """TIES on one module: ``stack`` (N, d_out, d_in) of weighted task vectors → merged (d_out, d_in).

    Steps 1–3 of the module docstring, with :func:`~lorasum.compose.masks.top_magnitude_mask`
    applied to each τᵢ separately.
    """
    trimmed = stack.clone()
    for i in range(stack.shape[0]):
        trimmed[i] = torch.where(top_magnitude_mask(stack[i], density), stack[i], torch.zeros_like(stack[i]))
    return disjoint_mean(trimmed, elect_sign(trimmed))


@compose_method(name="ties", exact=False, low_rank=False,
                reference="Yadav et al. 2023, TIES-Merging, arXiv 2306.01708")
def compose_ties(adapters: list[Adapter], density: float = 0.2, weights: list[float] | None = None) -> DenseDelta:
    """TIES-Merging (trim to ``density``, elect sign, disjoint mean) of the weighted ΔWᵢ; dense result.

    Args:
        adapters: source adapters (same base model and module kinds).
        density: fraction of each task vector's entries kept per module, in (0, 1]
            (default 0.2, the paper's k = 20 %).
        weights: wᵢ applied to ΔWᵢ before trimming (default all 1).

    A module so small that ⌊density · n⌋ = 0 keeps no entry and merges to 0; that is logged as a
    warning (:func:`~lorasum.compose.dense.warn_trimmed_to_zero`), not refused.

    Raises:
        ConfigError: density outside (0, 1]; bad weights.
        AdapterError: incompatible adapters.
    """
    check_compatible(adapters)
    ws = _check_weights(weights, len(adapters))
    d = check_fraction("density", density)
    deltas = {m: ties_merge(stack, d) for m, stack in task_vectors(adapters, ws)}
    warn_trimmed_to_zero("ties", d, {m: x.numel() for m, x in deltas.items()})
    return dense_result(adapters, deltas, {"method": "ties", "density": d, "weights": ws})
